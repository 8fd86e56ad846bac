"""Text-encoder parts from a transformers T5EncoderModel (T5 v1.1: gated GELU, no biases, relative position bias owned
by block 0 and shared by all blocks). Source and calling convention as models/t5_script.cc:
  embed.forward(ids[B,T] i64) -> (hidden[B,T,D], position_bias[1,heads,T,T] f32)
  block.forward(hidden, position_bias) -> hidden
  head.forward(hidden) -> embeddings[B,T,D]   (final RMSNorm)
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ExportError
from .script import PartBuilder, Weights, config_value, float_literal

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


def _rms_source(eps: float) -> str:
    return f"""
def rms(self, x: Tensor, w: Tensor) -> Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + {float_literal(eps)})
    return y.to(w.dtype) * w
"""


def build_embed(s: T5Spec, b: PartBuilder) -> None:
    shared = "shared.weight" if b.w.has("shared.weight") else "encoder.embed_tokens.weight"
    b.take("shared_w", shared, (s.vocab_size, s.d_model))
    b.take("rel_bias_w", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           (s.buckets, s.num_heads))
    max_exact = s.buckets // 4
    log_ratio = float_literal(math.log(s.max_distance / max_exact))
    # Bidirectional relative-position buckets as transformers' T5 computes them (rel = key - query).
    b.define(f"""
def forward(self, ids: Tensor) -> Tuple[Tensor, Tensor]:
    h = torch.embedding(self.shared_w, ids)
    L = ids.size(1)
    pos = torch.arange(L, device=ids.device)
    rel = pos.unsqueeze(0) - pos.unsqueeze(1)
    n = {s.buckets} // 2
    max_exact = n // 2
    buckets = (rel > 0).long() * n
    a = rel.abs()
    large = torch.log(a.clamp(min=1).float() / max_exact) / {log_ratio} * (n - max_exact)
    large = (large.long() + max_exact).clamp(max=n - 1)
    buckets = buckets + torch.where(a < max_exact, a, large)
    bias = torch.embedding(self.rel_bias_w, buckets).permute(2, 0, 1).unsqueeze(0).float()
    return h, bias
""")


def build_block(s: T5Spec, i: int, b: PartBuilder) -> None:
    p = f"encoder.block.{i}.layer"
    b.norm("ln1", f"{p}.0.layer_norm", s.d_model, bias=False)
    for n in ("q", "k", "v"):
        b.linear(n, f"{p}.0.SelfAttention.{n}", s.d_model, s.inner, bias=False)
    b.linear("o", f"{p}.0.SelfAttention.o", s.inner, s.d_model, bias=False)
    b.norm("ln2", f"{p}.1.layer_norm", s.d_model, bias=False)
    b.linear("wi0", f"{p}.1.DenseReluDense.wi_0", s.d_model, s.d_ff, bias=False)
    b.linear("wi1", f"{p}.1.DenseReluDense.wi_1", s.d_model, s.d_ff, bias=False)
    b.linear("wo", f"{p}.1.DenseReluDense.wo", s.d_ff, s.d_model, bias=False)
    # No 1/sqrt(d) scaling in T5 attention; softmax in float32. Pads attend and are attended to, as CogVideoX calls
    # the encoder without an attention mask.
    b.define(_rms_source(s.eps) + f"""
def forward(self, x: Tensor, bias: Tensor) -> Tensor:
    B = x.size(0)
    L = x.size(1)
    h = self.rms(x, self.ln1_w)
    q = torch.linear(h, self.q_w).view(B, L, {s.num_heads}, {s.d_kv}).transpose(1, 2)
    k = torch.linear(h, self.k_w).view(B, L, {s.num_heads}, {s.d_kv}).transpose(1, 2)
    v = torch.linear(h, self.v_w).view(B, L, {s.num_heads}, {s.d_kv}).transpose(1, 2)
    s = torch.matmul(q, k.transpose(-1, -2)).float() + bias
    p = torch.softmax(s, -1).to(v.dtype)
    a = torch.matmul(p, v).transpose(1, 2).reshape(B, L, {s.inner})
    x = x + torch.linear(a, self.o_w)
    h = self.rms(x, self.ln2_w)
    g = torch.gelu(torch.linear(h, self.wi0_w), approximate='tanh') * torch.linear(h, self.wi1_w)
    return x + torch.linear(g, self.wo_w)
""")


def build_head(s: T5Spec, b: PartBuilder) -> None:
    b.norm("final", "encoder.final_layer_norm", s.d_model, bias=False)
    b.define(_rms_source(s.eps) + """
def forward(self, x: Tensor) -> Tensor:
    return self.rms(x, self.final_w)
""")


def write_parts(te: torch.nn.Module, s: T5Spec, dtype: torch.dtype, save: Callable[[str, str, PartBuilder], None]):
    """Builds each part and hands it to save(role, file, builder) as it is made, one at a time."""
    w = Weights(COMPONENT, te)
    b = PartBuilder(w, dtype)
    build_embed(s, b)
    save("embed", "text_encoder/embed.pt", b)
    for i in range(s.num_layers):
        b = PartBuilder(w, dtype)
        build_block(s, i, b)
        save("block", f"text_encoder/block_{i:03d}.pt", b)
    b = PartBuilder(w, dtype)
    build_head(s, b)
    save("head", "text_encoder/head.pt", b)


def stage_config(s: T5Spec) -> dict:
    return {"d_model": s.d_model, "num_heads": s.num_heads, "d_kv": s.d_kv, "d_ff": s.d_ff,
            "num_layers": s.num_layers, "vocab_size": s.vocab_size}
