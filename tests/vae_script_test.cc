// Tests of the synthetic CogVideoX VAE modules (models/vae_script.h): shapes, frame batching, caches, causality,
// the building blocks against direct ports of diffusers' code, determinism, save/load, bf16, parameter counts.
#include "models/presets.h"
#include "models/vae_script.h"

#include <filesystem>
#include <string>
#include <unistd.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace reel {
namespace {

namespace F = torch::nn::functional;
using torch::indexing::Slice;

// The tiny preset's VAE: the same architecture scaled down.
VaeConfig TinyConfig() { return FindPreset("tiny")->vae; }

// Module and its inputs shared across tests: building is cheap, but keep one per dtype.
const torch::jit::Module& TinyEncoder() {
  static const torch::jit::Module m = BuildVaeEncoder(TinyConfig(), 7, torch::kFloat32);
  return m;
}
const torch::jit::Module& TinyDecoder() {
  static const torch::jit::Module m = BuildVaeDecoder(TinyConfig(), 7, torch::kFloat32);
  return m;
}

torch::Tensor Video(int64_t frames, int64_t h, int64_t w, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::rand({1, 3, frames, h, w}) * 2 - 1;
}

torch::Tensor Latents(int64_t frames, int64_t h, int64_t w, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({1, 16, frames, h, w});
}

torch::Tensor Forward(const torch::jit::Module& m, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return const_cast<torch::jit::Module&>(m).forward({x}).toTensor();
}

torch::Tensor Param(const torch::jit::Module& m, const std::string& name) {
  return m.attr(name).toTensor();
}

int64_t CountParams(const torch::jit::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

double RelError(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

// ---- direct ports of diffusers' building blocks (ATen ops, diffusers' tensor layout) as references ----

// CogVideoXCausalConv3d.forward with pad_mode "constant" (the path every CogVideoX conv takes).
torch::Tensor RefCausalConv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                            torch::Tensor* cache) {
  const int64_t k = w.size(2);
  std::vector<torch::Tensor> parts;
  if (cache->defined()) {
    parts.push_back(*cache);
  } else {
    for (int64_t i = 0; i < k - 1; ++i) parts.push_back(x.index({Slice(), Slice(), Slice(0, 1)}));
  }
  parts.push_back(x);
  torch::Tensor xp = torch::cat(parts, 2);
  *cache = xp.index({Slice(), Slice(), Slice(-(k - 1), torch::indexing::None)}).clone();
  return torch::conv3d(xp, w, b, 1, {0, 1, 1});
}

// CogVideoXDownsample3D.forward.
torch::Tensor RefDownsample(torch::Tensor x, const torch::Tensor& w, const torch::Tensor& b, bool compress_time) {
  if (compress_time) {
    const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
    x = x.permute({0, 3, 4, 1, 2}).reshape({B * H * W, C, T});
    if (x.size(-1) % 2 == 1) {
      torch::Tensor first = x.index({"...", 0});
      torch::Tensor rest = x.index({"...", Slice(1, torch::indexing::None)});
      if (rest.size(-1) > 0) rest = torch::avg_pool1d(rest, 2, 2);
      x = torch::cat({first.unsqueeze(-1), rest}, -1);
    } else {
      x = torch::avg_pool1d(x, 2, 2);
    }
    x = x.reshape({B, H, W, C, x.size(-1)}).permute({0, 3, 4, 1, 2});
  }
  x = F::pad(x, F::PadFuncOptions({0, 1, 0, 1}));
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  x = x.permute({0, 2, 1, 3, 4}).reshape({B * T, C, H, W});
  x = torch::conv2d(x, w, b, 2);
  return x.reshape({B, T, x.size(1), x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
}

torch::Tensor Interp(const torch::Tensor& x, std::vector<int64_t> size) {
  return F::interpolate(x, F::InterpolateFuncOptions().size(size).mode(torch::kNearest));
}
torch::Tensor Interp2x(const torch::Tensor& x) {
  std::vector<double> scale(x.dim() - 2, 2.0);
  return F::interpolate(x, F::InterpolateFuncOptions().scale_factor(scale).mode(torch::kNearest));
}

// CogVideoXUpsample3D.forward.
torch::Tensor RefUpsample(torch::Tensor x, const torch::Tensor& w, const torch::Tensor& b, bool compress_time) {
  if (x.size(2) > 1 && x.size(2) % 2 == 1 && compress_time) {
    torch::Tensor first = Interp2x(x.index({Slice(), Slice(), 0}));
    torch::Tensor rest = Interp2x(x.index({Slice(), Slice(), Slice(1, torch::indexing::None)}));
    x = torch::cat({first.unsqueeze(2), rest}, 2);
  } else if (x.size(2) > 1 && compress_time) {
    x = Interp2x(x);
  } else {
    const int64_t B = x.size(0), C = x.size(1), T = x.size(2);
    x = Interp2x(x.permute({0, 2, 1, 3, 4}).reshape({B * T, C, x.size(3), x.size(4)}));
    x = x.reshape({B, T, C, x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
  }
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2);
  x = x.permute({0, 2, 1, 3, 4}).reshape({B * T, C, x.size(3), x.size(4)});
  x = torch::conv2d(x, w, b, 1, 1);
  return x.reshape({B, T, x.size(1), x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4});
}

// CogVideoXSpatialNorm3D.forward.
torch::Tensor RefSpatialNorm(const torch::Tensor& f, torch::Tensor zq, const torch::Tensor& gw,
                             const torch::Tensor& gb, const torch::Tensor& yw, const torch::Tensor& yb,
                             const torch::Tensor& bw, const torch::Tensor& bb, int64_t groups, double eps) {
  if (f.size(2) > 1 && f.size(2) % 2 == 1) {
    torch::Tensor z_first = Interp(zq.index({Slice(), Slice(), Slice(0, 1)}), {1, f.size(3), f.size(4)});
    torch::Tensor z_rest =
        Interp(zq.index({Slice(), Slice(), Slice(1, torch::indexing::None)}), {f.size(2) - 1, f.size(3), f.size(4)});
    zq = torch::cat({z_first, z_rest}, 2);
  } else {
    zq = Interp(zq, {f.size(2), f.size(3), f.size(4)});
  }
  return torch::group_norm(f, groups, gw, gb, eps) * torch::conv3d(zq, yw, yb) + torch::conv3d(zq, bw, bb);
}

torch::jit::IValue Call(const torch::jit::Module& m, const std::string& method, std::vector<torch::jit::IValue> args) {
  torch::NoGradGuard no_grad;
  return m.get_method(method)(std::move(args));
}

// ---- building blocks ----

TEST(VaeScript, CausalConvMatchesDiffusersAndThreadsCache) {
  const auto& m = TinyEncoder();
  torch::Tensor w = Param(m, "enc_down0_res0_conv1_w"), b = Param(m, "enc_down0_res0_conv1_b");
  torch::manual_seed(1);
  torch::Tensor x1 = torch::randn({1, 16, 3, 6, 5}), x2 = torch::randn({1, 16, 2, 6, 5});
  c10::Dict<std::string, torch::Tensor> cache;
  torch::Tensor ref_cache;
  for (const auto& x : {x1, x2}) {
    torch::Tensor out = Call(m, "_cconv", {x, w, b, cache, std::string("k")}).toTensor();
    torch::Tensor ref = RefCausalConv(x, w, b, &ref_cache);
    EXPECT_EQ(out.sizes(), ref.sizes());
    EXPECT_TRUE(torch::allclose(out, ref, 1e-5, 1e-5));
    ASSERT_EQ(cache.size(), 1u);
    EXPECT_TRUE(torch::equal(cache.at("k"), ref_cache));
  }
}

TEST(VaeScript, DownsampleMatchesDiffusers) {
  const auto& m = TinyEncoder();
  torch::Tensor w = Param(m, "enc_down0_downsample_w"), b = Param(m, "enc_down0_downsample_b");
  torch::manual_seed(2);
  for (bool compress : {true, false}) {
    for (int64_t t : {1, 2, 5, 8, 9}) {
      torch::Tensor x = torch::randn({2, 16, t, 8, 6});
      torch::Tensor out = Call(m, "_downsample", {x, w, b, compress}).toTensor();
      torch::Tensor ref = RefDownsample(x, w, b, compress);
      ASSERT_EQ(out.sizes(), ref.sizes()) << "t=" << t << " compress=" << compress;
      EXPECT_TRUE(torch::allclose(out, ref, 1e-5, 1e-5)) << "t=" << t << " compress=" << compress;
    }
  }
}

TEST(VaeScript, UpsampleMatchesDiffusers) {
  const auto& m = TinyDecoder();
  torch::Tensor w = Param(m, "dec_up0_upsample_w"), b = Param(m, "dec_up0_upsample_b");
  torch::manual_seed(3);
  for (bool compress : {true, false}) {
    for (int64_t t : {1, 2, 3, 5}) {
      torch::Tensor x = torch::randn({2, 64, t, 3, 4});
      torch::Tensor out = Call(m, "_upsample", {x, w, b, compress}).toTensor();
      torch::Tensor ref = RefUpsample(x, w, b, compress);
      ASSERT_EQ(out.sizes(), ref.sizes()) << "t=" << t << " compress=" << compress;
      EXPECT_TRUE(torch::allclose(out, ref, 1e-5, 1e-5)) << "t=" << t << " compress=" << compress;
    }
  }
}

TEST(VaeScript, SpatialNormMatchesDiffusers) {
  const auto& m = TinyDecoder();
  const std::string p = "dec_up1_res0_norm1";
  std::vector<torch::Tensor> w = {Param(m, p + "_w"),      Param(m, p + "_b"),      Param(m, p + "_convy_w"),
                                  Param(m, p + "_convy_b"), Param(m, p + "_convb_w"), Param(m, p + "_convb_b")};
  // Non-trivial affine weights (the builder initializes them to 1 and 0).
  torch::manual_seed(4);
  w[0] = torch::randn_like(w[0]);
  w[1] = torch::randn_like(w[1]);
  struct Case { int64_t zt, ft, zh, fh, zw, fw; };
  for (const Case& c : {Case{3, 5, 2, 4, 3, 6}, Case{3, 9, 2, 8, 3, 12}, Case{2, 4, 2, 2, 3, 3}, Case{2, 8, 2, 16, 3, 24},
                        Case{1, 1, 2, 8, 2, 8}, Case{3, 3, 2, 2, 3, 3}, Case{2, 3, 2, 3, 3, 5}}) {
    torch::Tensor zq = torch::randn({1, 16, c.zt, c.zh, c.zw});
    torch::Tensor f = torch::randn({1, 64, c.ft, c.fh, c.fw}) * 3 + 1;
    torch::Tensor out = Call(m, "_snorm", {f, zq, w[0], w[1], w[2], w[3], w[4], w[5]}).toTensor();
    torch::Tensor ref = RefSpatialNorm(f, zq, w[0], w[1], w[2], w[3], w[4], w[5], 8, 1e-6);
    ASSERT_EQ(out.sizes(), ref.sizes());
    EXPECT_TRUE(torch::allclose(out, ref, 1e-4, 1e-5)) << "zt=" << c.zt << " ft=" << c.ft << " fh=" << c.fh;
  }
}

TEST(VaeScript, FrameChunksFollowDiffusers) {
  using Chunks = std::vector<std::pair<int64_t, int64_t>>;
  EXPECT_EQ(VaeFrameChunks(49, 8), (Chunks{{0, 9}, {9, 17}, {17, 25}, {25, 33}, {33, 41}, {41, 49}}));
  EXPECT_EQ(VaeFrameChunks(13, 2), (Chunks{{0, 3}, {3, 5}, {5, 7}, {7, 9}, {9, 11}, {11, 13}}));
  EXPECT_EQ(VaeFrameChunks(1, 8), (Chunks{{0, 1}}));
  EXPECT_EQ(VaeFrameChunks(5, 8), (Chunks{{0, 5}}));
  EXPECT_EQ(VaeFrameChunks(4, 2), (Chunks{{0, 2}, {2, 4}}));
}

// ---- encoder ----

TEST(VaeScript, EncoderShapes) {
  const auto& m = TinyEncoder();
  struct Case { int64_t frames, latent_frames; };
  for (const Case& c : {Case{9, 3}, Case{1, 1}, Case{17, 5}, Case{5, 2}}) {
    torch::Tensor out = Forward(m, Video(c.frames, 64, 64, 10));
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 32, c.latent_frames, 8, 8})) << c.frames;
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
    torch::Tensor logvar = out.index({Slice(), Slice(16, 32)});
    EXPECT_LE(logvar.max().item<double>(), 20.0);
    EXPECT_GE(logvar.min().item<double>(), -30.0);
  }
  // Non-square, batch 2: batch elements are independent.
  torch::Tensor v = torch::cat({Video(9, 32, 48, 11), Video(9, 32, 48, 12)}, 0);
  torch::Tensor out = Forward(m, v);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 32, 3, 4, 6}));
  EXPECT_TRUE(torch::allclose(out[1], Forward(m, Video(9, 32, 48, 12))[0], 1e-4, 1e-5));
}

