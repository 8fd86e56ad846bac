#include "planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "common/error.h"
#include "planner/planning.h"

namespace reel::planner {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Defaults. CUDA: an H100 or H200 (the same tensor cores, 989 TFLOP/s dense bf16 on paper), whose bf16 GEMMs at
// 8192³ measured 790–800 TFLOP/s: that is the rate, and each class of work reaches its share of it (EfficiencyOf).
// f32 without TF32 is not recalibrated (no f32 runs measured). 20 GB/s pinned host-to-device copies. The 2.3 TB/s
// that chunked attention's passes over its score chunks reached on an H200: Reel's chunked 5B and 2B steps at
// 49×480×720, guided, took 21.8 s and 8.41 s, about 16 ps per score element of 36 bytes (an H100, with 70% of the
// H200's memory bandwidth, would be slower there). docs/PLANNER.md has the figures and how estimates compare.
// The simulated device: what this project's 2-core development machine (AMD EPYC, AVX-512 with BF16) sustains on
// LibTorch's CPU kernels (docs/PLANNER.md): bf16 GEMMs through oneDNN as measured on LibTorch 1.13 (the machine
// is shared: PyTorch 2.11 measured 170–390 GFLOP/s at 2B widths under its usual load); f32 GEMMs now go through
// the wheel's MKL, which on this AMD CPU reaches a quarter of bf16's rate (0.20–0.25 in interleaved runs) where
// Debian's LibTorch 1.13 reached half. Chunked attention's passes over its scores reach 2 GB/s (against the GEMMs
// in the same runs; 4 GB/s on LibTorch 1.13). Its copies are memcpy clones.
constexpr double kCudaBf16Flops = 800e12;
constexpr double kCudaF32Flops = 55e12;
constexpr double kCudaMemory = 2.3e12;
constexpr double kCudaCopy = 20e9;
constexpr double kCpuF32Flops = 75e9;
constexpr double kCpuBf16Flops = 300e9;
constexpr double kCpuMemory = 2e9;
constexpr double kCpuCopy = 4e9;
// Fixed cost of calling one TorchScript part (an embed, a block, a decoder chunk): the interpreter, allocations,
// thread hand-offs. It is what tiny's stages take; at CogVideoX widths it disappears in the compute.
constexpr double kCpuCallSeconds = 5e-3;
constexpr double kCudaCallSeconds = 0.5e-3;

// The share of the rate each class of work reaches (its MFU against the measured GEMM rate, before calibration).
// On CUDA: linear layers 0.70 (cuBLAS at transformer widths ~0.8, less the norms, modulations, RoPE and residuals
// around them, which move memory and are not counted as FLOPs); fused attention 0.40 (PyTorch's flash kernel is
// FlashAttention-2, about 35% of the H100's paper peak by the FlashAttention-3 paper); the QKᵀ and PV matmuls of
// materialised attention (inner dimension 64) 0.25, though their passes over the scores bound them first; 3D
// convolutions with the norms around them 0.15. The two first are chosen so that CogVideoX-5B's guided step at
// 49×480×720 lands just under the published ~1.8 s on an H100 (docs/PLANNER.md); a GPU run is to confirm them.
// On the simulated device: what LibTorch's CPU kernels reached on this machine. Its flash kernel computes its
// softmax in float32 whatever the dtype: at head_dim 64 it ran at 0.20 of the bf16 GEMMs' speed and 0.8–0.96 of
// the f32 ones' in the same runs, so at nearly the same FLOP/s in both dtypes.
struct Efficiency {
  double dense, attention, fused_attention, conv;
};
Efficiency EfficiencyOf(const std::string& kind, const std::string& compute_dtype) {
  if (kind == "cuda") return {0.70, 0.25, 0.40, 0.15};
  return {0.85, 0.4, compute_dtype == "f32" ? 0.75 : 0.17, 0.8};
}

// Bytes each score element of chunked math attention moves through memory: q·kᵀ written, cast to f32, scaled,
// softmax (two reads, one write), cast back, read by the PV matmul. The f32 casts are no-ops in f32.
int64_t ScoreTraffic(int64_t s) { return s == 4 ? 28 : 36; }

int64_t SizeOf(const std::string& dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "int8") return 1;
  throw InvalidArgument(fmt::format("dtype {}: accepted f32, bf16, f16 or int8", dtype));
}

// int8 storage: one byte per weight plus the f32 per-output-channel scales and the vectors (biases, norms) kept in
// the compute dtype; both are small against the matrices at CogVideoX widths (about 1% at tiny's).
int64_t Int8Bytes(int64_t params) { return params + params / 64; }

int64_t ConfigInt(const StageManifest& s, const char* key, int64_t fallback) {
  auto it = s.config.find(key);
  return it == s.config.end() ? fallback : static_cast<int64_t>(std::llround(it->second));
}

// ---------------------------------------------------------------------------------------------------------------
// Live device bytes as a stage's code allocates and frees them; the peak is what the stage needs on top of its
// weights. Each simulator below follows the TorchScript source of models/*_script.cc op by op.
class Tape {
 public:
  void Alloc(int64_t bytes) {
    live_ += bytes;
    peak_ = std::max(peak_, live_);
  }
  void Free(int64_t bytes) { live_ -= bytes; }
  void Temp(int64_t bytes) {
    Alloc(bytes);
    Free(bytes);
  }
  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }

 private:
  int64_t live_ = 0;
  int64_t peak_ = 0;
};

struct Impl {
  bool fused_attention;    // SDPA (no scores); else scores materialised (the denoiser's in chunks)
  bool f32_norms;          // Reel: x.float() before every norm, the result cast back
  bool diffusers_vae;      // diffusers' decoder: SpatialNorm at full size, k=1 cache copies, SiLU not in place
  bool cpu;                // the simulated device: host-side tables count as device bytes, LibTorch's CPU kernels
};

// A layer/group norm over n elements whose input is alive; leaves its output (n elements of s bytes) alive.
void Norm(Tape& t, int64_t n, int64_t s, const Impl& impl, bool contiguous = true) {
  if (!impl.f32_norms) {
    if (!contiguous) t.Alloc(n * s);
    t.Alloc(n * s);
    if (!contiguous) t.Free(n * s);
    return;
  }
  const bool cast = s != 4;
  if (cast) t.Alloc(n * 4);         // x.float()
  if (!contiguous) t.Alloc(n * 4);  // layer_norm makes its input contiguous
  t.Alloc(n * 4);                   // the f32 result
  if (!contiguous) t.Free(n * 4);
  if (cast) {
    t.Free(n * 4);
    t.Alloc(n * s);  // .to(dtype)
    t.Free(n * 4);
  }
}

// T5's RMSNorm: x.float(), pow(2), x * rsqrt(mean), cast back, times the weight.
void Rms(Tape& t, int64_t n, int64_t s) {
  const bool cast = s != 4;
  if (cast) t.Alloc(n * 4);
  t.Temp(n * 4);   // pow(2), reduced by mean
  t.Alloc(n * 4);  // xf * rsqrt
  if (cast) t.Free(n * 4);
  if (cast) {
    t.Alloc(n * s);
    t.Free(n * 4);
  }
  t.Alloc(n * s);  // * weight
  t.Free(n * (cast ? s : 4));
}

