// `reel tune`'s measurements: each candidate (strategy, dtype) of each stage run briefly on a device at a job
// shape — a few denoising steps, extrapolated to the job's — least estimated memory first. A candidate that runs
// out of device memory is recorded as such (an "oom" profile the planner then avoids) and never ends the tuning.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "package/job_request.h"
#include "planner/cost_model.h"
#include "profiler/stage_profile.h"
#include "runtime/compute_device.h"

namespace reel {

struct TuneOptions {
  std::vector<StageKind> stages;  // empty: every stage of the package
  int max_candidates = 6;         // per stage: the fastest estimates that might fit, plus the least-memory one
  bool any_dtype = false;         // false: each stage's package dtype only (the numbers reel generate computes)
  bool allow_int8 = false;
  double margin = 0.10;
};

struct TuneCandidate {
  StageKind stage = StageKind::kDenoiser;
  std::string strategy, dtype;  // as planner::Option spells them
  planner::Option estimate;     // the cost model's figures before this run (for the job's steps)
};

struct TuneMeasurement {
  TuneCandidate candidate;
  std::string outcome;  // ok | oom | error
  std::string error;    // oom/error: the failure's line
  StageProfile profile;  // ok and oom: what the profile store keeps
  double job_seconds = 0;  // ok: the measured time extrapolated to the job's steps
};

// The candidates worth measuring for each stage on `device`, each stage's in increasing estimated peak.
std::vector<TuneCandidate> TuneCandidates(const planner::CostModel& model, const planner::Device& device,
                                          const planner::Job& job, const TuneOptions& options);

// Runs `c`'s stage alone, placed per `c`, on `device` (capacity `capacity` bytes, 0 = unlimited) with `request`
// (its steps are the short run's). Inputs that come from other stages are synthesized in their real shapes and
// dtypes (compute and memory do not depend on their values). Never throws for the device running out of memory.
TuneMeasurement MeasureCandidate(const std::filesystem::path& package_dir, ComputeDevice& device, int64_t capacity,
                                 const GenerateRequest& request, int job_steps, const TuneCandidate& c);

// A whole tuning on `device`: TuneCandidates (ordered by the cost model built from `profiles`), each measured with
// the denoiser running `tune_steps` of the job's steps, `each` called after every measurement.
void RunTuning(const std::filesystem::path& package_dir, const Manifest& manifest, ComputeDevice& device,
               int64_t capacity, const planner::Job& job, int tune_steps, const TuneOptions& options,
               const std::vector<StageProfile>& profiles, const std::function<void(const TuneMeasurement&)>& each);

// The planner's view of `device` as a tuning sees it (kind, and `capacity`, else the device's total).
planner::Device TuneDevice(ComputeDevice& device, int64_t capacity);

}  // namespace reel
