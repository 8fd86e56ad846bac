#include "planner/activations.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "planner/cost_model.h"

namespace reel::planner {

namespace {

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

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Text encoder (T5)

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
// Denoiser

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
// The VAE

namespace {

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

}  // namespace

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

}  // namespace reel::planner