// Attention scores of n elements: q·kᵀ in the compute dtype, cast to f32, an elementwise op (T5's position bias,
// the transformer's 1/√d), softmax, cast back. Leaves the probabilities alive and returns their bytes.
int64_t Softmax(Tape& t, int64_t n, int64_t s) {
  t.Alloc(n * s);
  if (s != 4) {
    t.Alloc(n * 4);
    t.Free(n * s);
  }
  t.Alloc(n * 4);  // + bias or * scale
  t.Free(n * 4);
  t.Alloc(n * 4);  // softmax
  t.Free(n * 4);
  if (s != 4) {
    t.Alloc(n * s);
    t.Free(n * 4);
  }
  return n * s;
}

struct Work {
  double dense = 0, attention = 0, conv = 0;  // FLOPs
  double scores = 0;                          // score elements chunked math attention materialises
  double calls = 0;                           // TorchScript part calls
};

// What SDPA holds while it runs, beside q, k and v: its output, allocated as [B, L, heads, head_dim] (so the
// transpose + reshape after it is a view), and the float32 log-sum-exp of every query row, [B, heads, L], dropped
// when it returns. Flash and memory-efficient kernels on CUDA keep their tiles on chip (the memory-efficient
// kernel's padded copy of T5's 226-wide mask is left out: under 7 MB). LibTorch's CPU flash kernel gives each thread
// a tile of q_split × 512 scores in float32 (and in the compute dtype for bf16/f16), q_split 256, 64 or 32 by the
// query length, plus its row sums and output rows: under 1 MiB a thread, counted for this 2-core machine's two (as
// profiled with torch 2.11). Leaves the output alive.
constexpr int64_t kCpuThreads = 2;
void FusedAttention(Tape& t, int64_t out_bytes, int64_t lse_rows, int64_t L, int64_t hd, int64_t s, const Impl& impl) {
  t.Alloc(out_bytes);
  t.Alloc(lse_rows * 4);
  if (impl.cpu) {
    const int64_t q = std::min<int64_t>(L, L >= 768 ? 256 : L >= 192 ? 64 : 32), kv = std::min<int64_t>(L, 512);
    t.Temp(kCpuThreads * ((q * kv + 2 * q + q * hd) * 4 + (s != 4 ? q * kv * s : 0)));
  }
  t.Free(lse_rows * 4);
}

// ---------------------------------------------------------------------------------------------------------------
// Text encoder (T5): ids → embedding and relative-position bias → blocks → RMSNorm.
struct T5Dims {
  int64_t B, T, D, H, dkv, F, blocks;
};

int64_t TextEncoderActivations(const T5Dims& d, int64_t s, const Impl& impl, Work& w) {
  const int64_t inner = d.H * d.dkv;
  const int64_t btd = d.B * d.T * d.D, bti = d.B * d.T * inner, btf = d.B * d.T * d.F;
  const int64_t scores = d.B * d.H * d.T * d.T;
  Tape t;
  t.Alloc(d.B * d.T * 8);  // ids
  // Embed: hidden states, then the bias from [T, T] i64 bucket tensors.
  t.Alloc(btd * s);
  t.Temp(6 * d.T * d.T * 8);
  t.Alloc(d.H * d.T * d.T * 4);  // position bias [1, H, T, T] f32, shared by every block
  if (s != 4) t.Temp(d.H * d.T * d.T * s);
  // One block (every block peaks alike); x (the input) stays alive for the residuals.
  Rms(t, btd, s);
  for (int i = 0; i < 3; ++i) t.Alloc(bti * s);  // q, k, v
  t.Free(btd * s);                               // h
  if (impl.fused_attention) {
    // SDPA with scale 1 and the bias as an additive mask, cast to the activations' dtype in every block.
    const int64_t mask = s != 4 ? d.H * d.T * d.T * s : 0;
    t.Alloc(mask);
    FusedAttention(t, bti * s, d.B * d.H * d.T, d.T, d.dkv, s, impl);
    t.Free(mask);
    t.Free(3 * bti * s);
  } else {
    t.Temp(2 * bti * s);  // matmul's contiguous copies of the transposed heads
    const int64_t p = Softmax(t, scores, s);
    t.Alloc(bti * s);  // p·v
    t.Free(p);
    t.Free(3 * bti * s);
    t.Alloc(bti * s);  // transpose + reshape
    t.Free(bti * s);
  }
  t.Alloc(btd * s);  // o
  t.Free(bti * s);
  t.Alloc(btd * s);  // x + o
  t.Free(btd * s);
  Rms(t, btd, s);
  t.Alloc(btf * s);  // wi0
  t.Alloc(btf * s);  // gelu
  t.Free(btf * s);
  t.Alloc(btf * s);  // wi1
  t.Alloc(btf * s);  // gelu · wi1
  t.Free(2 * btf * s);
  t.Free(btd * s);   // h
  t.Alloc(btd * s);  // wo
  t.Alloc(btd * s);  // x + wo
  w.dense += static_cast<double>(d.blocks) * 2.0 * d.B * d.T * (4.0 * d.D * inner + 3.0 * d.D * d.F);
  w.attention += static_cast<double>(d.blocks) * 4.0 * d.B * d.T * d.T * inner;
  return t.peak();
}

// ---------------------------------------------------------------------------------------------------------------
// Denoiser (CogVideoXTransformer3DModel as embed + blocks + head), one step; the loop repeats it.
struct DitDims {
  int64_t B, f, C, h, w, T, Dt, D, H, hd, E, p, Cout, ff, blocks;
  bool rotary, learned;
};

