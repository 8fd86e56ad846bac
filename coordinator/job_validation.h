// What the coordinator checks before it queues a job: the served model, the priority, the job shape against the
// model's manifest and the conditioning image. Free of gRPC and LibTorch, so tests and the fuzz target run exactly
// the checks SubmitJob runs.
#pragma once

#include <map>
#include <string>

#include "coordinator/limits.h"
#include "package/manifest.h"
#include "reel/v1/coordinator.pb.h"

namespace reel {

// Fills `spec`'s unset shape fields (frames, height, width, steps, fps) with the model's defaults and checks the
// request: first against the coordinator's `limits` (CheckLimits), then against the model. Returns the served
// model's manifest; throws reel::Error (kInvalidArgument) naming the field, the value and what would be accepted.
const Manifest& ValidateSubmit(const std::map<std::string, Manifest>& models, const v1::SubmitJobRequest& req,
                               v1::JobSpec& spec, const Limits& limits = Limits{});

// The operator's bounds on a job (shape fields already filled in): frames, height, width, pixels a frame, steps and
// both prompts' bytes. Throws InvalidArgument naming the field, the value, the limit and the flag that raises it.
void CheckLimits(const Limits& limits, const v1::JobSpec& spec);

// The flags' own values: each limit positive, the message limit from 1 MiB to 2 GiB - 1. Throws InvalidArgument
// naming the flag.
void ValidateLimits(const Limits& limits);

}  // namespace reel
