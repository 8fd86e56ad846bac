#include "cli/run_profiling.h"

#include <spdlog/spdlog.h>

#include <ctime>

#include "common/atomic_file.h"
#include "models/script_builder.h"
#include "models/synth.h"
#include "profiler/host_memory.h"
#include "profiler/metrics.h"
#include "profiler/profile_store.h"
#include "profiler/sampler.h"
#include "profiler/stage_profile.h"
#include "profiler/trace.h"
#include "runtime/device_memory.h"
#include "runtime/run_profile.h"

namespace reel::cli {

namespace fs = std::filesystem;

class RunProfiling::Observer : public RunObserver {
 public:
  explicit Observer(TraceRecorder* trace) : trace_(trace) {}
  void OnEvent(const RunEvent& e) override {
    if (trace_) trace_->Complete(e.name, e.category, e.track, e.start, e.end - e.start, {});
  }

 private:
  TraceRecorder* trace_;
};

void AddProfilingFlags(CLI::App& cmd, ProfilingFlags& f) {
  cmd.add_option("--report", f.report, "Write a JSON report of every stage's measured memory and times");
  cmd.add_option("--trace", f.trace, "Write a Chrome/Perfetto trace of stages, steps, blocks and copies");
  cmd.add_option("--metrics", f.metrics, "Serve Prometheus metrics on HOST:PORT during the run");
  cmd.add_option("--profile-db", f.profile_db,
                 "SQLite file that keeps every measurement (default: profiles.sqlite in the model cache)");
  cmd.add_flag("--no-profile-db", f.no_profile_db, "Do not store the measurements");
  cmd.add_option("--sample-ms", f.sample_ms, "Memory sampler period in milliseconds (0: off)")->default_val(10);
}

RunProfiling::RunProfiling(const ProfilingFlags& flags, const Manifest& manifest, const GenerateRequest& request,
                           ComputeDevice& device)
    : flags_(flags), manifest_(manifest), device_(device), request_(request) {
  if (flags_.sample_ms < 0)
    throw InvalidArgument("--sample-ms " + std::to_string(flags_.sample_ms) + ": accepted 0 (off) or more");
  for (const auto* path : {&flags_.report, &flags_.trace})
    if (!path->empty()) {
      const fs::path p(*path);
      RequireWritableDirectory(p.has_parent_path() ? p.parent_path() : fs::path("."),
                               path == &flags_.report ? "--report" : "--trace");
    }
  if (!flags_.trace.empty()) trace_ = std::make_unique<TraceRecorder>();
  metrics_ = std::make_unique<Metrics>();
  if (!flags_.metrics.empty()) {
    metrics_->Serve(flags_.metrics);
    spdlog::info("metrics on http://{}/metrics", flags_.metrics);
  }
  if (!flags_.no_profile_db) {
    const fs::path db = flags_.profile_db.empty() ? ModelCacheDir() / "profiles.sqlite" : fs::path(flags_.profile_db);
    if (flags_.profile_db.empty()) fs::create_directories(db.parent_path());
    store_ = std::make_unique<ProfileStore>(db.string());
  }
  observer_ = std::make_unique<Observer>(trace_.get());
  if (flags_.sample_ms > 0)
    sampler_ = std::make_unique<MemorySampler>(std::chrono::milliseconds(flags_.sample_ms),
                                             [this] { return device_.Memory().allocated; }, trace_.get());
}

RunProfiling::~RunProfiling() = default;

RunObserver* RunProfiling::observer() { return observer_.get(); }

void RunProfiling::Start() {
  if (sampler_) sampler_->Start();
}

void RunProfiling::Finish(Runtime* runtime, const StagePackage& package, int64_t capacity, const Error* error,
                          double total_seconds, const std::string& output) {
  if (sampler_) sampler_->Stop();
  const int64_t peak_rss = sampler_ ? sampler_->peak_host_rss_bytes() : HostPeakRssBytes();
  RunReport report;
  report.model = manifest_.name;
  report.frames = request_.frames;
  report.height = request_.height;
  report.width = request_.width;
  report.steps = request_.steps;
  report.seed = request_.seed;
  report.total_seconds = total_seconds;
  report.output = output;
  report.stages = failed_attempts_;  // stored when they happened
  if (runtime) {
    const auto stats = runtime->stats();
    const auto strategies = runtime->strategies();
    const auto formats = runtime->weight_formats();
    const std::optional<StageKind> failed = runtime->failed_stage();
    for (const auto& [kind, st] : stats) {
      const bool ran = st.wall_seconds > 0 || kind == failed;
      if (!ran) continue;
      ProfileContext c;
      c.manifest = &manifest_;
      c.request = request_;
      c.device_capacity = capacity;
      c.peak_host_rss = peak_rss;
      c.strategy = strategies.at(kind);
      c.weight_format = formats.at(kind);
      const StageProfile p = ProfileOf(kind, st, c, kind == failed && error ? error->what() : "");
      report.stages.push_back(p);
      if (store_) store_->Insert(p);
      metrics_->RecordStage(p);
    }
  }
  const DeviceMemoryStats mem = device_.Memory();
  metrics_->SetDeviceMemory(device_.simulated() ? "cpu" : device_.device().str(), mem.allocated, mem.peak, capacity);
  metrics_->SetHost(HostRssBytes(), 0, host_budget_);
  if (!error) {
    metrics_->AddFrames(request_.frames);
    metrics_->JobCompleted();
  }
  if (!flags_.report.empty()) WriteReport(report, flags_.report);
  if (trace_) trace_->Write(flags_.trace);
}

void RunProfiling::RecordOom(const Runtime* runtime, const StageOutOfMemory& error, int64_t capacity) {
  ProfileContext c;
  c.manifest = &manifest_;
  c.request = request_;
  c.device_capacity = capacity;
  c.peak_host_rss = HostPeakRssBytes();
  c.strategy = error.strategy();
  c.weight_format = error.weight_format();
  StageStats none;
  const auto stats = runtime ? runtime->stats() : std::map<StageKind, StageStats>{};
  const auto it = stats.find(error.stage());
  const StageProfile p = ProfileOf(error.stage(), it != stats.end() ? it->second : none, c, error.what());
  failed_attempts_.push_back(p);
  if (store_) store_->Insert(p);
  metrics_->RecordStage(p);
}

}  // namespace reel::cli
