"""Denoiser parts from a diffusers CogVideoXTransformer3DModel (CogVideoX 1.0: 2B with 3D sin-cos positions, 5B with
3D RoPE, 5B-I2V with RoPE plus learned positions). Source from models/transformer_script.cc (reel_model_source):
  embed.forward(latents[B,f,C,h,w], text[B,T,Dt], timestep[B] i64)
      -> (video[B,N,D], text[B,T,D], emb[B,E], rope_cos[N,hd], rope_sin[N,hd])   (rope_* empty without RoPE)
  block.forward(video, text, emb, rope_cos, rope_sin) -> (video, text)
  head.forward(video, emb, f: int, h: int, w: int) -> velocity[B,f,C_out,h,w] f32
The RoPE tables diffusers' pipeline builds (_prepare_rotary_positional_embeddings) are built by the embed part.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ExportError
from .script import MODEL_SOURCE, PartBuilder, Weights, config_value, diffusers_path

COMPONENT = "transformer"


@dataclass
class TransformerSpec:
    num_heads: int
    head_dim: int
    num_layers: int
    in_channels: int
    out_channels: int
    time_embed_dim: int
    text_embed_dim: int
    patch_size: int
    max_text_seq_length: int
    temporal_compression: int
    sample_frames: int  # pixel frames, as diffusers' config counts them
    sample_height: int  # latent units
    sample_width: int
    rotary: bool
    learned_pos: bool
    patch_bias: bool
    flip_sin_to_cos: bool
    freq_shift: float
    eps: float
    spatial_interpolation: float
    temporal_interpolation: float
    ff_mult: int = 4
    fused_attention: bool = True  # scaled_dot_product_attention; False: the chunked float32 math of older packages

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def sample_latent_frames(self) -> int:
        return (self.sample_frames - 1) // self.temporal_compression + 1


def _expect(key, value, accepted, what):
    if value not in accepted:
        raise ExportError(f"{COMPONENT}: config {key} {value!r} is not supported; accepted {what}")


def read_spec(tr: torch.nn.Module) -> TransformerSpec:
    def get(key, default=None):
        return config_value(tr, key, default, required=default is None, component=COMPONENT)

    _expect("patch_size_t", get("patch_size_t", "absent"), (None, "absent"),
            "null (CogVideoX 1.0: 2B, 5B, 5B-I2V; CogVideoX 1.5 is not supported)")
    _expect("ofs_embed_dim", get("ofs_embed_dim", "absent"), (None, 0, "absent"), "null (CogVideoX 1.0)")
    _expect("activation_fn", get("activation_fn", "gelu-approximate"), ("gelu-approximate",), "'gelu-approximate'")
    _expect("timestep_activation_fn", get("timestep_activation_fn", "silu"), ("silu",), "'silu'")
    _expect("attention_bias", get("attention_bias", True), (True,), "true")
    _expect("norm_elementwise_affine", get("norm_elementwise_affine", True), (True,), "true")
    rotary = bool(get("use_rotary_positional_embeddings", False))
    learned = bool(get("use_learned_positional_embeddings", False))
    if learned and not rotary:
        raise ExportError(f"{COMPONENT}: config use_learned_positional_embeddings without "
                          "use_rotary_positional_embeddings is not a CogVideoX model; accepted learned positions "
                          "only together with RoPE (5B-I2V)")
    in_channels = int(get("in_channels", 16))
    spec = TransformerSpec(
        num_heads=int(get("num_attention_heads", 30)), head_dim=int(get("attention_head_dim", 64)),
        num_layers=int(get("num_layers", 30)), in_channels=in_channels,
        out_channels=int(get("out_channels", in_channels) or in_channels),
        time_embed_dim=int(get("time_embed_dim", 512)), text_embed_dim=int(get("text_embed_dim", 4096)),
        patch_size=int(get("patch_size", 2)), max_text_seq_length=int(get("max_text_seq_length", 226)),
        temporal_compression=int(get("temporal_compression_ratio", 4)), sample_frames=int(get("sample_frames", 49)),
        sample_height=int(get("sample_height", 60)), sample_width=int(get("sample_width", 90)), rotary=rotary,
        learned_pos=learned, patch_bias=bool(get("patch_bias", True)),
        flip_sin_to_cos=bool(get("flip_sin_to_cos", True)), freq_shift=float(get("freq_shift", 0)),
        eps=float(get("norm_eps", 1e-5)), spatial_interpolation=float(get("spatial_interpolation_scale", 1.875)),
        temporal_interpolation=float(get("temporal_interpolation_scale", 1.0)))
    if spec.rotary and spec.head_dim % 8 != 0:
        raise ExportError(f"{COMPONENT}: attention_head_dim {spec.head_dim} with RoPE: accepted a multiple of 8")
    if spec.inner_dim % 4 != 0 or spec.num_layers < 1:
        raise ExportError(f"{COMPONENT}: inner dim {spec.inner_dim} / num_layers {spec.num_layers}: accepted a "
                          "multiple of 4 / at least 1")
    return spec


def source_config(c: TransformerSpec) -> dict:
    """The spec as models/presets.h's TransformerConfig, for reel_model_source."""
    return {"num_heads": c.num_heads, "head_dim": c.head_dim, "num_layers": c.num_layers,
            "in_channels": c.in_channels, "out_channels": c.out_channels, "time_embed_dim": c.time_embed_dim,
            "text_embed_dim": c.text_embed_dim, "patch_size": c.patch_size, "ff_mult": c.ff_mult,
            "rotary": c.rotary, "learned_pos": c.learned_pos, "sample_latent_frames": c.sample_latent_frames,
            "sample_latent_height": c.sample_height, "sample_latent_width": c.sample_width,
            "spatial_interpolation": c.spatial_interpolation, "temporal_interpolation": c.temporal_interpolation,
            "eps": c.eps, "patch_bias": c.patch_bias, "flip_sin_to_cos": c.flip_sin_to_cos,
            "freq_shift": c.freq_shift, "fused_attention": c.fused_attention}