// `inputs`: the loop's latents (and image latents) and the text embeddings, on the device before the stage begins.
int64_t DenoiserActivations(const DitDims& d, int64_t s, const Impl& impl, int64_t inputs, Work& w) {
  const int64_t N = d.f * (d.h / d.p) * (d.w / d.p), L = N + d.T;
  const int64_t V = d.B * N * d.D, X = d.B * d.T * d.D, Lz = d.B * L * d.D;
  const int64_t latent = d.B * d.f * d.C * d.h * d.w;
  Tape t;
  t.Alloc(inputs + latent * 4 + d.B * 8);  // + the guided batch and the timesteps
  // Embed.
  if (s != 4) t.Alloc(latent * s);
  t.Alloc(V * s);  // patch conv
  if (s != 4) t.Free(latent * s);
  t.Alloc(V * s);  // [B, f, D, hp, wp] → [B, N, D]
  t.Free(V * s);
  t.Alloc(X * s);  // text_proj
  const int64_t rope = d.rotary ? 2 * N * d.hd * 4 : 0;
  if (d.learned) {
    t.Alloc(V * s);
    t.Free(V * s);
  } else if (!d.rotary) {
    // 2B's 3D sin-cos table, computed in double: on the host on CUDA, counted on the simulated device.
    const int64_t nd = N * d.D;
    if (impl.cpu) {
      t.Temp((N / d.f) * (3 * d.D / 4) * 8 * 2);
      t.Alloc(nd * 8);
      t.Alloc(nd * 4);
      t.Free(nd * 8);
    } else {
      t.Alloc(nd * 4);
    }
    if (s != 4) {
      t.Alloc(nd * s);
      t.Free(nd * 4);
    }
    t.Alloc(V * s);  // x + pos
    t.Free(V * s + nd * (s != 4 ? s : 4));
  }
  if (d.rotary) {
    if (impl.cpu) t.Temp(2 * N * d.hd * 8);
    t.Alloc(rope);
  }
  // One block: the inputs (video, text) stay alive in the caller for its whole run.
  Norm(t, V, s, impl);
  t.Alloc(V * s);  // * (1 + scale)
  t.Free(V * s);
  t.Alloc(V * s);  // + shift
  t.Free(V * s);
  Norm(t, X, s, impl);
  t.Alloc(X * s);
  t.Free(X * s);
  t.Alloc(Lz * s);  // cat
  t.Free(V * s + X * s);
  for (int i = 0; i < 3; ++i) t.Alloc(Lz * s);  // q, k, v
  t.Free(Lz * s);
  for (int i = 0; i < 2; ++i) {  // per-head QK norms on the transposed [B, H, L, hd] views
    Norm(t, Lz, s, impl, /*contiguous=*/false);
    t.Free(Lz * s);
  }
  if (d.rotary) {
    const int64_t nv = d.B * N * d.D;
    for (int i = 0; i < 2; ++i) {
      if (s != 4) t.Alloc(nv * 4);  // x.float()
      t.Alloc(nv / 2 * 4);          // -x₁
      t.Alloc(nv * 4);              // stack
      t.Free(nv / 2 * 4);
      t.Alloc(nv * 4);  // x·cos
      t.Alloc(nv * 4);  // rot·sin
      t.Free(nv * 4);   // rot
      t.Alloc(nv * 4);  // sum
      t.Free(2 * nv * 4);
      if (s != 4) t.Free(nv * 4);
      if (s != 4) {
        t.Alloc(nv * s);
        t.Free(nv * 4);
      }
      t.Alloc(Lz * s);  // cat with the text rows
      t.Free(nv * (s != 4 ? s : 4) + Lz * s);
    }
  }
  if (impl.fused_attention) {
    FusedAttention(t, Lz * s, d.B * d.H * L, L, d.hd, s, impl);
    t.Free(3 * Lz * s);  // q, k, v
  } else {
    const int64_t rows = std::max<int64_t>(1, kAttentionChunkElements / (d.B * d.H * L));
    const int64_t S = d.B * d.H * std::min(rows, L) * L;
    t.Alloc(rows >= L ? 0 : Lz * s);  // the chunks' outputs gathered so far
    t.Free(Softmax(t, S, s));
    t.Alloc(Lz * s);  // torch.cat of the chunks (or the one output)
    t.Free(rows >= L ? 0 : Lz * s);
    t.Free(3 * Lz * s);  // q, k, v
    t.Alloc(Lz * s);     // transpose + reshape
    t.Free(Lz * s);
  }
  t.Alloc(Lz * s);  // out projection
  t.Free(Lz * s);
  t.Alloc(V * s + X * s);  // gate · a
  t.Alloc(V * s + X * s);  // residual
  t.Free(V * s + X * s);
  t.Free(Lz * s);
  Norm(t, V, s, impl);
  t.Alloc(V * s);
  t.Free(V * s);
  t.Alloc(V * s);
  t.Free(V * s);
  Norm(t, X, s, impl);
  t.Alloc(X * s);
  t.Free(X * s);
  t.Alloc(Lz * s);
  t.Free(V * s + X * s);
  t.Alloc(d.ff * Lz * s);  // ff1
  t.Free(Lz * s);
  t.Alloc(d.ff * Lz * s);  // gelu
  t.Free(d.ff * Lz * s);
  t.Alloc(Lz * s);  // ff2
  t.Free(d.ff * Lz * s);
  t.Alloc(V * s + X * s);
  t.Alloc(V * s + X * s);
  t.Free(2 * (V * s + X * s) + Lz * s);
  // Head: two norms, the projection, unpatchify and the f32 output.
  Norm(t, V, s, impl);
  Norm(t, V, s, impl);
  t.Free(V * s);
  t.Alloc(V * s);
  t.Free(V * s);
  t.Alloc(d.B * N * d.p * d.p * d.Cout * (s + s + 4));
  const double per_block = 2.0 * d.B * L * (4.0 + 2.0 * d.ff) * d.D * d.D + 2.0 * 2 * d.B * d.E * 6 * d.D;
  w.dense += d.blocks * per_block + 2.0 * d.B * N * d.C * d.p * d.p * d.D + 2.0 * d.B * d.T * d.Dt * d.D +
             2.0 * d.B * N * d.D * d.p * d.p * d.Cout;
  w.attention += d.blocks * 4.0 * d.B * L * L * d.D;
  if (!impl.fused_attention) w.scores += static_cast<double>(d.blocks) * d.B * d.H * L * L;
  return t.peak();
}

// ---------------------------------------------------------------------------------------------------------------
// The VAE: CogVideoX's causal 3D decoder (and encoder), chunk by chunk with the conv cache threaded through.
struct VaeArch {
  std::vector<int64_t> channels;  // block_out_channels
  int64_t layers = 3, lc = 16, temporal_levels = 2;
};

class VaeWalk {
 public:
  VaeWalk(Tape& t, const VaeArch& a, int64_t s, const Impl& impl, int64_t b) : t_(t), a_(a), s_(s), impl_(impl), b_(b) {}

  // One decode_chunk of `lt` latent frames at h×w latents; leaves the chunk's video (f32, or the compute dtype for
  // diffusers) alive and returns its bytes.
  int64_t DecodeChunk(int64_t lt, int64_t h, int64_t w) {
    zt_ = lt;
    zh_ = h;
    zw_ = w;
    const int64_t zq = b_ * a_.lc * lt * h * w * s_;
    if (s_ != 4) t_.Alloc(zq);
    std::vector<int64_t> ch(a_.channels.rbegin(), a_.channels.rend());
    Dims d{lt, h, w};
    CConv("conv_in", a_.lc, ch[0], d);
    int64_t x = Bytes(ch[0], d);
    for (int j = 0; j < 2; ++j) x = Res("mid" + std::to_string(j), ch[0], ch[0], d, x, true);
    int64_t in = ch[0];
    for (size_t i = 0; i < ch.size(); ++i) {
      for (int64_t j = 0; j <= a_.layers; ++j)
        x = Res(fmt::format("up{}.{}", i, j), j == 0 ? in : ch[i], ch[i], d, x, true);
      if (i + 1 != ch.size()) x = Upsample(ch[i], d, static_cast<int64_t>(i) < a_.temporal_levels, x);
      in = ch[i];
    }
    const int64_t n = SpatialNorm(in, d, "norm_out");
    t_.Free(x);
    const int64_t act = Silu(n);
    CConv("conv_out", in, 3, d);
    t_.Free(n + act);
    int64_t out = Bytes(3, d);
    if (!impl_.diffusers_vae && s_ != 4) {
      t_.Alloc(out / s_ * 4);  // .float()
      t_.Free(out);
      out = out / s_ * 4;
    }
    if (s_ != 4) t_.Free(zq);
    frames_ += d.T;
    return out;
  }

  // The encoder on one clip chunk of `frames` pixel frames at H×W; leaves the f32 moments alive.
  int64_t EncodeChunk(int64_t frames, int64_t H, int64_t W) {
    Dims d{frames, H, W};
    const int64_t px = b_ * 3 * frames * H * W;
    if (s_ != 4) t_.Alloc(px * s_);
    const auto& ch = a_.channels;
    CConv("conv_in", 3, ch[0], d);
    if (s_ != 4) t_.Free(px * s_);
    int64_t x = Bytes(ch[0], d);
    int64_t in = ch[0];
    for (size_t i = 0; i < ch.size(); ++i) {
      for (int64_t j = 0; j < a_.layers; ++j) x = Res(fmt::format("down{}.{}", i, j), j == 0 ? in : ch[i], ch[i], d, x, false);
      if (i + 1 != ch.size()) x = Downsample(ch[i], d, static_cast<int64_t>(i) < a_.temporal_levels, x);
      in = ch[i];
    }
    for (int j = 0; j < 2; ++j) x = Res("mid" + std::to_string(j), in, in, d, x, false);
    Norm(t_, Bytes(in, d) / s_, s_, impl_);
    t_.Free(x);
    CConv("conv_out", in, 2 * a_.lc, d);
    t_.Free(Bytes(in, d));
    const int64_t out = Bytes(2 * a_.lc, d);
    if (s_ != 4) {
      t_.Alloc(out / s_ * 4);
      t_.Free(out);
    }
    return out / s_ * 4;
  }