TEST(VaeScript, EncoderCastsInput) {
  const auto& m = TinyEncoder();
  torch::Tensor v = Video(9, 32, 32, 13);
  EXPECT_TRUE(torch::equal(Forward(m, v.to(torch::kFloat64)), Forward(m, v)));
}

TEST(VaeScript, EncoderForwardEqualsChunkLoopAndIsCausal) {
  const auto& m = TinyEncoder();
  torch::Tensor v = Video(17, 32, 32, 14);
  torch::Tensor full = Forward(m, v);
  // forward == encode_chunk over VaeFrameChunks with one cache.
  c10::Dict<std::string, torch::Tensor> cache;
  std::vector<torch::Tensor> outs;
  for (auto [s, e] : VaeFrameChunks(17, TinyConfig().encode_frame_batch)) {
    outs.push_back(Call(m, "encode_chunk", {v.index({Slice(), Slice(), Slice(s, e)}), cache}).toTensor());
  }
  EXPECT_TRUE(torch::equal(torch::cat(outs, 2), full));
  // One entry per causal conv: conv_in, 2 per resnet (4 levels + mid = 6 resnets), conv_out.
  EXPECT_EQ(cache.size(), 1u + 2 * 6 + 1);
  // Changing frames of the second chunk leaves the first chunk's latents alone and changes the rest.
  torch::Tensor v2 = v.clone();
  v2.index_put_({Slice(), Slice(), Slice(9, 17)}, Video(8, 32, 32, 15));
  torch::Tensor full2 = Forward(m, v2);
  EXPECT_TRUE(torch::equal(full2.index({Slice(), Slice(), Slice(0, 3)}), full.index({Slice(), Slice(), Slice(0, 3)})));
  EXPECT_FALSE(torch::allclose(full2.index({Slice(), Slice(), Slice(3, 5)}), full.index({Slice(), Slice(), Slice(3, 5)})));
  // The cache carries context: the second chunk encoded without it gives different latents.
  c10::Dict<std::string, torch::Tensor> fresh;
  torch::Tensor alone = Call(m, "encode_chunk", {v.index({Slice(), Slice(), Slice(9, 17)}), fresh}).toTensor();
  EXPECT_FALSE(torch::allclose(alone, full.index({Slice(), Slice(), Slice(3, 5)})));
}

