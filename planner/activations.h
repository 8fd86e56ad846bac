// The device bytes and FLOPs of a stage's activations, op by op: each simulator follows the TorchScript source of
// models/*_script.cc (or, told to, diffusers' modules), allocating and freeing on a tape whose peak is what the stage
// needs on top of its weights. The cost model (cost_model.h) prices stages with them. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

namespace reel::planner {

struct Impl {
  bool fused_attention;    // SDPA (no scores); else scores materialised (the denoiser's in chunks)
  bool f32_norms;          // Reel: x.float() before every norm, the result cast back
  bool diffusers_vae;      // diffusers' decoder: SpatialNorm at full size, k=1 cache copies, SiLU not in place
  bool cpu;                // the simulated device: host-side tables count as device bytes, LibTorch's CPU kernels
};

struct Work {
  double dense = 0, attention = 0, conv = 0;  // FLOPs
  double scores = 0;                          // score elements chunked math attention materialises
  double calls = 0;                           // TorchScript part calls
};

// Text encoder (T5): ids → embedding and relative-position bias → blocks → RMSNorm.
struct T5Dims {
  int64_t B, T, D, H, dkv, F, blocks;
};
int64_t TextEncoderActivations(const T5Dims& d, int64_t s, const Impl& impl, Work& w);

// Denoiser (CogVideoXTransformer3DModel as embed + blocks + head), one step; the loop repeats it.
struct DitDims {
  int64_t B, f, C, h, w, T, Dt, D, H, hd, E, p, Cout, ff, blocks;
  bool rotary, learned;
};
// `inputs`: the loop's latents (and image latents) and the text embeddings, on the device before the stage begins.
int64_t DenoiserActivations(const DitDims& d, int64_t s, const Impl& impl, int64_t inputs, Work& w);

// The VAE: CogVideoX's causal 3D decoder (and encoder), chunk by chunk with the conv cache threaded through.
struct VaeArch {
  std::vector<int64_t> channels;  // block_out_channels
  int64_t layers = 3, lc = 16, temporal_levels = 2;
};

struct VaeCost {
  int64_t peak = 0;
  double flops = 0;
  double calls = 0;  // decode_chunk calls
};
// The decoder at batch 1 (Reel decodes one video per job) with the choice's slicing and tiling.
VaeCost DecoderActivations(const VaeArch& a, int64_t f, int64_t h, int64_t w, int64_t s, bool slicing, int tile,
                           int tile_w, const Impl& impl);
VaeCost EncoderActivations(const VaeArch& a, int64_t H, int64_t W, int64_t s, const Impl& impl);

}  // namespace reel::planner