  // A new chunk sequence (a tile, a batch element) starts with a fresh cache.
  void DropCache() {
    for (const auto& [k, v] : cache_) t_.Free(v);
    cache_.clear();
    for (int64_t v : stale_) t_.Free(v);
    stale_.clear();
  }
  // diffusers keeps the previous chunk's cache dict alive until the next chunk's is complete.
  void EndChunk() {
    for (int64_t v : stale_) t_.Free(v);
    stale_.clear();
  }
  double flops() const { return flops_; }
  int64_t frames() const { return frames_; }

 private:
  struct Dims {
    int64_t T, H, W;
  };
  int64_t Bytes(int64_t c, const Dims& d) const { return b_ * c * d.T * d.H * d.W * s_; }

  void Cache(const std::string& key, int64_t bytes) {
    t_.Alloc(bytes);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      if (impl_.diffusers_vae)
        stale_.push_back(it->second);
      else
        t_.Free(it->second);
    }
    cache_[key] = bytes;
  }

  // A convolution's work and transient memory, with its input and output alive. LibTorch 1.13's CPU kernels
  // (ConvParams::use_mkldnn): f32 inputs whose N·C·T·H is at most 20480 take the slow 3D path, which unfolds the
  // input into a column buffer of Cin·k³ × the output's positions; larger f32 ones and every bf16 one take oneDNN,
  // which in bf16 reorders the input (and the weights) into its blocked layout first, about three times the input
  // for 1×1×1 kernels. (Measured per convolution on this machine's AVX-512 BF16 CPU; f32 oneDNN reorders too in
  // isolation, but inside the decoder the peaks come out right without it.)
  void Conv(int64_t cin, int64_t cout, int64_t kvol, int64_t in_t, int64_t in_h, int64_t in_positions,
            int64_t out_positions) {
    flops_ += 2.0 * cin * cout * kvol * b_ * out_positions;
    if (!impl_.cpu) return;
    if (s_ == 4 && kvol > 1 && b_ * cin * in_t * in_h <= 20480) t_.Temp(b_ * cin * kvol * out_positions * 4);
    if (s_ != 4) t_.Temp((kvol > 1 ? 1 : 3) * b_ * cin * in_positions * s_ + cin * cout * kvol * s_);
  }

  // CogVideoXCausalConv3d (k = 3): the input padded in time by the cache, the new cache, the convolution.
  // diffusers 0.30 (the release the published figures were measured with) also pads H and W with F.pad, a copy.
  void CConv(const std::string& key, int64_t cin, int64_t cout, const Dims& d) {
    int64_t xp = b_ * cin * (d.T + 2) * d.H * d.W * s_;
    t_.Alloc(xp);
    Cache(key, b_ * cin * 2 * d.H * d.W * s_);
    if (impl_.diffusers_vae) {
      const int64_t padded = b_ * cin * (d.T + 2) * (d.H + 2) * (d.W + 2) * s_;
      t_.Alloc(padded);
      t_.Free(xp);
      xp = padded;
    }
    t_.Alloc(Bytes(cout, d));
    Conv(cin, cout, 27, d.T + 2, d.H, (d.T + 2) * d.H * d.W, d.T * d.H * d.W);
    t_.Free(xp);
  }

  // SiLU before a convolution: silu_ in place in Reel; diffusers' nn.SiLU makes a copy that lives, with the norm's
  // output it was made from, until the convolution has run. Returns the bytes to free after it.
  int64_t Silu(int64_t bytes) {
    if (!impl_.diffusers_vae) return 0;
    t_.Alloc(bytes);
    return bytes;
  }

  // The decoder's SpatialNorm3D over c channels, conditioned on the latent chunk; leaves its output alive.
  int64_t SpatialNorm(int64_t c, const Dims& d, const std::string& key) {
    const int64_t n = Bytes(c, d);
    const int64_t zsmall = b_ * c * zt_ * zh_ * zw_ * s_;
    const bool contiguous = contiguous_;
    contiguous_ = true;
    if (!impl_.diffusers_vae) {
      Norm(t_, n / s_, s_, impl_, contiguous);
      t_.Temp(2 * zsmall);  // conv_y, conv_b on the latent chunk, broadcast in place
      flops_ += 2.0 * 2 * a_.lc * c * b_ * zt_ * zh_ * zw_;
      return n;
    }
    const int64_t zq = Bytes(a_.lc, d);
    t_.Alloc(zq);  // zq resized to f
    Norm(t_, n / s_, s_, impl_, contiguous);
    t_.Alloc(n);  // conv_y
    Cache(key + ".y", zq);
    t_.Alloc(n);  // conv_b
    Cache(key + ".b", zq);
    t_.Alloc(n);  // norm · y
    t_.Free(2 * n);
    t_.Alloc(n);  // + b
    t_.Free(2 * n);
    t_.Free(zq);
    flops_ += 2.0 * 2 * a_.lc * c * b_ * d.T * d.H * d.W;
    return n;
  }

  // One CogVideoXResnetBlock3D; `x` (bytes) is its input, freed when it returns. Returns its output's bytes.
  int64_t Res(const std::string& key, int64_t cin, int64_t cout, const Dims& d, int64_t x, bool spatial) {
    int64_t n = spatial ? SpatialNorm(cin, d, key + ".norm1") : (Norm(t_, x / s_, s_, impl_), x);
    int64_t act = Silu(n);
    CConv(key + ".conv1", cin, cout, d);
    t_.Free(n + act);
    n = spatial ? SpatialNorm(cout, d, key + ".norm2") : (Norm(t_, Bytes(cout, d) / s_, s_, impl_), Bytes(cout, d));
    t_.Free(Bytes(cout, d));
    act = Silu(n);
    CConv(key + ".conv2", cout, cout, d);
    t_.Free(n + act);
    if (cin != cout) {
      t_.Alloc(Bytes(cout, d));  // shortcut, added in place
      Conv(cin, cout, 1, d.T, d.H, d.T * d.H * d.W, d.T * d.H * d.W);
      t_.Free(Bytes(cout, d));
    }
    if (impl_.diffusers_vae) t_.Temp(Bytes(cout, d));  // h + x, not in place
    t_.Free(x);
    return Bytes(cout, d);
  }

  int64_t Upsample(int64_t c, Dims& d, bool compress, int64_t x) {
    Dims o = d;
    if (compress && d.T > 1) o.T = d.T % 2 == 1 ? 2 * d.T - 1 : 2 * d.T;
    o.H *= 2;
    o.W *= 2;
    const int64_t out = Bytes(c, o);
    t_.Alloc(out);  // the nearest ×2 copy
    // diffusers permutes it to frames-as-batch for its Conv2d (a copy alive through the convolution) and returns the
    // output permuted back, so the next GroupNorm copies it contiguous.
    if (impl_.diffusers_vae) t_.Alloc(out);
    t_.Alloc(out);
    Conv(c, c, 9, o.T, o.H, o.T * o.H * o.W, o.T * o.H * o.W);
    t_.Free(impl_.diffusers_vae ? 2 * out : out);
    t_.Free(x);
    contiguous_ = !impl_.diffusers_vae;
    d = o;
    return out;
  }

  int64_t Downsample(int64_t c, Dims& d, bool compress, int64_t x) {
    Dims o = d;
    if (compress) o.T = d.T % 2 + d.T / 2;
    const int64_t padded = b_ * c * o.T * (d.H + 1) * (d.W + 1) * s_;
    t_.Alloc(padded);
    const int64_t in_positions = o.T * (d.H + 1) * (d.W + 1);
    o.H = d.H / 2;
    o.W = d.W / 2;
    t_.Alloc(Bytes(c, o));
    Conv(c, c, 9, o.T, d.H + 1, in_positions, o.T * o.H * o.W);
    t_.Free(padded);
    t_.Free(x);
    d = o;
    return Bytes(c, o);
  }

  Tape& t_;
  const VaeArch& a_;
  int64_t s_;
  const Impl& impl_;
  int64_t b_;
  int64_t zt_ = 1, zh_ = 1, zw_ = 1;
  bool contiguous_ = true;  // whether the next resnet's input is contiguous
  std::map<std::string, int64_t> cache_;
  std::vector<int64_t> stale_;
  double flops_ = 0;
  int64_t frames_ = 0;
};

