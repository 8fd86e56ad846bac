"""Writes a whole stage package: every part, the tokenizer (tokenizer.py) and manifest.json exactly as Reel's loader
validates it (package/manifest.cc), laid out as models/synth.cc lays out the synthetic packages. The package is
written into OUT.tmp and renamed to OUT when complete, so it appears whole or not at all."""

import gc
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from . import t5, transformer, vae
from .tokenizer import TokenizerExport, read_tokenizer
from .errors import ExportError
from .scheduler import scheduler_settings
from .script import DTYPES, PartBuilder, class_name_for, count_weights

TOKENIZER_FILE = "tokenizer/spiece.model"


class LazyComponent:
    """A component known by its config before its weights are loaded: `config` is what read_spec reads, `load()`
    returns the nn.Module. Lets every configuration be checked before gigabytes of weights are read, and lets the
    export hold one component in memory at a time."""

    def __init__(self, config: Dict[str, Any], load: Callable[[], torch.nn.Module]):
        self.config = config
        self._load = load

    def load(self) -> torch.nn.Module:
        return self._load()


@dataclass
class ExportOptions:
    out: Path
    name: str
    dtype: str = "f32"
    # The contents of the checkpoint's scheduler/scheduler_config.json, or None for CogVideoX's own settings.
    scheduler_config: Optional[Dict[str, Any]] = None
    scheduler_source: str = "scheduler/scheduler_config.json"
    # Told each part as it is written: (file, params).
    on_part: Optional[Callable[[str, int], None]] = None


def _module(component) -> torch.nn.Module:
    return component.load() if isinstance(component, LazyComponent) else component


def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"--out {out}: already exists and is not an empty directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"--out {out}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--out {out}: parent directory {parent} is not writable")


def _check_together(te: t5.T5Spec, tr: transformer.TransformerSpec, vs: vae.VaeSpec) -> bool:
    """Cross-component checks and the ranges Reel's manifest accepts; returns whether the pipeline is image-to-video."""
    if not 260 <= te.vocab_size <= 1 << 22:
        raise ExportError(f"text_encoder: vocab_size {te.vocab_size}: accepted 260..{1 << 22}")
    if not (0 <= te.pad_id < te.vocab_size and 0 <= te.eos_id < te.vocab_size):
        raise ExportError(f"text_encoder: pad_token_id {te.pad_id} / eos_token_id {te.eos_id}: accepted ids below "
                          f"vocab_size {te.vocab_size}")
    if not 2 <= tr.max_text_seq_length <= 4096:
        raise ExportError(f"transformer: max_text_seq_length {tr.max_text_seq_length}: accepted 2..4096")
    if te.d_model != tr.text_embed_dim:
        raise ExportError(f"transformer: text_embed_dim {tr.text_embed_dim} does not match the text encoder's "
                          f"d_model {te.d_model}; accepted equal widths")
    lc = vs.latent_channels
    if tr.out_channels != lc:
        raise ExportError(f"transformer: out_channels {tr.out_channels} does not match vae latent_channels {lc}")
    if tr.in_channels not in (lc, 2 * lc):
        raise ExportError(f"transformer: in_channels {tr.in_channels}: accepted {lc} (text-to-video) or {2 * lc} "
                          f"(image-to-video) for vae latent_channels {lc}")
    if tr.temporal_compression != vs.temporal_compression:
        raise ExportError(f"transformer: temporal_compression_ratio {tr.temporal_compression} does not match the "
                          f"vae's {vs.temporal_compression}")
    return tr.in_channels == 2 * lc


def _tensor(name: str, dtype: str, shape) -> Dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def _limits_and_defaults(tr: transformer.TransformerSpec, vs: vae.VaeSpec):
    sc = vs.spatial_compression
    multiple = sc * tr.patch_size
    height, width = tr.sample_height * sc, tr.sample_width * sc
    frame_step = 2 * vs.temporal_compression  # latent frames decode as 1 + pairs
    if tr.learned_pos:
        # diffusers refuses other sizes for learned positions (5B-I2V): exactly the sample size.
        limits = {"min_height": height, "max_height": height, "min_width": width, "max_width": width}
    else:
        limits = {"min_height": multiple, "max_height": max(768, height), "min_width": multiple,
                  "max_width": max(1360, width)}
    limits.update({"size_multiple": multiple, "max_frames": tr.sample_frames, "frame_step": frame_step})
    defaults = {"frames": tr.sample_frames, "height": height, "width": width, "steps": 50, "guidance": 6.0, "fps": 8}
    if height % multiple or width % multiple or (tr.sample_frames - 1) % frame_step:
        raise ExportError(f"transformer: sample size {tr.sample_frames}x{height}x{width} (frames x height x width): "
                          f"accepted frames {frame_step}k+1 and sizes multiple of {multiple}")
    return limits, defaults


def _stage(dtype: str, parts, inputs, outputs, config) -> Dict[str, Any]:
    return {"dtype": dtype, "params": sum(p["params"] for p in parts), "bytes": sum(p["bytes"] for p in parts),
            "parts": parts, "inputs": inputs, "outputs": outputs,
            "config": {k: float(config[k]) for k in sorted(config)}}


