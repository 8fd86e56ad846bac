"""VAE parts from a diffusers AutoencoderKLCogVideoX. Source from models/vae_script.cc (reel_model_source):
  vae_encoder module: forward(video[B,3,F,H,W]) -> moments[B,2·lc,f,h,w] f32 (mean ‖ log-variance clamped to
      [−30, 20]); encode_chunk(x, cache) encodes one chunk of frames and updates the causal-conv cache.
  vae_decoder module: forward(latents[B,lc,f,h,w]) -> video[B,3,F,H,W] f32; decode_chunk(z, cache) likewise.
forward batches frames as diffusers' _encode/_decode do (8 pixel frames per encoder chunk after the first 8+rem,
2 latent frames per decoder chunk after the first 2+rem) and threads one cache through the chunks.
"""

import math
import re
from dataclasses import dataclass
from typing import Callable, List

import torch

from .errors import ExportError
from .script import MODEL_SOURCE, PartBuilder, Weights, config_value

COMPONENT = "vae"
ENCODE_FRAME_BATCH = 8   # diffusers' num_sample_frames_batch_size
DECODE_LATENT_BATCH = 2  # num_latent_frames_batch_size; Reel's VAE slicing and tiling use the same


@dataclass
class VaeSpec:
    block_out_channels: List[int]
    layers_per_block: int
    latent_channels: int
    norm_groups: int
    eps: float
    temporal_compression: int
    scaling_factor: float
    in_channels: int = 3

    @property
    def temporal_levels(self) -> int:
        return int(round(math.log2(self.temporal_compression)))

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def read_spec(vae: torch.nn.Module) -> VaeSpec:
    def get(key, default):
        return config_value(vae, key, default, component=COMPONENT)

    def expect(key, value, ok, accepted):
        if not ok:
            raise ExportError(f"{COMPONENT}: config {key} {value!r} is not supported; accepted {accepted}")

    for key in ("down_block_types", "up_block_types"):
        types = list(get(key, []) or [])
        kind = "CogVideoXDownBlock3D" if key.startswith("down") else "CogVideoXUpBlock3D"
        expect(key, types, all(t == kind for t in types), f"only '{kind}'")
    for key in ("use_quant_conv", "use_post_quant_conv", "invert_scale_latents"):
        expect(key, get(key, False), not get(key, False), "false (CogVideoX 1.0)")
    expect("shift_factor", get("shift_factor", None), get("shift_factor", None) in (None, 0, 0.0), "null")
    expect("act_fn", get("act_fn", "silu"), get("act_fn", "silu") == "silu", "'silu'")
    for key in ("in_channels", "out_channels"):
        expect(key, get(key, 3), int(get(key, 3)) == 3, "3 (RGB)")
    eps = float(get("norm_eps", 1e-6))
    # diffusers hard-codes 1e-6 for the SpatialNorm and output GroupNorms; one value keeps all norms as there.
    expect("norm_eps", eps, abs(eps - 1e-6) < 1e-12, "1e-06")
    channels = [int(c) for c in get("block_out_channels", (128, 256, 256, 512))]
    groups = int(get("norm_num_groups", 32))
    expect("block_out_channels", channels, bool(channels) and all(c % groups == 0 for c in channels),
           f"a non-empty list of multiples of norm_num_groups ({groups})")
    tc = int(get("temporal_compression_ratio", 4))
    expect("temporal_compression_ratio", tc, tc >= 1 and (tc & (tc - 1)) == 0, "a power of two")
    return VaeSpec(block_out_channels=channels, layers_per_block=int(get("layers_per_block", 3)),
                   latent_channels=int(get("latent_channels", 16)), norm_groups=groups, eps=eps,
                   temporal_compression=tc, scaling_factor=float(get("scaling_factor", 1.15258426)))


def source_config(s: VaeSpec) -> dict:
    """The spec as models/presets.h's VaeConfig, for reel_model_source."""
    return {"in_channels": s.in_channels, "block_out_channels": s.block_out_channels,
            "layers_per_block": s.layers_per_block, "latent_channels": s.latent_channels, "norm_groups": s.norm_groups,
            "eps": s.eps, "temporal_levels": s.temporal_levels, "encode_frame_batch": ENCODE_FRAME_BATCH,
            "decode_latent_batch": DECODE_LATENT_BATCH}


# Reel's flat weight names → diffusers' module paths. A resnet's parts; a decoder norm is a SpatialNorm3D.
_RESNET = {"norm1": "norm1", "conv1": "conv1.conv", "norm2": "norm2", "conv2": "conv2.conv",
           "shortcut": "conv_shortcut"}
_SPATIAL = {"": ".norm_layer", "_convy": ".conv_y.conv", "_convb": ".conv_b.conv"}
_NAME = re.compile(r"(enc|dec)_(?:(down|up)(\d+)_(?:res(\d+)_(\w+?)|(downsample|upsample))|mid_res(\d+)_(\w+?)|"
                   r"(conv_in|conv_out|norm_out)(_convy|_convb)?)_([wb])$")


def weight_path(name: str) -> str:
    m = _NAME.match(name)
    if not m:
        raise ExportError(f"{COMPONENT}: weight '{name}' of Reel's source has no known place in the checkpoint")
    side, level_kind, level, res, res_part, sampler, mid_res, mid_part, top, top_norm, wb = m.groups()
    coder = "encoder" if side == "enc" else "decoder"
    suffix = ".weight" if wb == "w" else ".bias"
    if top:
        if top == "norm_out":
            return f"{coder}.norm_out" + (_SPATIAL[top_norm or ""] if side == "dec" else "") + suffix
        return f"{coder}.{top}.conv" + suffix
    if sampler:
        return f"{coder}.{level_kind}_blocks.{level}.{sampler}rs.0.conv" + suffix
    prefix = f"{coder}.{level_kind}_blocks.{level}.resnets.{res}" if res is not None else f"{coder}.mid_block.resnets.{mid_res}"
    part = res_part if res is not None else mid_part
    norm = re.fullmatch(r"(norm[12])(_convy|_convb)?", part)
    if norm and side == "dec":
        return f"{prefix}.{norm.group(1)}{_SPATIAL[norm.group(2) or '']}{suffix}"
    if part not in _RESNET:
        raise ExportError(f"{COMPONENT}: weight '{name}' of Reel's source has no known place in the checkpoint")
    return f"{prefix}.{_RESNET[part]}{suffix}"


def build_module(s: VaeSpec, component: str, b: PartBuilder) -> None:
    source, weights = MODEL_SOURCE.part(component, "module", source_config(s))
    b.define(source, weights, weight_path)


def write_encoder(vae: torch.nn.Module, s: VaeSpec, dtype: torch.dtype,
                  save: Callable[[str, str, PartBuilder], None]) -> None:
    b = PartBuilder(Weights(COMPONENT, vae), dtype)
    build_module(s, "vae_encoder", b)
    save("module", "vae_encoder/module.pt", b)


def write_decoder(vae: torch.nn.Module, s: VaeSpec, dtype: torch.dtype,
                  save: Callable[[str, str, PartBuilder], None]) -> None:
    b = PartBuilder(Weights(COMPONENT, vae), dtype)
    build_module(s, "vae_decoder", b)
    save("module", "vae_decoder/module.pt", b)


def stage_config(s: VaeSpec) -> dict:
    cfg = {"layers_per_block": s.layers_per_block, "norm_groups": s.norm_groups, "latent_channels": s.latent_channels}
    for i, c in enumerate(s.block_out_channels):
        cfg[f"block_out_channels_{i}"] = c
    return cfg