// ---- decoder ----

TEST(VaeScript, DecoderShapes) {
  const auto& m = TinyDecoder();
  struct Case { int64_t latent_frames, h, frames; };
  for (const Case& c : {Case{3, 8, 9}, Case{1, 4, 1}, Case{5, 4, 17}, Case{13, 2, 49}, Case{2, 4, 8}}) {
    torch::Tensor out = Forward(m, Latents(c.latent_frames, c.h, c.h, 20));
    ASSERT_EQ(out.sizes(), (std::vector<int64_t>{1, 3, c.frames, 8 * c.h, 8 * c.h})) << c.latent_frames;
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  }
  torch::Tensor out = Forward(m, Latents(3, 2, 3, 21));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 3, 9, 16, 24}));
}

TEST(VaeScript, DecoderForwardEqualsChunkLoop) {
  const auto& m = TinyDecoder();
  torch::Tensor z = Latents(7, 4, 4, 22);
  torch::Tensor full = Forward(m, z);
  c10::Dict<std::string, torch::Tensor> cache;
  std::vector<torch::Tensor> outs;
  for (auto [s, e] : VaeFrameChunks(7, TinyConfig().decode_latent_batch)) {
    outs.push_back(Call(m, "decode_chunk", {z.index({Slice(), Slice(), Slice(s, e)}), cache}).toTensor());
  }
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_TRUE(torch::equal(torch::cat(outs, 2), full));
  // One entry per causal conv: conv_in, 2 per resnet (2 mid + 4 levels × 2), conv_out; none for the k=1 convs.
  EXPECT_EQ(cache.size(), 1u + 2 * (2 + 4 * 2) + 1);
  // Decoding the last chunk with a fresh cache differs: the cache carries the previous chunk's context.
  c10::Dict<std::string, torch::Tensor> fresh;
  torch::Tensor alone = Call(m, "decode_chunk", {z.index({Slice(), Slice(), Slice(5, 7)}), fresh}).toTensor();
  EXPECT_FALSE(torch::allclose(alone, outs.back()));
}

