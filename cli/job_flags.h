// The job flags `reel generate` and `reel submit` share: what to generate, not how to place it.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "common/utf8.h"
#include "package/job_request.h"

namespace reel::cli {

struct JobFlags {
  std::string model;
  GenerateRequest request;
  std::optional<int> frames, height, width, steps, fps;  // unset: the model's defaults
};

inline void AddJobFlags(CLI::App& c, JobFlags& f) {
  auto& r = f.request;
  c.add_option("--model", f.model, "Preset name (synthesized once into the cache) or package directory")->required();
  c.add_option("--prompt", r.prompt, "Text prompt")->required();
  c.add_option("--negative-prompt", r.negative_prompt, "Negative prompt (default empty)");
  c.add_option("--image", r.image, "Conditioning image (PNG/JPEG) for image-to-video models");
  c.add_option("--frames", f.frames, "Frames, 8k+1 (default: the model's)");
  c.add_option("--height", f.height, "Height in pixels, a multiple of 16");
  c.add_option("--width", f.width, "Width in pixels, a multiple of 16");
  c.add_option("--steps", f.steps, "Denoising steps");
  c.add_option("--guidance", r.guidance, "Classifier-free guidance scale (<= 1 turns it off)")->default_val(6.0);
  c.add_flag("--dynamic-cfg", r.dynamic_cfg,
             "Vary the guidance scale over the steps as diffusers' use_dynamic_cfg does (CogVideoX's I2V examples)");
  c.add_option("--seed", r.seed, "Noise seed")->default_val(0);
  c.add_option("--fps", f.fps, "Frames per second of the MP4 (default: the model's)");
}

// The text rule `generate` and `submit` share with the coordinator's API: the model, the prompts and ids are UTF-8
// (docs/SECURITY.md). Throws InvalidArgument naming the flag and the byte offset.
inline void CheckJobText(const JobFlags& f) {
  RequireUtf8("--model", f.model);
  RequireUtf8("--prompt", f.request.prompt);
  RequireUtf8("--negative-prompt", f.request.negative_prompt);
}

}  // namespace reel::cli
