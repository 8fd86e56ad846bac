// Prometheus metrics for a Reel process: stage, step, block, copy and load durations as histograms, run and OOM
// counters, memory gauges; served over HTTP on /metrics and serialisable to text for files and tests.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "profiler/http_endpoint.h"
#include "profiler/stage_profile.h"

namespace prometheus {
class Registry;
}

namespace reel {

// Serves a registry's families on /metrics over HTTP (the text exposition format), and nothing else: scrapes are
// served concurrently, each connection within `limits` (a whole-request deadline, a bound on connections and on
// the request's size), so slow or idle clients cannot hold a scrape up.
class MetricsEndpoint {
 public:
  explicit MetricsEndpoint(std::shared_ptr<prometheus::Registry> registry, HttpLimits limits = {});
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // "HOST:PORT" (an IP address or localhost; port 0 picks a free port). Throws InvalidArgument("<flag> <value>:
  // ...") for a malformed address or one that cannot be bound.
  void Serve(const std::string& host_port, const std::string& flag = "--metrics");
  int port() const;  // the bound port, 0 when not serving
  std::string Serialize() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Metrics {
 public:
  Metrics();  // every family is registered up front, so a scrape shows all of them from the first second
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves /metrics on "HOST:PORT" (an IP address or localhost; port 0 picks a free port, see port()).
  // Throws InvalidArgument("--metrics <value>: ...") for a malformed address or one that cannot be bound.
  void Serve(const std::string& host_port);
  int port() const;  // the bound port, 0 when not serving

  // Labels: stage, device (the profile's device_kind), strategy; outcome on reel_stage_runs_total.
  void RecordStage(const StageProfile& p);
  void SetDeviceMemory(const std::string& device, int64_t used, int64_t peak, int64_t capacity);
  void SetHost(int64_t rss, int64_t pinned, int64_t budget);
  void AddFrames(int64_t n);
  void JobCompleted();

  // The text exposition format, exactly what a scrape of /metrics returns.
  std::string Serialize() const;
  std::shared_ptr<prometheus::Registry> registry() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace reel