def tokenizer_manifest(tokenizer: TokenizerExport, max_length: int, vocab_size: int) -> Dict[str, Any]:
    section = {"kind": "sentencepiece", "file": TOKENIZER_FILE, "max_length": max_length, "vocab_size": vocab_size,
               "pad_id": tokenizer.pad_id, "eos_id": tokenizer.eos_id}
    if tokenizer.added_tokens:
        section["added_tokens"] = [{"content": c, "id": i} for c, i in tokenizer.added_tokens]
    return section


def export_package(text_encoder, transformer_module, vae_module, tokenizer_file: Path,
                   options: ExportOptions) -> Dict[str, Any]:
    """Exports the three components (nn.Modules with diffusers' attribute names, or LazyComponents) and the
    tokenizer (tokenizer_file: the SentencePiece model in the checkpoint's tokenizer folder, which transformers
    loads) into options.out. Returns the manifest written."""
    if options.dtype not in DTYPES:
        raise ExportError(f"--dtype {options.dtype}: accepted f32, bf16, f16")
    if not options.name:
        raise ExportError("--name: must not be empty")
    tokenizer_file = Path(tokenizer_file)
    if not tokenizer_file.is_file() or tokenizer_file.stat().st_size == 0:
        raise ExportError(f"tokenizer {tokenizer_file}: missing or empty; accepted the T5 SentencePiece model "
                          "(tokenizer/spiece.model)")
    out = Path(options.out)
    _check_out(out)

    te_spec = t5.read_spec(text_encoder)
    tr_spec = transformer.read_spec(transformer_module)
    vae_spec = vae.read_spec(vae_module)
    i2v = _check_together(te_spec, tr_spec, vae_spec)
    tokenizer = read_tokenizer(tokenizer_file, te_spec.vocab_size)
    scheduler = scheduler_settings(options.scheduler_config, tr_spec.rotary, options.scheduler_source)
    limits, defaults = _limits_and_defaults(tr_spec, vae_spec)

    dtype = options.dtype
    torch_dtype = DTYPES[dtype]
    tmp = Path(str(out) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted export: it is ours
    tmp.mkdir()
    try:
        def writer(parts):
            def save(role: str, file: str, b: PartBuilder) -> None:
                module = b.finish(class_name_for(file))
                (tmp / file).parent.mkdir(parents=True, exist_ok=True)
                module.save(str(tmp / file))
                params, nbytes = count_weights(module)
                parts.append({"role": role, "file": file, "params": params, "bytes": nbytes})
                if options.on_part:
                    options.on_part(file, params)
            return save

        stages: Dict[str, Any] = {}
        T, lc = tr_spec.max_text_seq_length, vae_spec.latent_channels
        with torch.no_grad():
            parts: list = []
            module = _module(text_encoder)
            t5.write_parts(module, te_spec, torch_dtype, writer(parts))
            del module
            gc.collect()
            stages["text_encoder"] = _stage(dtype, parts, [_tensor("input_ids", "i64", ["B", "T"])],
                                            [_tensor("embeddings", dtype, ["B", "T", te_spec.d_model])],
                                            t5.stage_config(te_spec))

            vae_parts: Dict[str, list] = {"encoder": [], "decoder": []}
            module = _module(vae_module)
            if i2v:
                vae.write_encoder(module, vae_spec, torch_dtype, writer(vae_parts["encoder"]))
            vae.write_decoder(module, vae_spec, torch_dtype, writer(vae_parts["decoder"]))
            del module
            gc.collect()
            if i2v:
                stages["vae_encoder"] = _stage(dtype, vae_parts["encoder"],
                                               [_tensor("image", "f32", ["B", 3, 1, "H", "W"])],
                                               [_tensor("moments", "f32", ["B", 2 * lc, 1, "h", "w"])],
                                               vae.stage_config(vae_spec))

            parts = []
            module = _module(transformer_module)
            transformer.write_parts(module, tr_spec, torch_dtype, writer(parts))
            del module
            gc.collect()
            stages["denoiser"] = _stage(
                dtype, parts,
                [_tensor("latents", "f32", ["B", "f", tr_spec.in_channels, "h", "w"]),
                 _tensor("text", dtype, ["B", "T", tr_spec.text_embed_dim]), _tensor("timestep", "i64", ["B"])],
                [_tensor("velocity", "f32", ["B", "f", tr_spec.out_channels, "h", "w"])],
                transformer.stage_config(tr_spec))
            stages["vae_decoder"] = _stage(dtype, vae_parts["decoder"],
                                           [_tensor("latents", "f32", ["B", lc, "f", "h", "w"])],
                                           [_tensor("video", "f32", ["B", 3, "F", "H", "W"])],
                                           vae.stage_config(vae_spec))

        (tmp / TOKENIZER_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / TOKENIZER_FILE).write_bytes(tokenizer.model)
        manifest = {
            "format": "reel-stage-package",
            "format_version": 1,
            "name": options.name,
            "image_conditioned": i2v,
            "tokenizer": tokenizer_manifest(tokenizer, T, te_spec.vocab_size),
            "vae": {"spatial_compression": vae_spec.spatial_compression,
                    "temporal_compression": vae_spec.temporal_compression, "latent_channels": lc,
                    "scaling_factor": vae_spec.scaling_factor},
            "scheduler": scheduler,
            "limits": limits,
            "defaults": defaults,
            # In Reel's stage order: text_encoder, vae_encoder, denoiser, vae_decoder.
            "stages": {k: stages[k] for k in ("text_encoder", "vae_encoder", "denoiser", "vae_decoder") if k in stages},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # the empty directory _check_out accepted
        os.rename(tmp, out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
