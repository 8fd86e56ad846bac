// Tests of the VAE decode strategies (runtime/vae_decode.h) on the tiny synthetic decoder: slicing is forward bit for
// bit, tiling follows a direct port of diffusers' tiled_decode bit for bit and stays close to the untiled output,
// to_host sees every chunk of every tile, and bad tile sizes are rejected.
#include "runtime/vae_decode.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/torch.h>

#include "common/error.h"
#include "models/presets.h"
#include "models/vae_script.h"

namespace reel {
namespace {

using torch::indexing::Slice;

// The tiny preset's VAE: the same architecture scaled down.
VaeConfig TinyConfig() { return FindPreset("tiny")->vae; }

torch::jit::Module& TinyDecoder() {
  static torch::jit::Module m = [] {
    at::set_num_threads(2);
    // The profiling executor re-optimises the graphs for every new input shape (tiles and chunks bring many), which
    // costs more than these tiny decodes themselves; the results are the same without it.
    torch::jit::setGraphExecutorOptimize(false);
    return BuildVaeDecoder(TinyConfig(), 7, torch::kFloat32);
  }();
  return m;
}

torch::Tensor Latents(int64_t batch, int64_t frames, int64_t h, int64_t w, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({batch, 16, frames, h, w});
}

torch::Tensor Forward(const torch::Tensor& z) {
  torch::NoGradGuard no_grad;
  return TinyDecoder().forward({z}).toTensor();
}

// Decodes with `opts` and records the time size of every piece handed to to_host.
struct Decoded {
  torch::Tensor out;
  std::vector<int64_t> piece_frames;
};
Decoded Decode(const torch::Tensor& z, const VaeDecodeOptions& opts) {
  Decoded r;
  r.out = DecodeVae(TinyDecoder(), z, opts, [&](const torch::Tensor& t) {
    r.piece_frames.push_back(t.size(2));
    return t;
  });
  return r;
}

size_t Chunks(int64_t frames) { return VaeFrameChunks(frames, 2).size(); }

// Tiles along one axis of `n` latents: diffusers' range(0, n, stride).
int64_t TileCount(int64_t n, int64_t stride) { return (n + stride - 1) / stride; }

double Psnr(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = (a * 0.5 + 0.5).clamp(0.0, 1.0), y = (b * 0.5 + 0.5).clamp(0.0, 1.0);
  const double mse = (x - y).pow(2).mean().item<double>();
  return 10.0 * std::log10(1.0 / mse);
}

// A direct port of diffusers' tiled_decode with framewise decoding: every tile through forward (the decoder's own
// frame chunking), blend_v / blend_h as diffusers' per-row loops with Python float weights, the kept parts
// concatenated row by row and cropped. Numbers per axis: tile (latents), stride (latents), blend and keep (pixels).
struct PortAxis { int64_t tile, stride, blend, keep; };
torch::Tensor DiffusersTiledDecode(const torch::Tensor& z, PortAxis ah, PortAxis aw) {
  const int64_t h = z.size(3), w = z.size(4);
  auto blend = [](const torch::Tensor& a, torch::Tensor b, int64_t dim, int64_t extent) {
    const int64_t e = std::min({a.size(dim), b.size(dim), extent});
    for (int64_t y = 0; y < e; ++y) {
      const double t = static_cast<double>(y) / static_cast<double>(e);
      b.select(dim, y).copy_(a.select(dim, a.size(dim) - e + y) * (1 - t) + b.select(dim, y) * t);
    }
    return b;
  };
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < h; i += ah.stride) {
    std::vector<torch::Tensor> row;
    for (int64_t j = 0; j < w; j += aw.stride) {
      row.push_back(Forward(z.index({Slice(), Slice(), Slice(), Slice(i, i + ah.tile), Slice(j, j + aw.tile)})));
    }
    rows.push_back(row);
  }
  std::vector<torch::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<torch::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      torch::Tensor tile = rows[i][j];
      if (i > 0) tile = blend(rows[i - 1][j], tile, 3, ah.blend);
      if (j > 0) tile = blend(rows[i][j - 1], tile, 4, aw.blend);
      result_row.push_back(tile.index({Slice(), Slice(), Slice(), Slice(0, ah.keep), Slice(0, aw.keep)}));
    }
    result_rows.push_back(torch::cat(result_row, 4));
  }
  return torch::cat(result_rows, 3).index({Slice(), Slice(), Slice(), Slice(0, 8 * h), Slice(0, 8 * w)});
}

// ---- no options, slicing ----

