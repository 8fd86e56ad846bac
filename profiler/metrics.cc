// prometheus-cpp families behind Metrics, served by HttpEndpoint (http_endpoint.h). prometheus::Exposer is not
// used: it adds its own exposer_* families (one a summary) to every scrape, breaking the reel_ prefix and
// histograms-only conventions. Nor is civetweb (Exposer's server, also packaged alone): Debian's starts its threads
// with a fixed 100 KB stack, less than the static TLS of a process linking LibTorch, OpenBLAS and gRPC (~108 KB), so
// it cannot start in `reel`.
#include "profiler/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <mutex>
#include <tuple>

#include "common/error.h"

namespace reel {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// 1 ms doubling to ~70 min: a block on a fast GPU and a whole 5B denoise on a CPU land in distinct buckets.
Histogram::BucketBoundaries DurationBuckets() {
  Histogram::BucketBoundaries b;
  for (double v = 0.001; v < 3600 * 2; v *= 2) b.push_back(v);
  return b;
}

}  // namespace

struct MetricsEndpoint::Impl {
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<HttpEndpoint> http;
};

MetricsEndpoint::MetricsEndpoint(std::shared_ptr<prometheus::Registry> registry, HttpLimits limits)
    : impl_(std::make_unique<Impl>()) {
  impl_->registry = std::move(registry);
  impl_->http = std::make_unique<HttpEndpoint>("/metrics", [this] { return Serialize(); }, limits);
}

MetricsEndpoint::~MetricsEndpoint() = default;

void MetricsEndpoint::Serve(const std::string& host_port, const std::string& flag) {
  impl_->http->Serve(host_port, flag);
}

int MetricsEndpoint::port() const { return impl_->http->port(); }

std::string MetricsEndpoint::Serialize() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

struct Metrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  Family<Histogram>& stage_duration = Histograms("reel_stage_duration_seconds", "Wall time of one stage run");
  Family<Histogram>& step_duration = Histograms("reel_step_duration_seconds", "Wall time of one denoising step");
  Family<Histogram>& block_duration =
      Histograms("reel_block_duration_seconds", "Mean time of one transformer block, per block index and run");
  Family<Histogram>& copy_duration =
      Histograms("reel_copy_duration_seconds", "Time a stage run spent copying weights between host and device");
  Family<Histogram>& load_duration =
      Histograms("reel_load_duration_seconds", "Time a stage run spent placing its weights");
  Family<Counter>& stage_runs = Counters("reel_stage_runs_total", "Stage runs by outcome (ok, oom, error)");
  Family<Counter>& device_oom = Counters("reel_device_oom_total", "Stage runs that ran out of device memory");
  Family<Counter>& copied_bytes = Counters("reel_copied_bytes_total", "Weight bytes copied between host and device");
  Counter& frames = Counters("reel_frames_generated_total", "Video frames generated").Add({});
  Counter& jobs = Counters("reel_jobs_completed_total", "Jobs that completed successfully").Add({});
  Family<Gauge>& device_used = Gauges("reel_device_memory_used_bytes", "Device memory in use");
  Family<Gauge>& device_peak = Gauges("reel_device_memory_peak_bytes", "Highest device memory in use");
  Family<Gauge>& device_capacity =
      Gauges("reel_device_memory_capacity_bytes", "Device memory Reel may use (0: unlimited)");
  Gauge& host_rss = Gauges("reel_host_rss_bytes", "Resident set size of this process").Add({});
  Gauge& host_pinned = Gauges("reel_host_pinned_bytes", "Page-locked host memory held for copies").Add({});
  Gauge& host_budget =
      Gauges("reel_host_memory_budget_bytes", "Host memory Reel may use for offloaded weights (0: unlimited)").Add({});

  // Looking a label set up in a prometheus Family hashes every label each time; the pointers are stable, so one
  // map lookup per RecordStage is all the observation path costs.
  struct Series {
    Histogram *stage, *step, *block, *copy, *load;
    Counter *oom, *copied;
    std::map<std::string, Counter*> runs;  // by outcome
  };
  struct DeviceGauges {
    Gauge *used, *peak, *capacity;
  };
  std::mutex mu;
  std::map<std::tuple<std::string, std::string, std::string>, Series> series;
  std::map<std::string, DeviceGauges> devices;

  MetricsEndpoint endpoint{registry};

  Family<Histogram>& Histograms(const char* name, const char* help) {
    return prometheus::BuildHistogram().Name(name).Help(help).Register(*registry);
  }
  Family<Counter>& Counters(const char* name, const char* help) {
    return prometheus::BuildCounter().Name(name).Help(help).Register(*registry);
  }
  Family<Gauge>& Gauges(const char* name, const char* help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(*registry);
  }

  Series& SeriesFor(const std::string& stage, const std::string& device, const std::string& strategy) {
    auto key = std::make_tuple(stage, device, strategy);
    if (auto it = series.find(key); it != series.end()) return it->second;
    const prometheus::Labels labels = {{"stage", stage}, {"device", device}, {"strategy", strategy}};
    static const Histogram::BucketBoundaries buckets = DurationBuckets();
    // Every series of the set exists from the first run, so "0 OOMs" is a sample, not an absent series.
    Series s{&stage_duration.Add(labels, buckets), &step_duration.Add(labels, buckets),
             &block_duration.Add(labels, buckets), &copy_duration.Add(labels, buckets),
             &load_duration.Add(labels, buckets),  &device_oom.Add(labels),
             &copied_bytes.Add(labels),            {}};
    return series.emplace(std::move(key), std::move(s)).first->second;
  }
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {}

