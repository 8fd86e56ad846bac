#include "coordinator/job_validation.h"

#include <cstdint>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "common/printable.h"
#include "common/utf8.h"
#include "media/video_io.h"
#include "package/job_request.h"
#include "transfer/wire.h"

namespace reel {

void CheckLimits(const Limits& l, const v1::JobSpec& spec) {
  auto over = [](const std::string& what, int64_t value, int64_t limit, const char* flag) {
    if (value > limit)
      throw InvalidArgument(fmt::format("{} {}: accepted at most {} on this coordinator (its {} raises it)", what,
                                        value, limit, flag));
  };
  over("--frames", spec.frames(), l.max_frames, "--max-frames");
  over("--height", spec.height(), l.max_height, "--max-height");
  over("--width", spec.width(), l.max_width, "--max-width");
  if (const int64_t pixels = int64_t{spec.height()} * spec.width(); pixels > l.max_pixels)
    throw InvalidArgument(fmt::format("--height {} x --width {}: {} pixels a frame, accepted at most {} on this "
                                      "coordinator (its --max-pixels raises it)",
                                      spec.height(), spec.width(), pixels, l.max_pixels));
  over("--steps", spec.steps(), l.max_steps, "--max-steps");
  if (spec.prompt().size() > static_cast<size_t>(l.max_prompt_bytes))
    throw InvalidArgument(fmt::format("--prompt: {} bytes, accepted at most {} on this coordinator (its "
                                      "--max-prompt-bytes raises it)",
                                      spec.prompt().size(), l.max_prompt_bytes));
  if (spec.negative_prompt().size() > static_cast<size_t>(l.max_prompt_bytes))
    throw InvalidArgument(fmt::format("--negative-prompt: {} bytes, accepted at most {} on this coordinator (its "
                                      "--max-prompt-bytes raises it)",
                                      spec.negative_prompt().size(), l.max_prompt_bytes));
}

void ValidateLimits(const Limits& l) {
  for (const auto& [flag, v] : {std::pair{"--max-queued-jobs", int64_t{l.max_queued_jobs}},
                                {"--max-frames", l.max_frames},
                                {"--max-height", l.max_height},
                                {"--max-width", l.max_width},
                                {"--max-pixels", l.max_pixels},
                                {"--max-steps", l.max_steps},
                                {"--max-prompt-bytes", l.max_prompt_bytes}})
    if (v < 1) throw InvalidArgument(fmt::format("{} {}: accepted 1 or more", flag, v));
  if (l.max_message_bytes < (1 << 20) || l.max_message_bytes > INT32_MAX)
    throw InvalidArgument(fmt::format("--max-message-bytes {}: accepted {} (1 MiB) to {}", l.max_message_bytes,
                                      1 << 20, INT32_MAX));
}

const Manifest& ValidateSubmit(const std::map<std::string, Manifest>& models, const v1::SubmitJobRequest& req,
                               v1::JobSpec& spec, const Limits& limits) {
  // Text fields first: the wire already refuses what is not UTF-8 (proto/text_fields.h); this holds for a spec
  // made in process too, and names the flag as `reel generate` and `reel submit` do.
  RequireUtf8("--model", spec.model());
  RequireUtf8("--prompt", spec.prompt());
  RequireUtf8("--negative-prompt", spec.negative_prompt());
  RequireUtf8("--image name", spec.image_name());
  auto mit = models.find(spec.model());
  if (mit == models.end()) {
    std::vector<std::string> names;
    for (const auto& [n, m] : models) names.push_back(n);
    throw InvalidArgument(
        fmt::format("model '{}': this coordinator serves {}", Printable(spec.model()), fmt::join(names, ", ")));
  }
  const Manifest& m = mit->second;
  if (req.priority() < -1000 || req.priority() > 1000)
    throw InvalidArgument(fmt::format("priority {}: accepted -1000 to 1000", req.priority()));
  if (spec.objective().empty()) spec.set_objective("throughput");
  if (spec.objective() != "throughput" && spec.objective() != "latency")
    throw InvalidArgument(fmt::format("--objective '{}': accepted throughput or latency", Printable(spec.objective())));
  if (spec.frames() == 0) spec.set_frames(m.defaults.frames);
  if (spec.height() == 0) spec.set_height(m.defaults.height);
  if (spec.width() == 0) spec.set_width(m.defaults.width);
  if (spec.steps() == 0) spec.set_steps(m.defaults.steps);
  if (spec.fps() == 0) spec.set_fps(m.defaults.fps);
  CheckLimits(limits, spec);
  ValidateRequest(m, RequestOf(spec));
  // Refused now rather than when its stage runs: the bytes must decode as an image.
  if (!spec.image().empty())
    DecodeImageBytes(spec.image(), "image " + Printable(spec.image_name()), spec.height(), spec.width());
  return m;
}

}  // namespace reel