TEST(VaeScript, DecoderIsCausalAcrossChunks) {
  // 5 latents decode as chunks [a,b,c] and [d,e]: changing d and e leaves the first 9 frames exactly as they were.
  const auto& m = TinyDecoder();
  torch::Tensor z = Latents(5, 4, 4, 23);
  torch::Tensor z2 = z.clone();
  z2.index_put_({Slice(), Slice(), Slice(3, 5)}, Latents(2, 4, 4, 24));
  torch::Tensor a = Forward(m, z), b = Forward(m, z2);
  ASSERT_EQ(a.size(2), 17);
  EXPECT_TRUE(torch::equal(a.index({Slice(), Slice(), Slice(0, 9)}), b.index({Slice(), Slice(), Slice(0, 9)})));
  EXPECT_FALSE(torch::allclose(a.index({Slice(), Slice(), Slice(9, 17)}), b.index({Slice(), Slice(), Slice(9, 17)})));
}

// ---- both ----

TEST(VaeScript, DeterministicPerSeed) {
  const VaeConfig cfg = TinyConfig();
  torch::Tensor v = Video(9, 32, 32, 30);
  torch::Tensor z = Latents(3, 4, 4, 31);
  for (bool encoder : {true, false}) {
    auto build = [&](uint64_t seed) {
      return encoder ? BuildVaeEncoder(cfg, seed, torch::kFloat32) : BuildVaeDecoder(cfg, seed, torch::kFloat32);
    };
    torch::jit::Module a = build(5), b = build(5), c = build(6);
    auto pa = a.named_parameters(), pb = b.named_parameters(), pc = c.named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    bool all_same_c = true;
    auto ib = pb.begin(), ic = pc.begin();
    for (auto ia = pa.begin(); ia != pa.end(); ++ia, ++ib, ++ic) {
      EXPECT_EQ((*ia).name, (*ib).name);
      EXPECT_TRUE(torch::equal((*ia).value, (*ib).value)) << (*ia).name;
      if ((*ia).name.find("norm") == std::string::npos || (*ia).name.find("conv") != std::string::npos) {
        all_same_c = all_same_c && torch::equal((*ia).value, (*ic).value);
      }
    }
    EXPECT_FALSE(all_same_c);
    torch::Tensor in = encoder ? v : z;
    torch::Tensor oa = Forward(a, in);
    EXPECT_TRUE(torch::equal(oa, Forward(b, in)));
    EXPECT_FALSE(torch::allclose(oa, Forward(c, in)));
  }
}

