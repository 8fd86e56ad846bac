// prometheus-cpp families behind Metrics, and a small HTTP endpoint for /metrics. Neither prometheus::Exposer nor
// civetweb is used: the Exposer adds its own exposer_* families (one a summary) to every scrape, breaking the
// reel_ prefix and histograms-only conventions, and Debian's civetweb starts its threads with a fixed 100 KB stack,
// less than the static TLS of a process linking LibTorch, OpenBLAS and gRPC (~108 KB), so it cannot start in
// `reel`. A scrape is one short request; one thread with a default stack serves them in turn.
#include "profiler/metrics.h"

#include <arpa/inet.h>

#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <optional>
#include <mutex>
#include <atomic>
#include <thread>
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

struct ListenAddress {
  int family = AF_INET;
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// "127.0.0.1:9464", "[::1]:0", "localhost:9464" -> a socket address; nullopt when malformed.
std::optional<ListenAddress> ParseListen(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535)
    return std::nullopt;
  if (host == "localhost") host = "127.0.0.1";
  ListenAddress a;
  const auto port_n = static_cast<uint16_t>(std::stoi(port));
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.addr);
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6->sin6_addr) != 1) return std::nullopt;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port_n);
    a.family = AF_INET6;
    a.len = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&a.addr);
    if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1) return std::nullopt;
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port_n);
    a.len = sizeof(sockaddr_in);
  }
  return a;
}

void SendAll(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

}  // namespace

struct MetricsEndpoint::Impl {
  std::shared_ptr<prometheus::Registry> registry;
  int fd = -1;
  int port = 0;
  int wake[2] = {-1, -1};
  std::thread thread;

  void Loop(const MetricsEndpoint& self) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake[0], POLLIN, 0}};
    for (;;) {
      if (::poll(fds, 2, -1) < 0) continue;
      if (fds[1].revents) return;
      const int c = ::accept(fd, nullptr, nullptr);
      if (c < 0) continue;
      timeval tv{2, 0};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      std::string request;
      char buf[2048];
      while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      const bool get = request.rfind("GET /metrics ", 0) == 0 || request.rfind("GET /metrics?", 0) == 0;
      const std::string body = get ? self.Serialize() : "only GET /metrics is served here\n";
      SendAll(c, std::string(get ? "HTTP/1.1 200 OK" : "HTTP/1.1 404 Not Found") +
                     "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
      ::close(c);
    }
  }
};

MetricsEndpoint::MetricsEndpoint(std::shared_ptr<prometheus::Registry> registry) : impl_(std::make_unique<Impl>()) {
  impl_->registry = std::move(registry);
}

MetricsEndpoint::~MetricsEndpoint() {
  if (impl_->thread.joinable()) {
    const char x = 1;
    (void)!::write(impl_->wake[1], &x, 1);
    impl_->thread.join();
  }
  for (int f : {impl_->fd, impl_->wake[0], impl_->wake[1]})
    if (f >= 0) ::close(f);
}

void MetricsEndpoint::Serve(const std::string& host_port, const std::string& flag) {
  const auto addr = ParseListen(host_port);
  if (!addr)
    throw InvalidArgument(flag + " " + host_port +
                          ": accepted HOST:PORT with an IP address or localhost, such as 127.0.0.1:9464 or "
                          "0.0.0.0:9464 (port 0 picks a free port)");
  if (impl_->fd >= 0) throw InvalidArgument(flag + " " + host_port + ": metrics are already served on port " +
                                            std::to_string(port()));
  const int fd = ::socket(addr->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd >= 0) ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || ::bind(fd, reinterpret_cast<const sockaddr*>(&addr->addr), addr->len) != 0 || ::listen(fd, 64) != 0) {
    if (fd >= 0) ::close(fd);
    throw InvalidArgument(flag + " " + host_port + ": cannot listen there (in use, or not an address of this host)");
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  impl_->port = ntohs(addr->family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  impl_->fd = fd;
  if (::pipe2(impl_->wake, O_CLOEXEC) != 0) throw InvalidArgument(flag + " " + host_port + ": cannot create a pipe");
  impl_->thread = std::thread([this] { impl_->Loop(*this); });
}

int MetricsEndpoint::port() const { return impl_->port; }

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
