// Peak memory by sampling: a background thread reads device bytes (a callback) and host RSS at a fixed period,
// because the runtime's own counters miss allocations made inside libraries.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace reel {

class TraceRecorder;

struct MemorySample {
  std::chrono::steady_clock::time_point at;
  int64_t device_bytes = 0;
  int64_t host_rss_bytes = 0;
};

class MemorySampler {
 public:
  // `device_bytes` may be empty (no device: recorded as 0); `trace` may be null. Throws InvalidArgument
  // ("--sample-ms <n>: ...") for a period under 1 ms, which would busy-spin a core.
  MemorySampler(std::chrono::milliseconds period, std::function<int64_t()> device_bytes, TraceRecorder* trace);
  ~MemorySampler();  // stops without rethrowing
  MemorySampler(const MemorySampler&) = delete;
  MemorySampler& operator=(const MemorySampler&) = delete;

  // Takes one sample at once, then one per period. Start while running does nothing; Start after Stop resumes
  // and keeps the samples and peaks so far.
  void Start();
  // Takes a last sample and joins the thread, so the peaks cover the whole run however short. Rethrows the
  // first exception the callback or /proc raised on the sampling thread (sampling ended there).
  void Stop();

  std::vector<MemorySample> samples() const;
  int64_t peak_device_bytes() const { return peak_device_.load(); }
  int64_t peak_host_rss_bytes() const { return peak_host_.load(); }
  std::chrono::milliseconds period() const { return period_; }

 private:
  void Loop();
  void SampleOnce();
  void Join();

  const std::chrono::milliseconds period_;
  const std::function<int64_t()> device_bytes_;
  TraceRecorder* const trace_;

  std::thread thread_;
  std::mutex mu_;  // guards stop_, error_; the condition variable lets Stop() cut a period short
  std::condition_variable cv_;
  bool stop_ = false;
  std::exception_ptr error_;

  mutable std::mutex samples_mu_;
  std::vector<MemorySample> samples_;
  std::atomic<int64_t> peak_device_{0};
  std::atomic<int64_t> peak_host_{0};
};

}  // namespace reel