TEST(VaeScript, SaveLoadRoundTrip) {
  const std::string dir = (std::filesystem::temp_directory_path() / ("vae_script_test_" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  torch::Tensor v = Video(9, 32, 32, 40);
  torch::Tensor z = Latents(3, 4, 4, 41);
  const auto& enc = TinyEncoder();
  const auto& dec = TinyDecoder();
  enc.save(dir + "/enc.pt");
  dec.save(dir + "/dec.pt");
  torch::jit::Module enc2 = torch::jit::load(dir + "/enc.pt");
  torch::jit::Module dec2 = torch::jit::load(dir + "/dec.pt");
  EXPECT_TRUE(torch::equal(Forward(enc2, v), Forward(enc, v)));
  EXPECT_TRUE(torch::equal(Forward(dec2, z), Forward(dec, z)));
  c10::Dict<std::string, torch::Tensor> cache;
  EXPECT_TRUE(torch::equal(Call(dec2, "decode_chunk", {z, cache}).toTensor(), Forward(dec, z)));
  std::filesystem::remove_all(dir);
}

TEST(VaeScript, Bf16WeightsCloseToF32) {
  const VaeConfig cfg = TinyConfig();
  torch::Tensor v = Video(9, 32, 32, 50);
  torch::Tensor z = Latents(3, 4, 4, 51);
  torch::jit::Module enc16 = BuildVaeEncoder(cfg, 7, torch::kBFloat16);
  torch::jit::Module dec16 = BuildVaeDecoder(cfg, 7, torch::kBFloat16);
  EXPECT_EQ(Param(enc16, "enc_conv_in_w").scalar_type(), torch::kBFloat16);
  // Same seed: the bf16 weights are the rounded f32 weights.
  EXPECT_TRUE(torch::equal(Param(enc16, "enc_conv_in_w"), Param(TinyEncoder(), "enc_conv_in_w").to(torch::kBFloat16)));
  torch::Tensor e16 = Forward(enc16, v), e32 = Forward(TinyEncoder(), v);
  torch::Tensor d16 = Forward(dec16, z), d32 = Forward(TinyDecoder(), z);
  EXPECT_EQ(e16.scalar_type(), torch::kFloat32);
  EXPECT_EQ(d16.scalar_type(), torch::kFloat32);
  const double enc_err = RelError(e16, e32), dec_err = RelError(d16, d32);
  RecordProperty("bf16_encoder_rel_error", std::to_string(enc_err));
  RecordProperty("bf16_decoder_rel_error", std::to_string(dec_err));
  std::printf("bf16 vs f32 relative L2 error: encoder %.4f decoder %.4f\n", enc_err, dec_err);
  EXPECT_LT(enc_err, 0.1);
  EXPECT_LT(dec_err, 0.1);
  EXPECT_GT(enc_err, 0.0);
}

TEST(VaeScript, RealConfigParameterCounts) {
  // COGVIDEOX.md §9: encoder 92,215,456 + decoder 123,368,451. Built only, never run.
  const VaeConfig cfg;
  EXPECT_EQ(CountParams(BuildVaeEncoder(cfg, 1, torch::kFloat32)), 92215456);
  EXPECT_EQ(CountParams(BuildVaeDecoder(cfg, 1, torch::kFloat32)), 123368451);
}

}  // namespace
}  // namespace reel
