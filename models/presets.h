// Architecture numbers of the built-in synthetic presets (CogVideoX shapes, see ../shared/COGVIDEOX.md).
// Torch-free: the planner reads them for estimates without LibTorch.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "package/manifest.h"

namespace reel {

struct T5Config {
  int vocab_size = 32128;
  int d_model = 4096;
  int d_kv = 64;
  int num_heads = 64;
  int d_ff = 10240;
  int num_layers = 24;
  int relative_buckets = 32;
  int relative_max_distance = 128;
  double eps = 1e-6;
};

struct TransformerConfig {
  int num_heads = 48;
  int head_dim = 64;
  int num_layers = 42;
  int in_channels = 16;
  int out_channels = 16;
  int time_embed_dim = 512;
  int text_embed_dim = 4096;
  int patch_size = 2;
  int ff_mult = 4;
  bool rotary = true;         // 5B: 3D RoPE on video tokens
  bool learned_pos = false;   // 5B-I2V: learned absolute positions (+ RoPE)
  // Sample size in latent units (diffusers' sample_frames is in pixel frames: 49 → 13 latent frames).
  int sample_latent_frames = 13, sample_latent_height = 60, sample_latent_width = 90;
  double spatial_interpolation = 1.875, temporal_interpolation = 1.0;
  double eps = 1e-5;
  // Checkpoint variations the exporter meets (diffusers' config keys patch_bias, flip_sin_to_cos, freq_shift).
  bool patch_bias = true;
  bool flip_sin_to_cos = true;
  double freq_shift = 0.0;
  // Attention as scaled_dot_product_attention (fused kernels; the default), or as chunked float32 math, the
  // formulation of packages made before LibTorch 2 (kept as an option for comparison: --attention chunked).
  bool fused_attention = true;
  int inner_dim() const { return num_heads * head_dim; }
};

struct VaeConfig {
  int in_channels = 3;
  std::vector<int> block_out_channels = {128, 256, 256, 512};
  int layers_per_block = 3;
  int latent_channels = 16;
  int norm_groups = 32;
  double eps = 1e-6;
  int temporal_levels = 2;        // log2(temporal compression): the first levels also compress time
  int encode_frame_batch = 8;     // pixel frames per encoder chunk (diffusers' num_sample_frames_batch_size)
  int decode_latent_batch = 2;    // latent frames per decoder chunk (num_latent_frames_batch_size)
};

struct PresetConfig {
  std::string name;
  bool image_conditioned = false;
  T5Config t5;
  TransformerConfig transformer;
  VaeConfig vae;
  TokenizerSpec tokenizer;
  VaeSpec vae_spec;
  SchedulerSpec scheduler;
  ShapeLimits limits;
  JobDefaults defaults;
};

// The preset names `reel model synth --preset` accepts, in display order.
const std::vector<std::string>& PresetNames();
// Returns the preset or nullopt; `layers` (if set) reduces the depth of the text encoder and the transformer.
std::optional<PresetConfig> FindPreset(const std::string& name, std::optional<int> layers = std::nullopt);

}  // namespace reel
