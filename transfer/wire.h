// Conversions between Reel's own types and reel.v1's, shared by the coordinator, workers and clients.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "package/job_request.h"
#include "package/manifest.h"
#include "reel/v1/types.pb.h"

namespace reel {

inline std::optional<StageKind> KindOf(reel::v1::Stage s) {
  switch (s) {
    case reel::v1::TEXT_ENCODER: return StageKind::kTextEncoder;
    case reel::v1::VAE_ENCODER: return StageKind::kVaeEncoder;
    case reel::v1::DENOISER: return StageKind::kDenoiser;
    case reel::v1::VAE_DECODER: return StageKind::kVaeDecoder;
    default: return std::nullopt;
  }
}

inline reel::v1::Stage StageOf(StageKind k) {
  switch (k) {
    case StageKind::kTextEncoder: return reel::v1::TEXT_ENCODER;
    case StageKind::kVaeEncoder: return reel::v1::VAE_ENCODER;
    case StageKind::kDenoiser: return reel::v1::DENOISER;
    default: return reel::v1::VAE_DECODER;
  }
}

// A job's request as the runtime and the validation take it. `image` only names the image for messages: its
// bytes travel in the spec.
inline GenerateRequest RequestOf(const reel::v1::JobSpec& s) {
  GenerateRequest r;
  r.prompt = s.prompt();
  r.negative_prompt = s.negative_prompt();
  r.image = s.image().empty() ? "" : (s.image_name().empty() ? "image" : s.image_name());
  r.frames = s.frames();
  r.height = s.height();
  r.width = s.width();
  r.steps = s.steps();
  r.guidance = s.guidance();
  r.dynamic_cfg = s.dynamic_cfg();
  r.seed = s.seed();
  r.fps = s.fps();
  return r;
}

// "none", or e.g. "block:2,bf16,int8,slicing,tiling=256".
inline std::string StrategyString(const reel::v1::StageStrategy& s) {
  std::string out = s.offload().empty() ? "none" : s.offload();
  if (!s.dtype().empty()) out += "," + s.dtype();
  if (s.int8_weights()) out += ",int8";
  if (s.vae_slicing()) out += ",slicing";
  if (s.vae_tile() > 0) out += ",tiling=" + std::to_string(s.vae_tile());
  return out;
}

// Wall-clock microseconds: the unit of every *_unix_us field.
inline int64_t NowUnixUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace reel
