#include "coordinator/job_validation.h"

#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "media/video_io.h"
#include "package/job_request.h"
#include "transfer/wire.h"

namespace reel {

const Manifest& ValidateSubmit(const std::map<std::string, Manifest>& models, const v1::SubmitJobRequest& req,
                               v1::JobSpec& spec) {
  auto mit = models.find(spec.model());
  if (mit == models.end()) {
    std::vector<std::string> names;
    for (const auto& [n, m] : models) names.push_back(n);
    throw InvalidArgument(fmt::format("model '{}': this coordinator serves {}", spec.model(), fmt::join(names, ", ")));
  }
  const Manifest& m = mit->second;
  if (req.priority() < -1000 || req.priority() > 1000)
    throw InvalidArgument(fmt::format("priority {}: accepted -1000 to 1000", req.priority()));
  if (spec.frames() == 0) spec.set_frames(m.defaults.frames);
  if (spec.height() == 0) spec.set_height(m.defaults.height);
  if (spec.width() == 0) spec.set_width(m.defaults.width);
  if (spec.steps() == 0) spec.set_steps(m.defaults.steps);
  if (spec.fps() == 0) spec.set_fps(m.defaults.fps);
  ValidateRequest(m, RequestOf(spec));
  // Refused now rather than when its stage runs: the bytes must decode as an image.
  if (!spec.image().empty()) DecodeImageBytes(spec.image(), "image " + spec.image_name(), spec.height(), spec.width());
  return m;
}

}  // namespace reel
