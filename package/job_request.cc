#include "package/job_request.h"

#include <fmt/format.h>

#include "common/error.h"
#include "common/printable.h"
#include "common/utf8.h"

namespace reel {

GenerateRequest DefaultRequest(const Manifest& m, const std::string& prompt) {
  GenerateRequest r;
  r.prompt = prompt;
  r.frames = m.defaults.frames;
  r.height = m.defaults.height;
  r.width = m.defaults.width;
  r.steps = m.defaults.steps;
  r.guidance = m.defaults.guidance;
  r.fps = m.defaults.fps;
  return r;
}

void ValidateRequest(const Manifest& m, const GenerateRequest& r) {
  const auto& l = m.limits;
  const int step = l.frame_step;
  if (r.frames < 1 || (r.frames - 1) % step != 0 || r.frames > l.max_frames)
    throw InvalidArgument(fmt::format("--frames {}: accepted {}k+1 frames from 1 to {} (1, {}, {}, ...)", r.frames,
                                      step, l.max_frames, step + 1, 2 * step + 1));
  auto check_size = [&](const char* flag, int v, int lo, int hi) {
    if (v % l.size_multiple != 0 || v < lo || v > hi)
      throw InvalidArgument(fmt::format("{} {}: accepted a multiple of {} from {} to {} for model '{}'", flag, v,
                                        l.size_multiple, lo, hi, m.name));
  };
  check_size("--height", r.height, l.min_height, l.max_height);
  check_size("--width", r.width, l.min_width, l.max_width);
  if (r.steps < 1 || r.steps > m.scheduler.num_train_timesteps)
    throw InvalidArgument(
        fmt::format("--steps {}: accepted 1 to {}", r.steps, m.scheduler.num_train_timesteps));
  if (!(r.guidance >= 0.0) || r.guidance > 100.0)
    throw InvalidArgument(fmt::format("--guidance {}: accepted 0 to 100 (1 or less turns guidance off)", r.guidance));
  if (r.dynamic_cfg && r.guidance <= 1.0)
    throw InvalidArgument(fmt::format("--dynamic-cfg: needs --guidance above 1, got {} (1 or less turns guidance off)",
                                      r.guidance));
  if (r.fps < 1 || r.fps > 240) throw InvalidArgument(fmt::format("--fps {}: accepted 1 to 240", r.fps));
  if (m.image_conditioned && r.image.empty())
    throw InvalidArgument(fmt::format("--image: required by image-to-video model '{}'", m.name));
  if (!m.image_conditioned && !r.image.empty())
    throw InvalidArgument(fmt::format("--image {}: model '{}' is text-to-video; use an image-to-video model "
                                      "(e.g. tiny-i2v, cogvideox-5b-i2v)",
                                      Printable(r.image), m.name));
  if (r.prompt.size() > 64 * 1024)
    throw InvalidArgument(fmt::format("--prompt: {} bytes, accepted at most 65536", r.prompt.size()));
  // The same text rule as the coordinator's API (docs/SECURITY.md): `generate` and `submit` agree.
  RequireUtf8("--prompt", r.prompt);
  RequireUtf8("--negative-prompt", r.negative_prompt);
}

}  // namespace reel