TEST(VaeDecode, NoOptionsIsForwardWithOneHostCall) {
  const torch::Tensor z = Latents(2, 3, 4, 6, 1);
  const Decoded r = Decode(z, {});
  EXPECT_TRUE(torch::equal(r.out, Forward(z)));
  EXPECT_EQ(r.piece_frames, (std::vector<int64_t>{9}));
}

TEST(VaeDecode, SlicingEqualsForwardBitForBit) {
  VaeDecodeOptions opts;
  opts.slicing = true;
  for (int64_t f : {1, 3, 5, 7}) {
    // One host piece per chunk, in order: the first chunk of 1 or 3 latents gives 1 or 9 frames, 2-latent chunks 8.
    std::vector<int64_t> frames = {f == 1 ? 1 : 9};
    for (size_t c = 1; c < Chunks(f); ++c) frames.push_back(8);

    const torch::Tensor z1 = Latents(1, f, 4, 6, 10 + f);
    const Decoded one = Decode(z1, opts);
    EXPECT_TRUE(torch::equal(one.out, Forward(z1))) << "f=" << f;
    EXPECT_EQ(one.piece_frames, frames) << "f=" << f;

    // Batch 2: each element on its own, bit for bit what forward gives that element alone. LibTorch's CPU conv3d
    // (oneDNN) does not give batch-independent bits, so against the batched forward the match is to rounding
    // (measured max |diff| 6.7e-6 for this decoder).
    const torch::Tensor z = Latents(2, f, 4, 6, 20 + f);
    const Decoded two = Decode(z, opts);
    const torch::Tensor batched = Forward(z);
    ASSERT_EQ(two.out.sizes(), batched.sizes()) << "f=" << f;
    for (int64_t b = 0; b < 2; ++b) {
      EXPECT_TRUE(torch::equal(two.out.narrow(0, b, 1), Forward(z.narrow(0, b, 1)))) << "f=" << f << " b=" << b;
    }
    EXPECT_TRUE(torch::allclose(two.out, batched, 1e-4, 1e-4)) << "f=" << f;
    std::vector<int64_t> both = frames;
    both.insert(both.end(), frames.begin(), frames.end());
    EXPECT_EQ(two.piece_frames, both) << "f=" << f;
  }
}

TEST(VaeDecode, ConvBatchingChangesBits) {
  // Why the batch-2 comparisons above are per element: if this starts passing, slicing became batch-exact too.
  torch::manual_seed(0);
  const torch::Tensor x = torch::randn({2, 32, 3, 8, 8}), w = torch::randn({32, 32, 3, 3, 3});
  const bool same = torch::equal(torch::conv3d(x, w).narrow(0, 1, 1), torch::conv3d(x.narrow(0, 1, 1), w));
  RecordProperty("conv3d_batch_exact", same ? "true" : "false");
  std::printf("CPU conv3d batch-2 element 1 == batch-1: %s\n", same ? "yes" : "no");
}

TEST(VaeDecode, SlicingAssemblesTheHostPieces) {
  // The result lives where to_host puts the pieces (here: converted to float64).
  const torch::Tensor z = Latents(1, 5, 4, 4, 20);
  VaeDecodeOptions opts;
  opts.slicing = true;
  const torch::Tensor out =
      DecodeVae(TinyDecoder(), z, opts, [](const torch::Tensor& t) { return t.to(torch::kFloat64); });
  EXPECT_EQ(out.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(out, Forward(z).to(torch::kFloat64)));
}

// ---- tiling ----

TEST(VaeDecode, TilingMatchesDiffusersPortBitForBit) {
  // tile 64 → 8 latents; stride int(8·5/6) = 6 and int(8·4/5) = 6 latents; blend 64 − 48 = 16 pixels; keep 48.
  const torch::Tensor z = Latents(1, 3, 16, 24, 30);
  VaeDecodeOptions opts;
  opts.tile = 64;
  const Decoded r = Decode(z, opts);
  const torch::Tensor ref = DiffusersTiledDecode(z, {8, 6, 16, 48}, {8, 6, 16, 48});
  ASSERT_EQ(r.out.sizes(), (std::vector<int64_t>{1, 3, 9, 128, 192}));
  EXPECT_TRUE(torch::equal(r.out, ref));
  // A last row and column shorter than the blend (13 = 0, 6, 12 → a 1-latent tile; 10 = 0, 6 → 4 latents).
  const torch::Tensor z2 = Latents(1, 1, 13, 10, 31);
  EXPECT_TRUE(torch::equal(Decode(z2, opts).out, DiffusersTiledDecode(z2, {8, 6, 16, 48}, {8, 6, 16, 48})));
}