# Reel's weight stems → diffusers' module paths, per part.
_EMBED = {"patch": "patch_embed.proj", "text_proj": "patch_embed.text_proj", "time1": "time_embedding.linear_1",
          "time2": "time_embedding.linear_2"}
_BLOCK = {"norm1_lin": "norm1.linear", "norm1": "norm1.norm", "q": "attn1.to_q", "k": "attn1.to_k",
          "v": "attn1.to_v", "norm_q": "attn1.norm_q", "norm_k": "attn1.norm_k", "out": "attn1.to_out.0",
          "norm2_lin": "norm2.linear", "norm2": "norm2.norm", "ff1": "ff.net.0.proj", "ff2": "ff.net.2"}
_HEAD = {"norm_final": "norm_final", "norm_out_lin": "norm_out.linear", "norm_out": "norm_out.norm",
         "proj": "proj_out"}


def _embed_path(name: str) -> str:
    # A persistent buffer in diffusers; a parameter here, so that the runtime places it with the other weights.
    return "patch_embed.pos_embedding" if name == "pos_embedding" else diffusers_path(_EMBED, name)


def build_part(c: TransformerSpec, part: str, b: PartBuilder, block: int = 0) -> None:
    source, weights = MODEL_SOURCE.part("denoiser", part, source_config(c), c.max_text_seq_length)
    if part == "embed":
        b.define(source, weights, _embed_path)
    elif part == "block":
        b.define(source, weights, lambda n: f"transformer_blocks.{block}." + diffusers_path(_BLOCK, n))
    else:
        b.define(source, weights, lambda n: diffusers_path(_HEAD, n))


def write_parts(tr: torch.nn.Module, c: TransformerSpec, dtype: torch.dtype,
                save: Callable[[str, str, PartBuilder], None]) -> None:
    w = Weights(COMPONENT, tr)
    b = PartBuilder(w, dtype)
    build_part(c, "embed", b)
    save("embed", "denoiser/embed.pt", b)
    for i in range(c.num_layers):
        b = PartBuilder(w, dtype)
        build_part(c, "block", b, i)
        save("block", f"denoiser/block_{i:03d}.pt", b)
    b = PartBuilder(w, dtype)
    build_part(c, "head", b)
    save("head", "denoiser/head.pt", b)


def stage_config(c: TransformerSpec) -> dict:
    return {"num_heads": c.num_heads, "head_dim": c.head_dim, "inner_dim": c.inner_dim, "num_layers": c.num_layers,
            "in_channels": c.in_channels, "out_channels": c.out_channels, "time_embed_dim": c.time_embed_dim,
            "text_embed_dim": c.text_embed_dim, "patch_size": c.patch_size, "ff_mult": c.ff_mult,
            "rotary": 1 if c.rotary else 0, "learned_positions": 1 if c.learned_pos else 0,
            "fused_attention": 1 if c.fused_attention else 0}
