#include "models/presets.h"

namespace reel {

namespace {

PresetConfig Cogvideox5b() {
  PresetConfig p;
  p.name = "cogvideox-5b";
  p.tokenizer = TokenizerSpec{"bytes", "", 226, 32128, 0, 1, {}};
  p.vae_spec.scaling_factor = 0.7;
  p.scheduler.snr_shift_scale = 1.0;
  p.limits = ShapeLimits{16, 768, 16, 1360, 16, 49, 8};
  p.defaults = JobDefaults{49, 480, 720, 50, 6.0, 8};
  return p;
}

PresetConfig Cogvideox2b() {
  PresetConfig p = Cogvideox5b();
  p.name = "cogvideox-2b";
  p.transformer.num_heads = 30;
  p.transformer.num_layers = 30;
  p.transformer.rotary = false;  // fixed 3D sin-cos positions instead
  p.vae_spec.scaling_factor = 1.15258426;
  p.scheduler.snr_shift_scale = 3.0;
  return p;
}

PresetConfig Cogvideox5bI2v() {
  PresetConfig p = Cogvideox5b();
  p.name = "cogvideox-5b-i2v";
  p.image_conditioned = true;
  p.transformer.in_channels = 32;
  p.transformer.learned_pos = true;
  // The learned positional table is for 480×720: diffusers refuses other sizes for this model.
  p.limits = ShapeLimits{480, 480, 720, 720, 16, 49, 8};
  return p;
}

// The same architecture scaled down so that 9 frames at 64×64 with 4 steps take seconds on one core.
PresetConfig Tiny() {
  PresetConfig p = Cogvideox5b();
  p.name = "tiny";
  p.t5 = T5Config{384, 64, 16, 4, 160, 2, 32, 128, 1e-6};
  p.tokenizer = TokenizerSpec{"bytes", "", 32, 384, 0, 1, {}};
  auto& t = p.transformer;
  t.num_heads = 2;
  t.head_dim = 32;
  t.num_layers = 2;
  t.time_embed_dim = 64;
  t.text_embed_dim = 64;
  t.sample_latent_frames = 3;
  t.sample_latent_height = 8;
  t.sample_latent_width = 8;
  p.vae.block_out_channels = {16, 32, 32, 64};
  p.vae.layers_per_block = 1;
  p.vae.norm_groups = 8;
  p.limits = ShapeLimits{16, 256, 16, 256, 16, 49, 8};
  p.defaults = JobDefaults{9, 64, 64, 4, 6.0, 8};
  return p;
}

PresetConfig TinyI2v() {
  PresetConfig p = Tiny();
  p.name = "tiny-i2v";
  p.image_conditioned = true;
  p.transformer.in_channels = 32;
  return p;
}

}  // namespace

const std::vector<std::string>& PresetNames() {
  static const std::vector<std::string> names = {"tiny", "tiny-i2v", "cogvideox-2b", "cogvideox-5b",
                                                 "cogvideox-5b-i2v"};
  return names;
}

std::optional<PresetConfig> FindPreset(const std::string& name, std::optional<int> layers) {
  std::optional<PresetConfig> p;
  if (name == "tiny") p = Tiny();
  if (name == "tiny-i2v") p = TinyI2v();
  if (name == "cogvideox-2b") p = Cogvideox2b();
  if (name == "cogvideox-5b") p = Cogvideox5b();
  if (name == "cogvideox-5b-i2v") p = Cogvideox5bI2v();
  if (p && layers) {
    p->t5.num_layers = *layers;
    p->transformer.num_layers = *layers;
  }
  return p;
}

}  // namespace reel