TEST(VaeDecode, TilingAtDiffusersDefaultTileUsesItsNumbers) {
  // diffusers' own tile (240 pixels, 30 latents): stride 25 / 24 latents and blend int(240·1/6) = 40 /
  // int(240·1/5) = 48 pixels, keeping 200 / 192 — the numbers of diffusers' formula, which the stride-derived blend
  // reproduces at this size.
  const torch::Tensor z = Latents(1, 1, 31, 31, 32);
  VaeDecodeOptions opts;
  opts.tile = 240;
  const Decoded r = Decode(z, opts);
  EXPECT_TRUE(torch::equal(r.out, DiffusersTiledDecode(z, {30, 25, 40, 200}, {30, 24, 48, 192})));
  EXPECT_EQ(r.piece_frames.size(), 2u * 2u);
}

TEST(VaeDecode, TilingAtDiffusersDefaultRectangle) {
  // --vae-tiling diffusers: enable_tiling()'s 240×360 tiles (30×45 latents): strides 25 and int(45·4/5) = 36
  // latents, blends 40 and 72 pixels, keeping 200 and 288. The real diffusers' frames are compared in
  // tools/export/tests/test_pipeline_parity.py (test_vae_tiling_as_enable_tiling).
  const torch::Tensor z = Latents(1, 1, 31, 46, 33);
  VaeDecodeOptions opts;
  opts.tile = 240;
  opts.tile_w = 360;
  EXPECT_EQ(VaeDecodeName(opts), "tiling=240x360");
  const Decoded r = Decode(z, opts);
  EXPECT_TRUE(torch::equal(r.out, DiffusersTiledDecode(z, {30, 25, 40, 200}, {45, 36, 72, 288})));
  EXPECT_EQ(r.piece_frames.size(), 2u * 2u);
  // Wider than the square tile but within the rectangle: one tile, as forward.
  const torch::Tensor narrow = Latents(1, 1, 30, 45, 34);
  EXPECT_TRUE(torch::equal(Decode(narrow, opts).out, Forward(narrow)));
}

TEST(VaeDecode, TilingShapeAndCloseToUntiled) {
  VaeDecodeOptions opts;
  opts.tile = 64;
  struct Case {
    int64_t f, h, w;
    double min_psnr;
  };
  // Measured PSNR (dB) of tiled vs untiled, tiny decoder (seed 7), N(0, 1) latents, tile 64: f=3 16×24 24.3–24.5
  // over four latent seeds; f=1 24×16 23.6; f=3 12×12 26.2 (tile 128 at 16×24: 33). The gap is mostly GroupNorm
  // statistics taken per tile. The bounds leave 3 dB of margin; tiles blended with the misaligned extents of
  // diffusers' int(tile · overlap) formula at this size (blend 10/12 pixels, keep 54/52) measure 9.0 dB.
  for (const Case& c : {Case{3, 16, 24, 21.0}, Case{1, 24, 16, 20.5}, Case{3, 12, 12, 23.0}}) {
    const torch::Tensor z = Latents(1, c.f, c.h, c.w, 40 + c.h);
    const torch::Tensor full = Forward(z);
    const Decoded r = Decode(z, opts);
    ASSERT_EQ(r.out.sizes(), full.sizes()) << c.h << "x" << c.w;
    const double psnr = Psnr(r.out, full);
    std::printf("tile 64, f=%ld %ldx%ld latents: PSNR tiled vs untiled %.2f dB\n", static_cast<long>(c.f),
                static_cast<long>(c.h), static_cast<long>(c.w), psnr);
    RecordProperty("psnr_f" + std::to_string(c.f) + "_" + std::to_string(c.h) + "x" + std::to_string(c.w),
                   std::to_string(psnr));
    EXPECT_GT(psnr, c.min_psnr) << c.h << "x" << c.w;
    EXPECT_EQ(r.piece_frames.size(), TileCount(c.h, 6) * TileCount(c.w, 6) * Chunks(c.f)) << c.h << "x" << c.w;
  }
}

