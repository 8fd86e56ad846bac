// `reel model synth`: writes a stage package with the real CogVideoX architecture and seeded random weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "package/manifest.h"

namespace reel {

struct SynthOptions {
  std::string preset;
  std::filesystem::path out;
  uint64_t seed = 0;
  DType dtype = DType::kF32;
  std::optional<int> layers;
  // Text-encoder blocks only (its outputs keep their shape): benchmarks of the later stages skip synthesizing
  // and storing a 4.7B-parameter T5 they never run.
  std::optional<int> text_layers;
  // Denoiser attention: scaled_dot_product_attention (default), or the chunked float32 math of packages made before
  // LibTorch 2 (`--attention chunked`, for comparisons).
  bool fused_attention = true;
};

// Validates the options (InvalidArgument naming the flag), then writes the package into a temporary directory
// beside `out` and renames it into place: a package appears whole or not at all. `out` must not exist yet
// unless it is empty. `on_part` is told each file as it is written.
Manifest SynthesizePackage(const SynthOptions& opts,
                           const std::function<void(const std::string&)>& on_part = nullptr);

// The manifest SynthesizePackage would write for `opts` (its `out` unused), built without weights: parameter
// counts and bytes from shapes alone, in about a second for any preset. For planning (`reel plan`).
Manifest PresetManifest(const SynthOptions& opts);

// The directory holding synthesized preset packages: $REEL_CACHE_DIR, else $XDG_CACHE_HOME/reel, else
// ~/.cache/reel.
std::filesystem::path ModelCacheDir();

// Resolves `--model`: a preset name is synthesized once into the cache (seed 0, f32) and its directory
// returned; anything else must be a package directory. Throws NotFound naming the value otherwise.
std::filesystem::path ResolveModel(const std::string& model);

}  // namespace reel
