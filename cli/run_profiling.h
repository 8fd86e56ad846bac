// The profiler around one `reel generate` run: --report, --trace, --metrics, the profile store and the
// background memory sampler, fed from the runtime's stage statistics and events.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/error.h"
#include "package/job_request.h"
#include "profiler/stage_profile.h"
#include "runtime/pipeline.h"

namespace reel {
class TraceRecorder;
class MemorySampler;
class Metrics;
class ProfileStore;
}  // namespace reel

namespace reel::cli {

struct ProfilingFlags {
  std::string report, trace, metrics, profile_db;
  int sample_ms = 10;
  bool no_profile_db = false;
};
void AddProfilingFlags(CLI::App& cmd, ProfilingFlags& flags);

class RunProfiling {
 public:
  // `device` is what the memory sampler and the device-memory gauges read (the simulated device or CUDA).
  RunProfiling(const ProfilingFlags& flags, const Manifest& manifest, const GenerateRequest& request,
               ComputeDevice& device);
  ~RunProfiling();
  RunObserver* observer();
  void Start();
  void set_host_budget(int64_t bytes) { host_budget_ = bytes; }
  // Records every stage that ran (with `error` for the one that failed), writes the report and trace, stores
  // the measurements and updates the metrics.
  void Finish(Runtime* runtime, const StagePackage& package, int64_t capacity, const Error* error,
              double total_seconds, const std::string& output);
  // Records the stage that ran out of device memory in an attempt the run then retried with a cheaper choice:
  // the store remembers it (outcome "oom") so the planner does not choose it again for this device and shape.
  // `runtime` is null when the failure came while placing weights at start-up.
  void RecordOom(const Runtime* runtime, const StageOutOfMemory& error, int64_t capacity);

 private:
  class Observer;
  ProfilingFlags flags_;
  const Manifest& manifest_;
  ComputeDevice& device_;
  GenerateRequest request_;
  std::unique_ptr<TraceRecorder> trace_;
  std::unique_ptr<MemorySampler> sampler_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ProfileStore> store_;
  std::unique_ptr<Observer> observer_;
  std::vector<StageProfile> failed_attempts_;
  int64_t host_budget_ = 0;
};

}  // namespace reel::cli