// diffusers' latent frame batches: 2 per chunk, the first taking the remainder (13 → 3, 2, 2, 2, 2, 2).
std::vector<int64_t> FrameChunks(int64_t f) {
  std::vector<int64_t> out;
  const int64_t rem = f % 2, n = std::max<int64_t>(f / 2, 1);
  for (int64_t i = 0; i < n; ++i) out.push_back(std::min<int64_t>(2 * (i + 1) + rem, f) - (i == 0 ? 0 : 2 * i + rem));
  return out;
}

struct VaeCost {
  int64_t peak = 0;
  double flops = 0;
  double calls = 0;  // decode_chunk calls
};

// The decoder at batch 1 (Reel decodes one video per job) with the choice's slicing and tiling.
VaeCost DecoderActivations(const VaeArch& a, int64_t f, int64_t h, int64_t w, int64_t s, bool slicing, int tile,
                           int tile_w, const Impl& impl) {
  Tape t;
  VaeCost c;
  t.Alloc(a.lc * f * h * w * 4);  // the latents
  const int64_t video_px = 3 * ((f - 1) * 4 + 1) * h * 8 * w * 8;
  // Reel's tiles are T×T or H×W pixels; diffusers' enable_tiling ignores T and takes half the sample size, 30×45
  // latents.
  const int64_t lth = impl.diffusers_vae ? 30 : tile / 8, ltw = impl.diffusers_vae ? 45 : (tile_w > 0 ? tile_w : tile) / 8;
  const bool tiled = tile > 0 && (h > lth || w > ltw);
  if (tiled) {
    // Only the largest tile matters for the peak; the FLOPs count every tile (overlaps decode twice).
    const int64_t sh = std::max<int64_t>(1, static_cast<int64_t>(lth * (1.0 - 1.0 / 6))),
                  sw = std::max<int64_t>(1, static_cast<int64_t>(ltw * (1.0 - 1.0 / 5)));
    const int64_t th = std::min(lth, h), tw = std::min(ltw, w);
    VaeWalk walk(t, a, s, impl, 1);
    int64_t held = 0;
    if (impl.diffusers_vae) {
      // Every decoded tile stays on the device until the blend: about (tile/stride)² videos' worth.
      const double overlap = (static_cast<double>(th) / std::min(sh, th)) * (static_cast<double>(tw) / std::min(sw, tw));
      held = static_cast<int64_t>(video_px * s * std::min(overlap, 4.0));
      t.Alloc(held);
    }
    for (int64_t n : FrameChunks(f)) {
      const int64_t out = walk.DecodeChunk(n, th, tw);
      t.Free(out);  // copied to the host (Reel) or counted in `held` (diffusers)
      walk.EndChunk();
    }
    walk.DropCache();
    if (impl.diffusers_vae) t.Alloc(video_px * s);  // the blended result
    const double tiles = std::ceil(static_cast<double>(h) / sh) * std::ceil(static_cast<double>(w) / sw);
    c.flops = walk.flops() * tiles;
    c.calls = tiles * FrameChunks(f).size();
    c.peak = t.peak();
    return c;
  }
  VaeWalk walk(t, a, s, impl, 1);
  int64_t kept = 0;
  for (int64_t n : FrameChunks(f)) {
    const int64_t out = walk.DecodeChunk(n, h, w);
    if (slicing && !impl.diffusers_vae) {
      t.Free(out);  // each chunk's frames leave the device as they are produced
    } else {
      kept += out;  // forward gathers the chunks and concatenates them
    }
    walk.EndChunk();
  }
  t.Alloc(kept);  // torch.cat
  c.flops = walk.flops();
  c.calls = FrameChunks(f).size();
  c.peak = t.peak();
  return c;
}

VaeCost EncoderActivations(const VaeArch& a, int64_t H, int64_t W, int64_t s, const Impl& impl) {
  Tape t;
  t.Alloc(3 * H * W * 4);  // the image, one frame
  VaeWalk walk(t, a, s, impl, 1);
  walk.EncodeChunk(1, H, W);
  return {t.peak(), walk.flops(), 1};
}

