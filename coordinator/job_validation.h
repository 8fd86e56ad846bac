// What the coordinator checks before it queues a job: the served model, the priority, the job shape against the
// model's manifest and the conditioning image. Free of gRPC and LibTorch, so tests and the fuzz target run exactly
// the checks SubmitJob runs.
#pragma once

#include <map>
#include <string>

#include "package/manifest.h"
#include "reel/v1/coordinator.pb.h"

namespace reel {

// Fills `spec`'s unset shape fields (frames, height, width, steps, fps) with the model's defaults and checks the
// request. Returns the served model's manifest; throws reel::Error (kInvalidArgument) naming the field, the value
// and what would be accepted.
const Manifest& ValidateSubmit(const std::map<std::string, Manifest>& models, const v1::SubmitJobRequest& req,
                               v1::JobSpec& spec);

}  // namespace reel
