#include "models/t5_script.h"

#include <cmath>

#include <fmt/format.h>

namespace reel {

void BuildT5Embed(const T5Config& c, ScriptBuilder& b) {
  b.Normal("shared_w", {c.vocab_size, c.d_model}, 1.0);
  b.Normal("rel_bias_w", {c.relative_buckets, c.num_heads}, 1.0);
  // Bidirectional relative-position buckets as transformers' T5 computes them; shared by all blocks.
  b.Define(fmt::format(R"(
def forward(self, ids: Tensor) -> Tuple[Tensor, Tensor]:
    h = torch.embedding(self.shared_w, ids)
    L = ids.size(1)
    pos = torch.arange(L, device=ids.device)
    rel = pos.unsqueeze(0) - pos.unsqueeze(1)
    n = {buckets} // 2
    max_exact = n // 2
    buckets = (rel > 0).long() * n
    a = rel.abs()
    large = torch.log(a.clamp(min=1).float() / max_exact) / {log_ratio} * (n - max_exact)
    large = (large.long() + max_exact).clamp(max=n - 1)
    buckets = buckets + torch.where(a < max_exact, a, large)
    bias = torch.embedding(self.rel_bias_w, buckets).permute(2, 0, 1).unsqueeze(0).float()
    return h, bias
)",
                       fmt::arg("buckets", c.relative_buckets),
                       fmt::arg("log_ratio", std::log(static_cast<double>(c.relative_max_distance) / (c.relative_buckets / 4)))));
}

namespace {
std::string RmsNormSource(double eps) {
  return fmt::format(R"(
def rms(self, x: Tensor, w: Tensor) -> Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + {eps})
    return y.to(w.dtype) * w
)",
                     fmt::arg("eps", fmt::format("{:e}", eps)));
}

// The gated GELU's activation as transformers computes it: "gated-gelu" is its `gelu_new`
// (activations.NewGELUActivation), the tanh formula written out in Python and run op by op in the activations' dtype,
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). ATen's fused gelu(approximate='tanh') rounds once where this rounds after
// every op: in bf16 that put each block up to 1 ulp from transformers', the embeddings ~1e-2 from them, and a guided
// tiny 5B bf16 video at 32 dB from diffusers' frames instead of 58.6 dB (docs/STAGE_PACKAGE.md, Parity). The same ops
// on the same operands give transformers' bits. Products with a constant stay out of place: TorchScript calls `t.mul_(c)` as aten::mul_.Scalar,
// which rounds c to bf16 first where Python's `c * t` multiplies by c in float32. The rest is in place (commuted, which
// IEEE addition and multiplication allow bit for bit), so the block holds no more activations than its wi1 product.
std::string GeluNewSource() {
  return fmt::format(R"(
def gelu_new(self, x: Tensor) -> Tensor:
    y = torch.pow(x, 3.0) * 0.044715
    y.add_(x)
    y = y * {sqrt_2_over_pi}
    y.tanh_().add_(1.0)
    return y.mul_(x * 0.5)
)",
                     fmt::arg("sqrt_2_over_pi", fmt::format("{:.17g}", std::sqrt(2.0 / M_PI))));
}
}  // namespace

void BuildT5Block(const T5Config& c, ScriptBuilder& b) {
  const int inner = c.num_heads * c.d_kv;
  b.Norm("ln1", c.d_model, false);
  for (const char* n : {"q", "k", "v"}) b.Linear(n, c.d_model, inner, false);
  b.Linear("o", inner, c.d_model, false);
  b.Norm("ln2", c.d_model, false);
  b.Linear("wi0", c.d_model, c.d_ff, false);
  b.Linear("wi1", c.d_model, c.d_ff, false);
  // float16 as transformers runs T5 (modeling_t5.py): `wo` is one of its `_keep_in_fp32_modules`, so the gated
  // activations are cast to float32 for it and the residual stream is float32 from the first feed-forward on (type
  // promotion); while the stream is float16, each block clamps it below the float16 maximum after attention and
  // after the feed-forward (by 1000 more where it holds an inf). bfloat16 and float32 run unchanged.
  b.KeepInF32({"wo_w"});
  b.Linear("wo", c.d_ff, c.d_model, false);
  // T5 attention has no 1/sqrt(d) scaling (scale 1) and adds the relative position bias to the scores: the fused
  // kernel takes the bias as an additive mask in the activations' dtype, and computes its softmax in float32.
  b.Define(RmsNormSource(c.eps) + GeluNewSource() + R"(
def clamp_f16(self, x: Tensor) -> Tensor:
    if x.dtype != 5:  # float16 (ScalarType Half; C++ define resolves no torch.float16)
        return x
    big = torch.where(torch.isinf(x).any(), torch.tensor(64504.0, device=x.device), torch.tensor(65504.0, device=x.device))
    return torch.clamp(x, -big, big)
)" + fmt::format(R"(
def forward(self, x: Tensor, bias: Tensor) -> Tensor:
    B = x.size(0)
    L = x.size(1)
    h = self.rms(x, self.ln1_w)
    q = torch.linear(h, self.q_w).view(B, L, {heads}, {dkv}).transpose(1, 2)
    k = torch.linear(h, self.k_w).view(B, L, {heads}, {dkv}).transpose(1, 2)
    v = torch.linear(h, self.v_w).view(B, L, {heads}, {dkv}).transpose(1, 2)
    a = torch.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
    a = a.transpose(1, 2).reshape(B, L, {inner})
    x = self.clamp_f16(x + torch.linear(a, self.o_w))
    h = self.rms(x, self.ln2_w)
    g = self.gelu_new(torch.linear(h, self.wi0_w)) * torch.linear(h, self.wi1_w)
    return self.clamp_f16(x + torch.linear(g.to(self.wo_w.dtype), self.wo_w))
)",
                                              fmt::arg("heads", c.num_heads), fmt::arg("dkv", c.d_kv),
                                              fmt::arg("inner", inner)));
}

void BuildT5Head(const T5Config& c, ScriptBuilder& b) {
  b.Norm("final", c.d_model, false);
  b.Define(RmsNormSource(c.eps) + R"(
def forward(self, x: Tensor) -> Tensor:
    return self.rms(x, self.final_w)
)");
}

}  // namespace reel