TEST(VaeDecode, TilingPlusSlicingEqualsTiling) {
  const torch::Tensor z = Latents(2, 5, 10, 13, 50);
  VaeDecodeOptions tiled;
  tiled.tile = 64;
  VaeDecodeOptions both = tiled;
  both.slicing = true;
  const Decoded a = Decode(z, tiled), b = Decode(z, both);
  // Per element, slicing adds nothing to tiling: bit for bit. Against the batch-2 tiles, equal to rounding (conv3d).
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(torch::equal(b.out.narrow(0, i, 1), Decode(z.narrow(0, i, 1), tiled).out)) << i;
  }
  EXPECT_TRUE(torch::allclose(a.out, b.out, 1e-4, 1e-4));
  // 10 → rows 0, 6; 13 → columns 0, 6, 12: 6 tiles of 2 chunks (3 + 2 latents), for the batch or per element.
  std::vector<int64_t> per_tile;
  for (int k = 0; k < 6; ++k) per_tile.insert(per_tile.end(), {9, 8});
  EXPECT_EQ(a.piece_frames, per_tile);
  EXPECT_EQ(b.piece_frames.size(), 2u * 6u * Chunks(5));
}

TEST(VaeDecode, LatentWithinOneTileEqualsForward) {
  VaeDecodeOptions opts;
  opts.tile = 64;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{8, 8}, {4, 6}, {8, 3}}) {
    const torch::Tensor z = Latents(2, 3, h, w, 60 + h);
    const Decoded r = Decode(z, opts);
    EXPECT_TRUE(torch::equal(r.out, Forward(z))) << h << "x" << w;
    EXPECT_EQ(r.piece_frames.size(), Chunks(3)) << h << "x" << w;
  }
}

TEST(VaeDecode, TilingOverlapMatters) {
  // Without blending the seams are visible: overlap 0 (tiles side by side) is further from the untiled output.
  const torch::Tensor z = Latents(1, 1, 16, 24, 70);
  const torch::Tensor full = Forward(z);
  VaeDecodeOptions blended;
  blended.tile = 64;
  VaeDecodeOptions abutted = blended;
  abutted.overlap_h = abutted.overlap_w = 0.0;
  const double p_blend = Psnr(Decode(z, blended).out, full), p_abut = Psnr(Decode(z, abutted).out, full);
  std::printf("tile 64, f=1 16x24: PSNR blended %.2f dB, no overlap %.2f dB\n", p_blend, p_abut);
  EXPECT_GT(p_blend, p_abut);
  EXPECT_EQ(Decode(z, abutted).piece_frames.size(), 2u * 3u);
}

// ---- options ----

TEST(VaeDecode, RejectsBadTileSizes) {
  const torch::Tensor z = Latents(1, 1, 4, 4, 80);
  for (int tile : {8, 12, 7, -8, 20, 1}) {
    VaeDecodeOptions opts;
    opts.tile = tile;
    try {
      DecodeVae(TinyDecoder(), z, opts, [](const torch::Tensor& t) { return t; });
      ADD_FAILURE() << "tile " << tile << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_EQ(std::string(e.what()), "--vae-tiling " + std::to_string(tile) +
                                           ": accepted a tile size in pixels, a multiple of 8, at least 16");
    }
  }
  for (int tile : {0, 16, 24, 64, 256}) {
    VaeDecodeOptions opts;
    opts.tile = tile;
    EXPECT_NO_THROW(ValidateVaeDecodeOptions(opts)) << tile;
  }
  VaeDecodeOptions bad_overlap;
  bad_overlap.tile = 16;
  bad_overlap.overlap_w = 0.6;  // a 2-latent tile would get stride 0
  EXPECT_THROW(ValidateVaeDecodeOptions(bad_overlap), Error);
  EXPECT_THROW(DecodeVae(TinyDecoder(), torch::zeros({16, 1, 4, 4}), {}, [](const torch::Tensor& t) { return t; }),
               Error);
}

// Timings for the report (not run by default): --gtest_also_run_disabled_tests --gtest_filter='*Timings*'.
TEST(VaeDecode, DISABLED_Timings) {
  const torch::Tensor z = Latents(1, 3, 32, 32, 90);
  auto time = [&](const VaeDecodeOptions& opts) {
    Decode(z, opts);  // warm-up
    double best = 1e9;
    for (int k = 0; k < 3; ++k) {
      const auto t0 = std::chrono::steady_clock::now();
      Decode(z, opts);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
  };
  VaeDecodeOptions sliced;
  sliced.slicing = true;
  VaeDecodeOptions t64;
  t64.tile = 64;
  VaeDecodeOptions t128;
  t128.tile = 128;
  std::printf("f=3, 32x32 latents (9x256x256), best of 3: forward %.3f s, sliced %.3f s, tiled 64 %.3f s, "
              "tiled 128 %.3f s\n",
              time({}), time(sliced), time(t64), time(t128));
}

}  // namespace
}  // namespace reel
