"""A diffusers CogVideoX checkpoint directory: its layout and configs are checked before any weights are read, and
its components are loaded with diffusers / transformers one at a time, when the export needs them."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import ExportError
from .package import LazyComponent

LAYOUT = ("text_encoder/config.json, transformer/config.json, vae/config.json and tokenizer/spiece.model "
          "(optionally scheduler/scheduler_config.json)")

TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
VAE_CLASS = "AutoencoderKLCogVideoX"


@dataclass
class Checkpoint:
    root: Path
    text_encoder: Dict[str, Any]
    transformer: Dict[str, Any]
    vae: Dict[str, Any]
    scheduler: Optional[Dict[str, Any]]
    tokenizer_file: Path


def _read_json(root: Path, rel: str) -> Dict[str, Any]:
    path = root / rel
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"--checkpoint {root}: cannot read {rel} ({e.strerror or e}); accepted a diffusers "
                          f"CogVideoX checkpoint with {LAYOUT}") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"--checkpoint {root}: {rel} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ExportError(f"--checkpoint {root}: {rel} must hold a JSON object")
    return data


def open_checkpoint(path: Path) -> Checkpoint:
    root = Path(path)
    if not root.is_dir():
        raise ExportError(f"--checkpoint {root}: not a directory; accepted a diffusers CogVideoX checkpoint "
                          f"directory with {LAYOUT}")
    for sub in ("text_encoder", "transformer", "vae", "tokenizer"):
        if not (root / sub).is_dir():
            raise ExportError(f"--checkpoint {root}: no {sub}/ subfolder; accepted a diffusers CogVideoX checkpoint "
                              f"directory with {LAYOUT}")
    tokenizer = root / "tokenizer" / "spiece.model"
    if not tokenizer.is_file():
        raise ExportError(f"--checkpoint {root}: tokenizer/spiece.model is missing; accepted the T5 SentencePiece "
                          "tokenizer (tokenizer.json alone is not enough)")

    tr = _read_json(root, "transformer/config.json")
    if tr.get("_class_name", TRANSFORMER_CLASS) != TRANSFORMER_CLASS:
        raise ExportError(f"--checkpoint {root}: transformer/config.json _class_name '{tr['_class_name']}' is not "
                          f"supported; accepted {TRANSFORMER_CLASS} (CogVideoX 1.0)")
    vae = _read_json(root, "vae/config.json")
    if vae.get("_class_name", VAE_CLASS) != VAE_CLASS:
        raise ExportError(f"--checkpoint {root}: vae/config.json _class_name '{vae['_class_name']}' is not "
                          f"supported; accepted {VAE_CLASS}")
    te = _read_json(root, "text_encoder/config.json")
    archs = te.get("architectures") or []
    if te.get("model_type") != "t5" or (archs and not any(a.startswith("T5") for a in archs)):
        raise ExportError(f"--checkpoint {root}: text_encoder/config.json describes model_type "
                          f"'{te.get('model_type')}' {archs}; accepted a T5 encoder (model_type 't5', T5EncoderModel)")
    scheduler = None
    if (root / "scheduler" / "scheduler_config.json").is_file():
        scheduler = _read_json(root, "scheduler/scheduler_config.json")
    return Checkpoint(root, te, tr, vae, scheduler, tokenizer)


def _import_loader(kind: str):
    try:
        if kind == "text_encoder":
            from transformers import T5EncoderModel as cls
        elif kind == "transformer":
            from diffusers import CogVideoXTransformer3DModel as cls
        else:
            from diffusers import AutoencoderKLCogVideoX as cls
    except ImportError as e:
        raise ExportError(f"loading the checkpoint needs the Python packages diffusers and transformers ({e}); "
                          "install them where this runs (pip install diffusers transformers)") from None
    return cls


def diffusers_components(ckpt: Checkpoint, torch_dtype):
    """(text_encoder, transformer, vae) as LazyComponents that load with from_pretrained in `torch_dtype`. diffusers
    and transformers are imported on the first load, after every configuration has been checked."""

    def loader(sub):
        def load():
            cls = _import_loader(sub)
            try:
                module = cls.from_pretrained(str(ckpt.root / sub), torch_dtype=torch_dtype)
            except Exception as e:  # the library's own error: name the folder, keep its first line
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ExportError(f"--checkpoint {ckpt.root}: loading {sub}/ with {cls.__name__} failed: "
                                  f"{first}") from None
            return module.eval()
        return load

    return (LazyComponent(ckpt.text_encoder, loader("text_encoder")),
            LazyComponent(ckpt.transformer, loader("transformer")),
            LazyComponent(ckpt.vae, loader("vae")))
