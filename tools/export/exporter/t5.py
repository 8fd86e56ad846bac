"""Text-encoder parts from a transformers T5EncoderModel (T5 v1.1: gated GELU, no biases, relative position bias owned
by block 0 and shared by all blocks). Source from models/t5_script.cc (reel_model_source):
  embed.forward(ids[B,T] i64) -> (hidden[B,T,D], position_bias[1,heads,T,T] f32)
  block.forward(hidden, position_bias) -> hidden
  head.forward(hidden) -> embeddings[B,T,D]   (final RMSNorm)
"""

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ExportError
from .script import MODEL_SOURCE, PartBuilder, Weights, config_value, diffusers_path

COMPONENT = "text_encoder"


@dataclass
class T5Spec:
    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    vocab_size: int
    buckets: int
    max_distance: int
    eps: float
    pad_id: int
    eos_id: int

    @property
    def inner(self) -> int:
        return self.num_heads * self.d_kv


def read_spec(te: torch.nn.Module) -> T5Spec:
    def get(key, default=None):
        return config_value(te, key, default, required=default is None, component=COMPONENT)

    ffp = get("feed_forward_proj", "relu")
    if ffp != "gated-gelu":
        raise ExportError(f"{COMPONENT}: feed_forward_proj '{ffp}' is not supported; accepted 'gated-gelu' "
                          "(T5 v1.1, CogVideoX's text encoder)")
    spec = T5Spec(d_model=int(get("d_model")), d_kv=int(get("d_kv")), num_heads=int(get("num_heads")),
                  d_ff=int(get("d_ff")), num_layers=int(get("num_layers")), vocab_size=int(get("vocab_size")),
                  buckets=int(get("relative_attention_num_buckets", 32)),
                  max_distance=int(get("relative_attention_max_distance", 128)),
                  eps=float(get("layer_norm_epsilon", 1e-6)), pad_id=int(get("pad_token_id", 0)),
                  eos_id=int(get("eos_token_id", 1)))
    if spec.num_layers < 1 or spec.buckets < 4:
        raise ExportError(f"{COMPONENT}: num_layers {spec.num_layers} / relative_attention_num_buckets "
                          f"{spec.buckets}: accepted at least 1 / 4")
    return spec


def source_config(s: T5Spec) -> dict:
    """The spec as models/presets.h's T5Config, for reel_model_source."""
    return {"vocab_size": s.vocab_size, "d_model": s.d_model, "d_kv": s.d_kv, "num_heads": s.num_heads,
            "d_ff": s.d_ff, "num_layers": s.num_layers, "relative_buckets": s.buckets,
            "relative_max_distance": s.max_distance, "eps": s.eps}


_BLOCK = {"ln1": "layer.0.layer_norm", "q": "layer.0.SelfAttention.q", "k": "layer.0.SelfAttention.k",
          "v": "layer.0.SelfAttention.v", "o": "layer.0.SelfAttention.o", "ln2": "layer.1.layer_norm",
          "wi0": "layer.1.DenseReluDense.wi_0", "wi1": "layer.1.DenseReluDense.wi_1", "wo": "layer.1.DenseReluDense.wo"}


def build_part(s: T5Spec, part: str, b: PartBuilder, block: int = 0) -> None:
    source, weights = MODEL_SOURCE.part("text_encoder", part, source_config(s))
    if part == "embed":
        shared = "shared" if b.w.has("shared.weight") else "encoder.embed_tokens"
        # The relative position bias is owned by block 0 and shared by all blocks.
        table = {"shared": shared, "rel_bias": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"}
        b.define(source, weights, lambda n: diffusers_path(table, n))
    elif part == "block":
        b.define(source, weights, lambda n: f"encoder.block.{block}." + diffusers_path(_BLOCK, n))
    else:
        b.define(source, weights, lambda n: diffusers_path({"final": "encoder.final_layer_norm"}, n))


def write_parts(te: torch.nn.Module, s: T5Spec, dtype: torch.dtype, save: Callable[[str, str, PartBuilder], None]):
    """Builds each part and hands it to save(role, file, builder) as it is made, one at a time."""
    w = Weights(COMPONENT, te)
    b = PartBuilder(w, dtype)
    build_part(s, "embed", b)
    save("embed", "text_encoder/embed.pt", b)
    for i in range(s.num_layers):
        b = PartBuilder(w, dtype)
        build_part(s, "block", b, i)
        save("block", f"text_encoder/block_{i:03d}.pt", b)
    b = PartBuilder(w, dtype)
    build_part(s, "head", b)
    save("head", "text_encoder/head.pt", b)


def stage_config(s: T5Spec) -> dict:
    return {"d_model": s.d_model, "num_heads": s.num_heads, "d_kv": s.d_kv, "d_ff": s.d_ff,
            "num_layers": s.num_layers, "vocab_size": s.vocab_size}
