// Exact accounting of the bytes placed on a (simulated) device. A tracking CPU allocator counts every allocation
// made inside a DeviceScope as device bytes and fails, as a GPU of the configured capacity would, when one does
// not fit. Placement and offload are tested with it on machines without a GPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

namespace reel {

class DeviceMemory {
 public:
  // The process-wide accountant; installs the tracking allocator on first use.
  static DeviceMemory& Get();

  void SetCapacity(int64_t bytes) { capacity_ = bytes; }  // 0 = unlimited
  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_; }
  int64_t peak() const { return peak_; }
  void ResetPeak() { peak_ = used_.load(); }
  int64_t host_bytes() const { return host_used_; }  // CPU tensors outside device scopes

  // Called by the allocator.
  bool Reserve(int64_t bytes);  // false (and records the failure) when the capacity would be exceeded
  void Release(int64_t bytes) { used_ -= bytes; }
  void AddHost(int64_t bytes) { host_used_ += bytes; }

 private:
  DeviceMemory() = default;
  std::atomic<int64_t> capacity_{0};
  std::atomic<int64_t> used_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> host_used_{0};
};

// Allocations on this thread inside the scope are device bytes.
class DeviceScope {
 public:
  DeviceScope();
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  static bool active();
};

// Allocations in this scope are weights placed for a stage's life (or a streamed block's): those of 32 MiB or
// more are advised into transparent huge pages. Activations are not: allocated and freed every call, they paid
// more for huge pages than they gained (docs/BENCHMARKS.md).
class WeightsScope {
 public:
  WeightsScope();
  ~WeightsScope();
  WeightsScope(const WeightsScope&) = delete;
  WeightsScope& operator=(const WeightsScope&) = delete;
};

// Inside a DeviceScope, allocations in this scope are host bytes again (e.g. a result copied off the device).
class HostScope {
 public:
  HostScope();
  ~HostScope();
  HostScope(const HostScope&) = delete;
  HostScope& operator=(const HostScope&) = delete;

 private:
  int saved_;
};

// Device bytes counted before the allocations that will use them: the simulated device's copy stream counts a
// prefetched block when the copy is queued, as a GPU allocates it then (CopyStream::Start), and its copy thread's
// allocations draw on what was counted. Without it a stage's peak depended on how far the copy thread had got when
// the compute thread's activations peaked: up to a whole block less under load.
class DevicePrepayment {
 public:
  // Counts `bytes` as device bytes now; throws the device's out-of-memory error when they do not fit.
  explicit DevicePrepayment(int64_t bytes);
  ~DevicePrepayment();  // gives back what no allocation drew
  DevicePrepayment(const DevicePrepayment&) = delete;
  DevicePrepayment& operator=(const DevicePrepayment&) = delete;
  int64_t left() const { return left_; }
  int64_t Take(int64_t n);  // up to n of what is left
  void Return(int64_t n) { left_ += n; }

 private:
  std::atomic<int64_t> left_{0};
};

// Device allocations on this thread inside the scope draw on `paid` first (null: no prepayment).
class PrepaidScope {
 public:
  explicit PrepaidScope(DevicePrepayment* paid);
  ~PrepaidScope();
  PrepaidScope(const PrepaidScope&) = delete;
  PrepaidScope& operator=(const PrepaidScope&) = delete;

 private:
  DevicePrepayment* saved_;
};

// The last device allocation that did not fit (on any thread), if any; cleared by TakeOutOfMemory.
struct OutOfMemory {
  int64_t requested = 0;
  int64_t used = 0;
  int64_t capacity = 0;
};
std::optional<OutOfMemory> TakeOutOfMemory();

}  // namespace reel