VaeArch ArchOf(const StageManifest& s) {
  VaeArch a;
  for (int i = 0;; ++i) {
    auto it = s.config.find(fmt::format("block_out_channels_{}", i));
    if (it == s.config.end()) break;
    a.channels.push_back(static_cast<int64_t>(std::llround(it->second)));
  }
  if (a.channels.empty()) a.channels = {128, 256, 256, 512};
  a.layers = ConfigInt(s, "layers_per_block", 3);
  a.lc = ConfigInt(s, "latent_channels", 16);
  return a;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string Percent(double x) { return fmt::format("{:.0f}%", 100.0 * x); }

// A profile's peak counts everything on the device. With what was there when the stage began taken off
// (base_device_bytes: other stages' weights and the job's tensors), the stage's own inputs are put back.
int64_t OwnPeak(const StageProfile& p, int64_t input_bytes) {
  return p.base_device_bytes > 0 ? p.peak_device_bytes - p.base_device_bytes + input_bytes : p.peak_device_bytes;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

Attention AttentionOf(const Manifest& manifest, StageKind stage) {
  const auto fused = [&](StageKind k) -> std::optional<bool> {
    if (!manifest.has_stage(k)) return std::nullopt;
    const auto& config = manifest.stage(k).config;
    const auto it = config.find("fused_attention");
    if (it == config.end()) return std::nullopt;
    return it->second != 0;
  };
  switch (stage) {
    case StageKind::kDenoiser:
      return fused(stage).value_or(false) ? Attention::kFused : Attention::kMaterialised;
    case StageKind::kTextEncoder:
      if (const auto own = fused(stage)) return *own ? Attention::kFused : Attention::kMaterialised;
      return fused(StageKind::kDenoiser).has_value() ? Attention::kFused : Attention::kMaterialised;
    default:
      return Attention::kFused;
  }
}

DeviceRates DefaultRates(const std::string& device_kind, const std::string& compute_dtype) {
  if (device_kind == "cuda")
    return {compute_dtype == "f32" ? kCudaF32Flops : kCudaBf16Flops, kCudaMemory, kCudaCopy};
  return {compute_dtype == "f32" ? kCpuF32Flops : kCpuBf16Flops, kCpuMemory, kCpuCopy};
}

DeviceRates RatesOf(const Device& device, const std::string& compute_dtype) {
  DeviceRates r = DefaultRates(device.kind, compute_dtype);
  if (device.flops > 0) {
    // A faster device of the kind is taken to have proportionally more memory bandwidth too.
    const double scale = device.flops / DefaultRates(device.kind, "bf16").flops;
    r.flops *= scale;
    r.memory_bytes_per_second *= scale;
  }
  if (device.copy_bytes_per_second > 0) r.copy_bytes_per_second = device.copy_bytes_per_second;
  return r;
}

struct CostModel::Choice {
  std::string offload = "none";  // none | model | block | sequential
  int blocks = 0;                // K of block:K
  bool slicing = false;
  int tile = 0;
  int tile_w = 0;       // a tile's width where it is not square (tiling=HxW)
  std::string dtype;    // weight format
  std::string compute;  // compute dtype
  std::string strategy;  // canonical spelling, as the runtime records it
};

CostModel::CostModel(Manifest manifest, std::vector<StageProfile> profiles, CostModelOptions options)
    : manifest_(std::move(manifest)), options_(std::move(options)) {
  for (const auto& [kind, s] : manifest_.stages) digests_[kind] = StageDigest(manifest_, s);
  for (auto& p : profiles) {
    const auto kind = ParseStageKind(p.stage);
    if (kind && digests_.count(*kind) && digests_.at(*kind) == p.stage_digest) profiles_.push_back(std::move(p));
  }
  if (options_.calibrate) Calibrate();
}

CostModel::Choice CostModel::Parse(StageKind stage, const std::string& strategy, const std::string& dtype,
                                   const std::string& kind) const {
  const StageManifest& sm = manifest_.stage(stage);
  const int n = sm.num_blocks();
  Choice c;
  size_t start = 0;
  for (int i = 0; start <= strategy.size(); ++i) {
    const size_t end = std::min(strategy.find('+', start), strategy.size());
    const std::string item = strategy.substr(start, end - start);
    start = end + 1;
    if (i == 0) {
      if (item == "none" || item == "model" || item == "sequential") {
        c.offload = item;
      } else if (item.rfind("block:", 0) == 0 && item.size() > 6 &&
                 item.find_first_not_of("0123456789", 6) == std::string::npos && item.size() < 12) {
        c.offload = "block";
        c.blocks = std::stoi(item.substr(6));
      } else {
        throw InvalidArgument(
            fmt::format("strategy {}: accepted none, model, block:K or sequential, with +slicing and +tiling=T for "
                        "the decoder",
                        strategy));
      }
      continue;
    }
    const bool decoder = stage == StageKind::kVaeDecoder;
    if (decoder && item == "slicing") {
      c.slicing = true;
    } else if (decoder && item.rfind("tiling=", 0) == 0 && ParseTile(item.substr(7), c.tile, c.tile_w)) {
    } else {
      throw InvalidArgument(fmt::format("strategy {}: '{}' is not {}", strategy, item,
                                        decoder ? "slicing or tiling=T" : "accepted for this stage (only the decoder "
                                                                          "takes +slicing and +tiling=T)"));
    }
  }
  // As the runtime's executor does: no blocks (or K covering them all) is model offload.
  if ((c.offload == "block" || c.offload == "sequential") && n == 0) c.offload = "model";
  if (c.offload == "block" && (c.blocks < 1 || c.blocks >= n)) {
    if (c.blocks < 1) throw InvalidArgument(fmt::format("strategy {}: accepted block:K with K ≥ 1", strategy));
    c.offload = "model";
  }
  c.strategy = c.offload == "block" ? fmt::format("block:{}", c.blocks) : c.offload;
  if (c.slicing) c.strategy += "+slicing";
  if (c.tile > 0) c.strategy += fmt::format("+tiling={}", c.tile);
  if (c.tile > 0 && c.tile_w > 0 && c.tile_w != c.tile) c.strategy += fmt::format("x{}", c.tile_w);
  SizeOf(dtype);  // validates
  c.dtype = dtype;
  c.compute = dtype != "int8" ? dtype : kind == "cuda" ? "bf16" : DTypeName(sm.dtype);
  return c;
}

Estimate CostModel::Raw(StageKind stage, const Choice& c, const DeviceRates& rates, const std::string& kind,
                        const Job& job) const {
  const StageManifest& sm = manifest_.stage(stage);
  const int64_t s = SizeOf(c.compute);
  const bool diffusers = options_.implementation == Implementation::kDiffusers;
  // diffusers' transformer calls SDPA; transformers' T5 computes its scores as Reel's older packages do.
  const Attention attention = diffusers && stage == StageKind::kDenoiser ? Attention::kFused
                              : diffusers && stage == StageKind::kTextEncoder ? Attention::kMaterialised
                                                                              : AttentionOf(manifest_, stage);
  const Impl impl{attention == Attention::kFused, !diffusers, diffusers, kind == "cpu"};
  Estimate e;
  e.attention = attention;

  // Weights: on the device in the compute dtype (int8 codes are expanded there), on the host as stored.
  int64_t total = 0, edges = 0, block = 0, nblocks = 0;
  for (const auto& p : sm.parts) {
    total += p.params;
    if (p.role == "block") {
      block = std::max(block, p.params);
      ++nblocks;
    } else {
      edges += p.params;
    }
  }
  const auto stored = [&](int64_t params) { return c.dtype == "int8" ? Int8Bytes(params) : params * SizeOf(c.dtype); };
  if (c.offload == "none" || c.offload == "model") e.weight_peak_bytes = total * s;
  if (c.offload == "block") e.weight_peak_bytes = (edges + (c.blocks + 1) * block) * s;
  if (c.offload == "sequential") e.weight_peak_bytes = (edges + block) * s;
  e.resident_bytes = c.offload == "none" ? total * s : 0;
  e.host_bytes = stored(total);
  e.pinned_bytes = kind == "cuda" && c.offload != "none" ? e.host_bytes : 0;

  // Activations and work.
  const int64_t B = job.batch();
  const auto& v = manifest_.vae;
  const int64_t f = (job.frames - 1) / v.temporal_compression + 1;
  const int64_t h = job.height / v.spatial_compression, w = job.width / v.spatial_compression;
  const int64_t T = manifest_.tokenizer.max_length;
  Work work;
  const int runs = stage == StageKind::kDenoiser ? job.steps : 1;
  switch (stage) {
    case StageKind::kTextEncoder: {
      const T5Dims d{B, T, ConfigInt(sm, "d_model", 4096), ConfigInt(sm, "num_heads", 64), ConfigInt(sm, "d_kv", 64),
                     ConfigInt(sm, "d_ff", 10240), nblocks};
      e.input_bytes = B * T * 8;
      e.activation_bytes = TextEncoderActivations(d, s, impl, work);
      work.calls = nblocks + 2;
      break;
    }
    case StageKind::kDenoiser: {
      const int64_t D = ConfigInt(sm, "inner_dim", 3072);
      const DitDims d{B,
                      f,
                      ConfigInt(sm, "in_channels", 16),
                      h,
                      w,
                      T,
                      ConfigInt(sm, "text_embed_dim", 4096),
                      D,
                      ConfigInt(sm, "num_heads", 48),
                      ConfigInt(sm, "head_dim", 64),
                      ConfigInt(sm, "time_embed_dim", 512),
                      ConfigInt(sm, "patch_size", 2),
                      ConfigInt(sm, "out_channels", 16),
                      ConfigInt(sm, "ff_mult", 4),
                      nblocks,
                      ConfigInt(sm, "rotary", 1) != 0,
                      // A learned table (5B-I2V) is added as it is; the model only accepts its sample size.
                      ConfigInt(sm, "learned_positions", 0) != 0};
      const int64_t lc = v.latent_channels;
      e.input_bytes = (manifest_.image_conditioned ? 2 : 1) * f * lc * h * w * 4 +
                      B * T * d.Dt * DTypeBytes(sm.inputs.size() > 1 ? sm.inputs[1].dtype : sm.dtype);
      e.activation_bytes = DenoiserActivations(d, s, impl, e.input_bytes, work);
      work.dense *= job.steps;
      work.attention *= job.steps;
      work.scores *= job.steps;
      work.calls = static_cast<double>(job.steps) * (nblocks + 2);
      break;
    }
    case StageKind::kVaeDecoder: {
      const VaeCost vc = DecoderActivations(ArchOf(sm), f, h, w, s, c.slicing, c.tile, c.tile_w, impl);
      e.input_bytes = ArchOf(sm).lc * f * h * w * 4;
      e.activation_bytes = vc.peak;
      work.conv = vc.flops;
      work.calls = vc.calls;
      const int64_t video = 3 * int64_t{job.frames} * job.height * job.width * 4;
      if (c.tile > 0 && (h > c.tile / 8 || w > (c.tile_w > 0 ? c.tile_w : c.tile) / 8))
        e.run_host_bytes = video + 2 * video / job.height * std::min<int64_t>(c.tile, job.height);
      else
        e.run_host_bytes = c.slicing ? 2 * video : video;
      break;
    }
    case StageKind::kVaeEncoder: {
      const VaeCost vc = EncoderActivations(ArchOf(sm), job.height, job.width, s, impl);
      e.input_bytes = 3 * int64_t{job.height} * job.width * 4;
      e.activation_bytes = vc.peak;
      work.conv = vc.flops;
      work.calls = vc.calls;
      break;
    }
  }
  e.dense_flops = work.dense + work.conv;
  e.attention_flops = work.attention;
  const Efficiency eff = EfficiencyOf(kind, c.compute);
  // Fused attention runs at its kernels' share of the rate; materialised attention is bound by whichever is slower,
  // its matmuls or the passes over its scores.
  const double attention_seconds =
      impl.fused_attention ? work.attention / (rates.flops * eff.fused_attention)
                           : std::max(work.attention / (rates.flops * eff.attention),
                                      work.scores * ScoreTraffic(s) / rates.memory_bytes_per_second);
  e.compute_seconds = work.dense / (rates.flops * eff.dense) + work.conv / (rates.flops * eff.conv) +
                      attention_seconds + work.calls * (kind == "cuda" ? kCudaCallSeconds : kCpuCallSeconds);

  // Copies per job: model copies everything once; block:K and sequential copy every block on every run. block:K
  // places K − 1 blocks synchronously when a run starts (the first was prefetched) and copies each of the others
  // behind the previous block's compute, so only what a copy takes beyond that compute is added; sequential copies
  // in line.
  const double bw = rates.copy_bytes_per_second;
  const int64_t block_copy = stored(block), edge_copy = stored(edges);
  if (c.offload == "model") {
    e.copy_bytes = stored(total);
    e.copy_seconds = e.copy_bytes / bw;
  } else if (c.offload == "block" || c.offload == "sequential") {
    e.copy_bytes = edge_copy + static_cast<int64_t>(runs) * nblocks * block_copy;
    const double x = block_copy / bw;
    const double per_block = nblocks > 0 ? e.compute_seconds / runs / nblocks : 0;  // the blocks dominate
    const double extra = c.offload == "sequential"
                             ? nblocks * x
                             : (c.blocks - 1) * x + (nblocks - c.blocks + 1) * std::max(0.0, x - per_block);
    e.copy_seconds = edge_copy / bw + runs * extra;
  }
  return e;
}

const Calibration* CostModel::CalibrationOf(StageKind stage, const std::string& kind) const {
  for (const auto& c : calibrations_)
    if (c.stage == stage && c.device_kind == kind) return &c;
  return nullptr;
}

Estimate CostModel::Estimated(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
                              const std::string& dtype, bool calibrated) const {
  const Choice c = Parse(stage, strategy, dtype, device.kind);
  Estimate e = Raw(stage, c, RatesOf(device, c.compute), device.kind, job);
  if (const Calibration* cal = calibrated ? CalibrationOf(stage, device.kind) : nullptr) {
    e.activation_bytes = static_cast<int64_t>(std::llround(e.activation_bytes * cal->activation_scale));
    e.compute_seconds *= cal->seconds_scale;
    e.copy_seconds *= cal->seconds_scale;
  }
  return e;
}

void CostModel::Calibrate() {
  struct Point {
    double weights, activation, measured_peak;
    double seconds, measured_seconds;
  };
  std::map<std::pair<StageKind, std::string>, std::vector<Point>> points;
  for (const auto& p : profiles_) {
    if (p.outcome != "ok" || p.peak_device_bytes <= 0) continue;
    const StageKind stage = *ParseStageKind(p.stage);
    Job job{p.frames, p.height, p.width, std::max(1, p.steps), p.batch > 1 ? 6.0 : 1.0};
    try {
      const Choice c = Parse(stage, p.strategy, p.dtype, p.device_kind);
      const Estimate e = Raw(stage, c, DefaultRates(p.device_kind, c.compute), p.device_kind, job);
      points[{stage, p.device_kind}].push_back(Point{static_cast<double>(e.weight_peak_bytes),
                                                     static_cast<double>(e.activation_bytes),
                                                     static_cast<double>(OwnPeak(p, e.input_bytes)), e.seconds(),
                                                     p.wall_seconds});
    } catch (const Error&) {
      // A profile of a choice this model does not price (a strategy spelled otherwise): not evidence.
    }
  }
  // Least squares on the relative peak error for the activation scale; the mean log ratio for seconds.
  const auto fit = [](const std::vector<Point>& pts, size_t skip) {
    double num = 0, den = 0, logs = 0;
    int n = 0, nt = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      if (i == skip) continue;
      const Point& q = pts[i];
      num += q.activation * (q.measured_peak - q.weights) / (q.measured_peak * q.measured_peak);
      den += q.activation * q.activation / (q.measured_peak * q.measured_peak);
      ++n;
      if (q.seconds > 0 && q.measured_seconds > 0) {
        logs += std::log(q.measured_seconds / q.seconds);
        ++nt;
      }
    }
    const double a = n > 0 && den > 0 ? std::clamp(num / den, 0.25, 4.0) : 1.0;
    const double t = nt > 0 ? std::exp(logs / nt) : 1.0;
    return std::pair<double, double>(a, t);
  };
  for (const auto& [key, pts] : points) {
    Calibration cal;
    cal.stage = key.first;
    cal.device_kind = key.second;
    cal.profiles = static_cast<int>(pts.size());
    std::tie(cal.activation_scale, cal.seconds_scale) = fit(pts, pts.size());
    std::vector<double> pb, pa, sb, sa;
    for (size_t i = 0; i < pts.size(); ++i) {
      const Point& q = pts[i];
      const auto [a, t] = pts.size() > 1 ? fit(pts, i) : std::pair<double, double>(cal.activation_scale, cal.seconds_scale);
      pb.push_back(std::abs(q.weights + q.activation - q.measured_peak) / q.measured_peak);
      pa.push_back(std::abs(q.weights + a * q.activation - q.measured_peak) / q.measured_peak);
      if (q.measured_seconds > 0) {
        sb.push_back(std::abs(q.seconds - q.measured_seconds) / q.measured_seconds);
        sa.push_back(std::abs(t * q.seconds - q.measured_seconds) / q.measured_seconds);
      }
    }
    cal.peak_error_before = Median(pb);
    cal.peak_error_after = Median(pa);
    cal.seconds_error_before = Median(sb);
    cal.seconds_error_after = Median(sa);
    calibrations_.push_back(cal);
  }
}

Option CostModel::Price(StageKind stage, const Device& device, const Job& job, const std::string& strategy,
                        const std::string& dtype) const {
  const Choice c = Parse(stage, strategy, dtype, device.kind);
  const Estimate e = Estimated(stage, device, job, c.strategy, dtype);
  Option o;
  o.strategy = c.strategy;
  o.dtype = c.dtype;
  o.compute_dtype = c.compute;
  o.resident_device_bytes = e.resident_bytes;
  o.peak_device_bytes = e.peak_bytes();
  o.host_bytes = e.host_bytes;
  o.pinned_bytes = e.pinned_bytes;
  o.run_host_bytes = e.run_host_bytes;
  o.seconds = e.seconds();

  // Profiles of this very choice: same stage weights, device kind, strategy, weight format and shape.
  std::vector<double> peaks, seconds;
  int64_t failed_at = 0;
  int failures = 0;
  for (const auto& p : profiles_) {
    if (p.stage != StageKindName(stage) || p.device_kind != device.kind || p.dtype != c.dtype ||
        p.frames != job.frames || p.height != job.height || p.width != job.width || p.batch != job.batch())
      continue;
    try {
      if (Parse(stage, p.strategy, p.dtype, p.device_kind).strategy != c.strategy) continue;
    } catch (const Error&) {
      continue;
    }
    if (p.outcome == "ok") {
      peaks.push_back(static_cast<double>(OwnPeak(p, e.input_bytes)));
      // The denoiser's time is per step: a profile of other steps scales.
      const double scale = stage == StageKind::kDenoiser && p.steps > 0 ? static_cast<double>(job.steps) / p.steps : 1.0;
      seconds.push_back(p.wall_seconds * scale);
    } else if (p.outcome == "oom") {
      ++failures;
      // What failed needed more than the capacity left after what was already there.
      const int64_t limit = p.device_capacity_bytes > 0 ? p.device_capacity_bytes : p.peak_device_bytes;
      failed_at = std::max(failed_at, limit - p.base_device_bytes + e.input_bytes + 1);
    }
  }
  if (!peaks.empty()) {
    o.measured = true;
    o.peak_device_bytes = static_cast<int64_t>(*std::max_element(peaks.begin(), peaks.end()));
    o.seconds = Median(seconds);
    o.basis = fmt::format("measured ({} run{})", peaks.size(), peaks.size() == 1 ? "" : "s");
    return o;
  }
  const Calibration* cal = CalibrationOf(stage, device.kind);
  o.basis = cal ? fmt::format("estimate (median error {} peak, {} time on {} profile{})", Percent(cal->peak_error_after),
                              Percent(cal->seconds_error_after), cal->profiles, cal->profiles == 1 ? "" : "s")
                : fmt::format("estimate (uncalibrated: no profiles of {} on {})", StageKindName(stage), device.kind);
  if (failures > 0 && failed_at > o.peak_device_bytes) {
    o.peak_device_bytes = failed_at;
    o.basis += fmt::format("; raised to what ran out of memory ({} run{})", failures, failures == 1 ? "" : "s");
    return o;
  }
  // Another choice of this stage ran out of memory on this device kind at this shape although its estimate fitted:
  // the estimator under-predicts here, so every estimate of the stage is scaled by the worst such miss.
  double worst = 1.0;
  for (const auto& p : profiles_) {
    if (p.outcome != "oom" || p.stage != StageKindName(stage) || p.device_kind != device.kind ||
        p.frames != job.frames || p.height != job.height || p.width != job.width || p.batch != job.batch() ||
        p.device_capacity_bytes <= 0)
      continue;
    try {
      const Estimate pe = Estimated(stage, device, job, p.strategy, p.dtype);
      const double need = static_cast<double>(p.device_capacity_bytes - p.base_device_bytes + pe.input_bytes);
      if (pe.peak_bytes() > 0) worst = std::max(worst, need / static_cast<double>(pe.peak_bytes()));
    } catch (const Error&) {
    }
  }
  if (worst > 1.0) {
    o.peak_device_bytes = static_cast<int64_t>(static_cast<double>(o.peak_device_bytes) * worst);
    o.basis += fmt::format("; raised ×{:.2f}: a choice estimated to fit ran out of memory", worst);
  }
  return o;
}

std::vector<Option> CostModel::Options(StageKind stage, const Device& device, const Job& job) const {
  std::vector<Option> out;
  if (!manifest_.has_stage(stage)) return out;
  const StageManifest& sm = manifest_.stage(stage);
  const int n = sm.num_blocks();
  std::vector<std::string> strategies = {"none", "model"};
  if (n > 0) {
    for (int k : options_.block_windows)
      if (k >= 1 && k < n) strategies.push_back(fmt::format("block:{}", k));
    strategies.push_back("sequential");
  }
  if (stage == StageKind::kVaeDecoder) {
    const int64_t h = job.height / manifest_.vae.spatial_compression, w = job.width / manifest_.vae.spatial_compression;
    std::vector<std::string> modes = {"", "+slicing"};
    for (int t : options_.vae_tiles)
      if (t > 0 && (h > t / 8 || w > t / 8)) {
        modes.push_back(fmt::format("+tiling={}", t));
        modes.push_back(fmt::format("+slicing+tiling={}", t));
      }
    std::vector<std::string> all;
    for (const auto& s : strategies)
      for (const auto& m : modes) all.push_back(s + m);
    strategies = all;
  }
  std::vector<std::string> dtypes = {"f32", "bf16"};
  if (device.kind == "cuda") {
    dtypes = {"bf16", "f32", "int8"};
    if (stage != StageKind::kTextEncoder) dtypes.insert(dtypes.begin() + 1, "f16");  // T5 overflows in f16
  }
  for (const auto& d : dtypes)
    for (const auto& s : strategies) out.push_back(Price(stage, device, job, s, d));
  return out;
}

int64_t CostModel::OutputBytes(StageKind stage, const Job& job) const {
  // The denoiser's output that travels on is the final latents of one video, which is the decoder's input.
  const StageKind of = stage == StageKind::kDenoiser && manifest_.has_stage(StageKind::kVaeDecoder) ? StageKind::kVaeDecoder : stage;
  const StageManifest& sm = manifest_.stage(of);
  JobShape shape;
  shape.batch = stage == StageKind::kTextEncoder ? job.batch() : 1;
  shape.frames = job.frames;
  shape.height = job.height;
  shape.width = job.width;
  shape.text_tokens = manifest_.tokenizer.max_length;
  const auto symbols = shape.symbols(manifest_.vae);
  int64_t bytes = 0;
  for (const auto& t : of == stage ? sm.outputs : sm.inputs) {
    int64_t n = DTypeBytes(t.dtype);
    for (int64_t d : ResolveShape(t, symbols)) n *= d;
    bytes += n;
  }
  return bytes;
}

}  // namespace reel::planner
