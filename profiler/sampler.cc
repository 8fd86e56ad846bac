// The sampling thread. Peaks are atomics so callers may read them while sampling runs.
#include "profiler/sampler.h"

#include <map>
#include <string>

#include "common/error.h"
#include "profiler/host_memory.h"
#include "profiler/trace.h"

namespace reel {
namespace {

void RaiseTo(std::atomic<int64_t>& peak, int64_t v) {
  int64_t cur = peak.load();
  while (v > cur && !peak.compare_exchange_weak(cur, v)) {
  }
}

}  // namespace

MemorySampler::MemorySampler(std::chrono::milliseconds period, std::function<int64_t()> device_bytes,
                             TraceRecorder* trace)
    : period_(period), device_bytes_(std::move(device_bytes)), trace_(trace) {
  if (period < std::chrono::milliseconds(1))
    throw InvalidArgument("--sample-ms " + std::to_string(period.count()) + ": accepted a period of 1 ms or more");
}

MemorySampler::~MemorySampler() { Join(); }

void MemorySampler::SampleOnce() {
  MemorySample s;
  s.at = std::chrono::steady_clock::now();
  s.device_bytes = device_bytes_ ? device_bytes_() : 0;
  s.host_rss_bytes = HostRssBytes();
  RaiseTo(peak_device_, s.device_bytes);
  RaiseTo(peak_host_, s.host_rss_bytes);
  if (trace_) {
    trace_->Counter("device_memory_bytes", s.at, {{"bytes", static_cast<double>(s.device_bytes)}});
    trace_->Counter("host_rss_bytes", s.at, {{"bytes", static_cast<double>(s.host_rss_bytes)}});
  }
  std::lock_guard lock(samples_mu_);
  samples_.push_back(s);
}

void MemorySampler::Loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    lock.unlock();
    try {
      SampleOnce();
    } catch (...) {
      lock.lock();
      error_ = std::current_exception();
      return;
    }
    lock.lock();
    // wait_until from a fixed schedule would catch up in bursts after a stall; a steady period is what the
    // trace's counter chart wants.
    cv_.wait_for(lock, period_, [this] { return stop_; });
  }
}

void MemorySampler::Start() {
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = false;
    error_ = nullptr;
  }
  thread_ = std::thread([this] { Loop(); });
}

void MemorySampler::Join() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void MemorySampler::Stop() {
  if (!thread_.joinable()) return;
  Join();
  std::exception_ptr error;
  {
    std::lock_guard lock(mu_);
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
  SampleOnce();
}

std::vector<MemorySample> MemorySampler::samples() const {
  std::lock_guard lock(samples_mu_);
  return samples_;
}

}  // namespace reel
