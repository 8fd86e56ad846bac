// Fused attention (scaled_dot_product_attention, the default in every denoiser and text-encoder package) against the
// chunked float32 math that packages used before LibTorch 2, on denoiser blocks of CogVideoX-2B and -5B width, in
// float32 and bfloat16, and the T5 block's fused attention with its position bias against the same math written out.
// Also: a guided batch of two gives the same bits as each element alone (guidance split across two workers).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include <torch/torch.h>

#include "models/presets.h"
#include "models/script_builder.h"
#include "models/t5_script.h"
#include "models/transformer_script.h"

namespace reel {
namespace {

struct Width {
  const char* name;
  int heads;
  bool rotary;
};
// CogVideoX-2B: 30 heads of 64, sin-cos positions; 5B: 48 heads of 64 with 3D RoPE (../shared/COGVIDEOX.md).
const Width k2B{"2B", 30, false};
const Width k5B{"5B", 48, true};

TransformerConfig BlockConfig(const Width& w, bool fused) {
  TransformerConfig c;
  c.num_heads = w.heads;
  c.head_dim = 64;
  c.rotary = w.rotary;
  c.fused_attention = fused;
  return c;
}

// One block with the same seeded weights whichever attention it uses (the source does not change the weights).
torch::jit::Module Block(const Width& w, bool fused, torch::Dtype dtype) {
  ScriptBuilder b("Block", 11, dtype);
  BuildTransformerBlock(BlockConfig(w, fused), b);
  return b.Finish();
}

double MaxAbs(const torch::Tensor& a) { return a.to(torch::kFloat64).abs().max().item<double>(); }
double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) { return MaxAbs(a.to(torch::kFloat64) - b.to(torch::kFloat64)); }

struct BlockRun {
  torch::Tensor video, text;
};

BlockRun RunBlock(torch::jit::Module& m, const std::vector<torch::Tensor>& in, torch::Dtype dtype) {
  std::vector<torch::jit::IValue> args;
  for (size_t i = 0; i < in.size(); ++i) args.emplace_back(i < 3 ? in[i].to(dtype) : in[i]);
  auto out = m.forward(args).toTuple();
  return {out->elements()[0].toTensor(), out->elements()[1].toTensor()};
}

// Block inputs: 2 (guided batch) × (16 text + 240 video tokens), a timestep embedding and RoPE tables.
std::vector<torch::Tensor> BlockInputs(const Width& w) {
  torch::manual_seed(3);
  const int64_t D = w.heads * 64, T = 16, N = 240;
  const torch::Tensor angles = torch::rand({N, 64}) * 6.28;
  return {torch::randn({2, N, D}), torch::randn({2, T, D}), torch::randn({2, 512}),
          w.rotary ? torch::cos(angles) : torch::zeros({0}), w.rotary ? torch::sin(angles) : torch::zeros({0})};
}

// Float32: the two formulations agree to float32 rounding (tolerance 1e-5 of the output's scale).
TEST(Attention, FusedBlockEqualsChunkedMathInFloat32) {
  torch::NoGradGuard no_grad;
  for (const Width& w : {k2B, k5B}) {
    SCOPED_TRACE(w.name);
    torch::jit::Module fused = Block(w, true, torch::kFloat32), chunked = Block(w, false, torch::kFloat32);
    const auto in = BlockInputs(w);
    const BlockRun a = RunBlock(fused, in, torch::kFloat32), b = RunBlock(chunked, in, torch::kFloat32);
    EXPECT_LE(MaxDiff(a.video, b.video), 1e-5 * MaxAbs(b.video));
    EXPECT_LE(MaxDiff(a.text, b.text), 1e-5 * MaxAbs(b.text));
  }
}

// Relative L2 error of a against the reference r.
double RelL2(const torch::Tensor& a, const torch::Tensor& r) {
  const torch::Tensor d = a.to(torch::kFloat64) - r.to(torch::kFloat64);
  return d.norm().item<double>() / r.to(torch::kFloat64).norm().item<double>();
}

// Bfloat16: both are measured against the float32 result of the same weights (relative L2 error: a max over
// elements is one element's bf16 rounding and swings run to run). The fused kernel keeps its scores in float32 where
// the chunked math rounds q·kᵀ to bfloat16 first, so it must be at least as close (within 10%), and both within 2%.
TEST(Attention, FusedBlockInBfloat16IsAsCloseToFloat32AsChunkedMath) {
  torch::NoGradGuard no_grad;
  for (const Width& w : {k2B, k5B}) {
    SCOPED_TRACE(w.name);
    torch::jit::Module ref = Block(w, true, torch::kFloat32);
    torch::jit::Module fused = Block(w, true, torch::kBFloat16), chunked = Block(w, false, torch::kBFloat16);
    const auto in = BlockInputs(w);
    const BlockRun r = RunBlock(ref, in, torch::kFloat32);
    const BlockRun a = RunBlock(fused, in, torch::kBFloat16), b = RunBlock(chunked, in, torch::kBFloat16);
    const double fused_err = RelL2(a.video, r.video), chunked_err = RelL2(b.video, r.video);
    std::printf("%s bf16 relative L2 error against f32: fused %.3e, chunked %.3e; text %.3e\n", w.name, fused_err,
                chunked_err, RelL2(a.text, r.text));
    EXPECT_LE(fused_err, 1.1 * chunked_err) << "fused " << fused_err << ", chunked " << chunked_err;
    EXPECT_LE(fused_err, 0.02);
    EXPECT_LE(RelL2(a.text, r.text), 0.02);
  }
}

// Long sequences, where the chunked math really splits the queries (16 heads × 2100² scores is past one chunk of
// kAttentionChunkElements): the attention method alone, float32 and bfloat16, against a float64 reference.
TEST(Attention, FusedEqualsChunkedAcrossScoreChunks) {
  torch::NoGradGuard no_grad;
  const int64_t H = 16, L = 2100;
  ASSERT_LT(kAttentionChunkElements / (H * L), L) << "the chunked math must split this case";
  torch::manual_seed(5);
  const torch::Tensor q = torch::randn({1, H, L, 64}), k = torch::randn({1, H, L, 64}), v = torch::randn({1, H, L, 64});
  const torch::Tensor r =
      torch::softmax(torch::matmul(q.to(torch::kFloat64), k.to(torch::kFloat64).transpose(-1, -2)) / 8.0, -1)
          .matmul(v.to(torch::kFloat64));
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(::testing::Message() << dtype);
    torch::jit::Module fused = Block(k5B, true, dtype), chunked = Block(k5B, false, dtype);
    const torch::Tensor a = fused.run_method("attention", q.to(dtype), k.to(dtype), v.to(dtype)).toTensor();
    const torch::Tensor b = chunked.run_method("attention", q.to(dtype), k.to(dtype), v.to(dtype)).toTensor();
    if (dtype == torch::kFloat32) {
      EXPECT_LE(MaxDiff(a, b), 1e-5);
    } else {
      EXPECT_LE(MaxDiff(a, r), 1.1 * MaxDiff(b, r));
      EXPECT_LE(MaxDiff(a, r), 0.05 * MaxAbs(r));
    }
  }
}

