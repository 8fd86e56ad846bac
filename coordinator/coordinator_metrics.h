// The coordinator's Prometheus families (docs/COORDINATOR.md lists them): what the metrics commands of the core
// (core_commands.h) land in, and the per-worker memory gauges the heartbeats set.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "profiler/metrics.h"

namespace reel {

inline const std::vector<double>& DurationBuckets() {
  static const std::vector<double> b = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};
  return b;
}

inline const std::vector<double>& DispatchBuckets() {
  static const std::vector<double> b = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1};
  return b;
}

struct CoordinatorMetrics {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& jobs = prometheus::BuildCounter()
                                                      .Name("reel_jobs_total")
                                                      .Help("Jobs by what happened to them: submitted, succeeded, "
                                                            "failed, cancelled, requeued")
                                                      .Register(*registry);
  prometheus::Family<prometheus::Gauge>& queue_depth =
      prometheus::BuildGauge().Name("reel_queue_depth").Help("Jobs waiting for their first stage").Register(*registry);
  prometheus::Family<prometheus::Gauge>& running =
      prometheus::BuildGauge().Name("reel_jobs_running").Help("Jobs with a stage started").Register(*registry);
  prometheus::Family<prometheus::Histogram>& job_seconds =
      prometheus::BuildHistogram()
          .Name("reel_job_duration_seconds")
          .Help("From a job's first stage starting to its output being stored")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& wait_seconds = prometheus::BuildHistogram()
                                                                .Name("reel_job_queue_wait_seconds")
                                                                .Help("From submission to the first stage starting")
                                                                .Register(*registry);
  prometheus::Family<prometheus::Histogram>& stage_seconds =
      prometheus::BuildHistogram()
          .Name("reel_job_stage_duration_seconds")
          .Help("A stage's run on a worker, dispatch to result, by stage and worker")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& dispatch_seconds =
      prometheus::BuildHistogram()
          .Name("reel_stage_dispatch_seconds")
          .Help("From a stage's result reaching the coordinator to the next stage of that job being sent")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& frames =
      prometheus::BuildCounter().Name("reel_frames_generated_total").Help("Frames in stored outputs").Register(*registry);
  prometheus::Family<prometheus::Gauge>& workers =
      prometheus::BuildGauge().Name("reel_workers").Help("Registered workers by state").Register(*registry);
  prometheus::Family<prometheus::Gauge>& worker_device = prometheus::BuildGauge()
                                                             .Name("reel_worker_device_memory_bytes")
                                                             .Help("Device memory each worker last reported")
                                                             .Register(*registry);
  prometheus::Family<prometheus::Gauge>& worker_host = prometheus::BuildGauge()
                                                           .Name("reel_worker_host_memory_bytes")
                                                           .Help("Host memory each worker last reported")
                                                           .Register(*registry);
  MetricsEndpoint endpoint{registry};

  CoordinatorMetrics() {
    for (const char* what : {"submitted", "succeeded", "failed", "cancelled", "requeued"}) jobs.Add({{"event", what}});
    queue_depth.Add({});
    running.Add({});
    job_seconds.Add({}, DurationBuckets());
    wait_seconds.Add({}, DurationBuckets());
    dispatch_seconds.Add({}, DispatchBuckets());
    frames.Add({});
    for (const char* s : {"loading", "idle", "busy", "draining", "failed", "lost"}) workers.Add({{"state", s}});
  }
  void Count(const std::string& event) { jobs.Add({{"event", event}}).Increment(); }
};

}  // namespace reel