Metrics::~Metrics() = default;

void Metrics::Serve(const std::string& host_port) { impl_->endpoint.Serve(host_port); }

int Metrics::port() const { return impl_->endpoint.port(); }

void Metrics::RecordStage(const StageProfile& p) {
  std::lock_guard lock(impl_->mu);
  Impl::Series& s = impl_->SeriesFor(p.stage, p.device_kind, p.strategy);
  auto runs = s.runs.find(p.outcome);
  if (runs == s.runs.end())
    runs = s.runs
               .emplace(p.outcome, &impl_->stage_runs.Add({{"stage", p.stage},
                                                           {"device", p.device_kind},
                                                           {"strategy", p.strategy},
                                                           {"outcome", p.outcome}}))
               .first;
  runs->second->Increment();
  if (p.outcome == "oom") s.oom->Increment();
  s.copied->Increment(static_cast<double>(p.copied_bytes));
  // A failed run stops partway; its wall time would drag the stage histogram toward "fast".
  if (p.outcome != "ok") return;
  s.stage->Observe(p.wall_seconds);
  s.load->Observe(p.load_seconds);
  // Strategies that keep weights resident copy nothing; zeros would only bury the real copy times.
  if (p.copy_seconds > 0) s.copy->Observe(p.copy_seconds);
  for (double v : p.step_seconds) s.step->Observe(v);
  for (double v : p.block_seconds) s.block->Observe(v);
}

void Metrics::SetDeviceMemory(const std::string& device, int64_t used, int64_t peak, int64_t capacity) {
  std::lock_guard lock(impl_->mu);
  auto it = impl_->devices.find(device);
  if (it == impl_->devices.end()) {
    const prometheus::Labels labels = {{"device", device}};
    it = impl_->devices
             .emplace(device, Impl::DeviceGauges{&impl_->device_used.Add(labels), &impl_->device_peak.Add(labels),
                                                 &impl_->device_capacity.Add(labels)})
             .first;
  }
  it->second.used->Set(static_cast<double>(used));
  it->second.peak->Set(static_cast<double>(peak));
  it->second.capacity->Set(static_cast<double>(capacity));
}

void Metrics::SetHost(int64_t rss, int64_t pinned, int64_t budget) {
  impl_->host_rss.Set(static_cast<double>(rss));
  impl_->host_pinned.Set(static_cast<double>(pinned));
  impl_->host_budget.Set(static_cast<double>(budget));
}

void Metrics::AddFrames(int64_t n) { impl_->frames.Increment(static_cast<double>(n)); }

void Metrics::JobCompleted() { impl_->jobs.Increment(); }

std::string Metrics::Serialize() const { return prometheus::TextSerializer().Serialize(impl_->registry->Collect()); }

std::shared_ptr<prometheus::Registry> Metrics::registry() const { return impl_->registry; }

}  // namespace reel
