// A generation request and its validation against a package's manifest. Torch-free: the CLI validates
// before loading anything, and a coordinator can refuse bad jobs at submit.
#pragma once

#include <cstdint>
#include <string>

#include "package/manifest.h"

namespace reel {

struct GenerateRequest {
  std::string prompt;
  std::string negative_prompt;
  std::string image;  // image-to-video conditioning file; empty for text-to-video
  int frames = 0, height = 0, width = 0, steps = 0;
  double guidance = 6.0;
  // diffusers' use_dynamic_cfg: the guidance scale of each step follows runtime/scheduler.h's GuidanceScale.
  bool dynamic_cfg = false;
  uint64_t seed = 0;
  int fps = 0;
};

// A request for the manifest's default job shape.
GenerateRequest DefaultRequest(const Manifest& m, const std::string& prompt);
// Throws InvalidArgument naming the flag, the value and what is accepted.
void ValidateRequest(const Manifest& m, const GenerateRequest& r);

}  // namespace reel
