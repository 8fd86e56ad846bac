// A tuning measurement as it travels (worker → coordinator → `reel tune --coordinator`) and as `reel tune` prints it.
#pragma once

#include "reel/v1/types.pb.h"
#include "transfer/wire.h"
#include "tuner/tuner.h"

namespace reel {

inline reel::v1::TuneMeasurement ToProto(const TuneMeasurement& m) {
  reel::v1::TuneMeasurement p;
  p.set_stage(StageOf(m.candidate.stage));
  p.set_strategy(m.candidate.strategy);
  p.set_dtype(m.candidate.dtype);
  p.set_outcome(m.outcome);
  p.set_error(m.error);
  p.set_estimated_peak_device_bytes(m.candidate.estimate.peak_device_bytes);
  p.set_estimated_seconds(m.candidate.estimate.seconds);
  if (m.outcome == "ok") {
    p.set_peak_device_bytes(m.profile.peak_device_bytes);
    p.set_seconds(m.job_seconds);
  }
  if (m.outcome == "ok" || m.outcome == "oom") p.mutable_profile()->set_json(m.profile.ToJson().dump());
  return p;
}

}  // namespace reel