// T5: no 1/sqrt(d) scaling and an additive relative-position bias, as transformers computes it; the block's fused
// attention against that math written out with the block's own weights.
TEST(Attention, T5BlockEqualsBiasedSoftmaxMath) {
  torch::NoGradGuard no_grad;
  T5Config c;
  c.d_model = 256;
  c.num_heads = 4;
  c.d_kv = 64;
  c.d_ff = 512;
  ScriptBuilder eb("Embed", 1, torch::kFloat32), bb("Block", 2, torch::kFloat32);
  BuildT5Embed(c, eb);
  BuildT5Block(c, bb);
  torch::jit::Module embed = eb.Finish(), block = bb.Finish();
  torch::manual_seed(9);
  const torch::Tensor ids = torch::randint(0, c.vocab_size, {2, 226});
  auto eo = embed.forward({ids}).toTuple();
  const torch::Tensor h0 = eo->elements()[0].toTensor(), bias = eo->elements()[1].toTensor();
  const torch::Tensor got = block.forward({h0, bias}).toTensor();

  auto w = [&](const char* n) { return block.attr(n).toTensor(); };
  auto rms = [&](const torch::Tensor& x, const torch::Tensor& g) {
    return x * torch::rsqrt(x.pow(2).mean(-1, true) + c.eps) * g;
  };
  auto heads = [&](const torch::Tensor& x) { return x.view({2, 226, c.num_heads, c.d_kv}).transpose(1, 2); };
  const torch::Tensor h = rms(h0, w("ln1_w"));
  const torch::Tensor q = heads(torch::linear(h, w("q_w"))), k = heads(torch::linear(h, w("k_w"))),
                      v = heads(torch::linear(h, w("v_w")));
  const torch::Tensor p = torch::softmax(torch::matmul(q, k.transpose(-1, -2)) + bias, -1);
  const torch::Tensor x = h0 + torch::linear(torch::matmul(p, v).transpose(1, 2).reshape({2, 226, -1}), w("o_w"));
  const torch::Tensor h2 = rms(x, w("ln2_w"));
  const torch::Tensor x0 = torch::linear(h2, w("wi0_w"));  // transformers' gelu_new, written out
  const torch::Tensor gelu = 0.5 * x0 * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x0 + 0.044715 * x0.pow(3))));
  const torch::Tensor g = gelu * torch::linear(h2, w("wi1_w"));
  const torch::Tensor want = x + torch::linear(g, w("wo_w"));
  EXPECT_LE(MaxDiff(got, want), 1e-5 * MaxAbs(want));
}

// A guided step runs the denoiser on a batch of two on one worker, or on each half on two workers: the frames must
// not depend on which. Embed, block and head at 2B width, float32 and bfloat16, bit for bit.
TEST(DenoiserParts, ABatchOfTwoEqualsEachElementAloneBitForBit) {
  torch::NoGradGuard no_grad;
  for (torch::Dtype dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(::testing::Message() << dtype);
    TransformerConfig c = BlockConfig(k2B, true);
    c.text_embed_dim = 256;
    ScriptBuilder eb("Embed", 1, dtype), bb("Block", 2, dtype), hb("Head", 3, dtype);
    BuildTransformerEmbed(c, 16, eb);
    BuildTransformerBlock(c, bb);
    BuildTransformerHead(c, hb);
    torch::jit::Module embed = eb.Finish(), block = bb.Finish(), head = hb.Finish();
    torch::manual_seed(4);
    const torch::Tensor latents = torch::randn({2, 2, 16, 8, 12}), text = torch::randn({2, 16, 256}).to(dtype);
    const torch::Tensor timestep = torch::tensor({999, 999});
    auto run = [&](int64_t from, int64_t n) {
      auto e = embed.forward({latents.narrow(0, from, n), text.narrow(0, from, n), timestep.narrow(0, from, n)})
                   .toTuple()->elements();
      auto o = block.forward({e[0], e[1], e[2], e[3], e[4]}).toTuple()->elements();
      return head.forward({o[0], e[2], 2, 8, 12}).toTensor();
    };
    const torch::Tensor both = run(0, 2);
    EXPECT_TRUE(torch::equal(both, torch::cat({run(0, 1), run(1, 1)})))
        << "largest difference " << MaxDiff(both, torch::cat({run(0, 1), run(1, 1)}));
  }
}

}  // namespace
}  // namespace reel
