// The CUDA device: weights placed through LibTorch's caching allocator, block copies on a side stream ordered by
// events (the host never waits for a copy), memory figures from the allocator's statistics, and CUDA
// out-of-memory mapped to the same DeviceOutOfMemory as the simulated device. Compiled only against a
// CUDA-enabled LibTorch; elsewhere the build checks its syntax against LibTorch's CUDA headers so it cannot rot.
#include <cuda_runtime_api.h>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "common/error.h"
#include "profiler/host_memory.h"
#include "runtime/compute_device.h"

namespace reel {

namespace {

namespace alloc = c10::cuda::CUDACachingAllocator;
constexpr size_t kAggregate = 0;  // StatType::AGGREGATE in every LibTorch version

// "Tried to allocate 2.50 GiB" in PyTorch's message, as bytes (0 when absent).
int64_t RequestedBytes(const std::string& what) {
  const std::string key = "Tried to allocate ";
  const size_t at = what.find(key);
  if (at == std::string::npos) return 0;
  const char* p = what.c_str() + at + key.size();
  char* end = nullptr;
  const double v = std::strtod(p, &end);
  while (end && *end == ' ') ++end;
  if (!end) return 0;
  const std::string unit(end, std::min<size_t>(3, std::strlen(end)));
  double scale = 1;
  if (unit.rfind("KiB", 0) == 0) scale = 1024.0;
  if (unit.rfind("MiB", 0) == 0) scale = 1024.0 * 1024;
  if (unit.rfind("GiB", 0) == 0) scale = 1024.0 * 1024 * 1024;
  return static_cast<int64_t>(v * scale);
}

class CudaCopyStream : public CopyStream {
 public:
  explicit CudaCopyStream(c10::DeviceIndex index)
      : index_(index), side_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)) {}

  // The bytes are allocated by `copy` itself, now, on this thread.
  void Start(int64_t /*bytes*/, std::function<std::vector<torch::Tensor>()> copy) override {
    c10::cuda::CUDAGuard guard(index_);
    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(index_);
    // The copy may land in memory the compute stream freed but has not finished reading: start after what the
    // compute stream has queued so far.
    at::cuda::CUDAEvent ready;
    ready.record(compute);
    ready.block(side_);
    Timed t{at::cuda::CUDAEvent(cudaEventDefault), at::cuda::CUDAEvent(cudaEventDefault)};
    t.start.record(side_);
    std::vector<torch::Tensor> made;
    {
      c10::cuda::CUDAStreamGuard on_side(side_);
      made = copy();
    }
    // Allocated on the side stream, read on the compute stream: the allocator must not hand this memory to the
    // side stream again before the compute stream is done with it.
    for (auto& m : made) m.record_stream(compute);
    t.done.record(side_);
    timed_.push_back(std::move(t));
    waiting_ = true;
  }

  double Wait() override {
    if (!waiting_) return 0;
    waiting_ = false;
    c10::cuda::CUDAGuard guard(index_);
    timed_.back().done.block(c10::cuda::getCurrentCUDAStream(index_));  // the device waits, the host does not
    return 0;
  }

  double Drain() override {
    double seconds = 0;
    while (!timed_.empty() && timed_.front().done.query()) {
      seconds += timed_.front().start.elapsed_time(timed_.front().done) / 1000.0;
      timed_.pop_front();
    }
    return seconds;
  }

 private:
  struct Timed {
    at::cuda::CUDAEvent start, done;
  };
  c10::DeviceIndex index_;
  c10::cuda::CUDAStream side_;
  std::deque<Timed> timed_;
  bool waiting_ = false;
};

class Cuda : public ComputeDevice {
 public:
  explicit Cuda(c10::DeviceIndex index) : index_(index) {
    cudaDeviceProp prop{};
    C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
    name_ = prop.name;
    total_ = static_cast<int64_t>(prop.totalGlobalMem);
    // LibTorch 2.x initialises the caching allocator for a device on its first allocation; its statistics and
    // memory fraction refuse a device before that.
    (void)torch::empty({1}, torch::TensorOptions().device(device()));
  }
  c10::Device device() const override { return c10::Device(c10::kCUDA, index_); }
  bool simulated() const override { return false; }
  std::string Describe() const override {
    return fmt::format("cuda:{} ({}, {}{})", index_, name_, FormatBytes(total_),
                       capacity_ > 0 ? fmt::format(", capacity {}", FormatBytes(capacity_)) : "");
  }
  DeviceMemoryStats Memory() const override {
    const auto stats = alloc::getDeviceStats(index_);
    DeviceMemoryStats s;
    s.allocated = stats.allocated_bytes[kAggregate].current;
    s.peak = stats.allocated_bytes[kAggregate].peak;
    s.reserved = stats.reserved_bytes[kAggregate].current;
    s.capacity = capacity_ > 0 ? capacity_ : total_;
    s.total = total_;
    return s;
  }
  void ResetPeak() override { alloc::resetPeakStats(index_); }
  void SetCapacity(int64_t bytes) override {
    // The caching allocator refuses allocations past this fraction of the device with its out-of-memory error.
    capacity_ = bytes > 0 ? std::min(bytes, total_) : 0;
    alloc::setMemoryFraction(capacity_ > 0 ? static_cast<double>(capacity_) / static_cast<double>(total_) : 1.0,
                             index_);
  }
  torch::Tensor HostCopy(const torch::Tensor& w) override {
    // Pinned pages let the side stream copy asynchronously; pageable memory would make every copy synchronous.
    return w.numel() == 0 || w.is_pinned() ? w : w.pin_memory();
  }
  torch::Tensor Upload(const torch::Tensor& host) override {
    return host.to(host.options().device(device()), /*non_blocking=*/host.is_pinned(), /*copy=*/true);
  }
  torch::Tensor Download(const torch::Tensor& t) override { return t.to(torch::kCPU); }
  std::unique_ptr<CopyStream> NewCopyStream() override { return std::make_unique<CudaCopyStream>(index_); }
  void Synchronize() override {
    c10::cuda::CUDAGuard guard(index_);
    C10_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::optional<OutOfMemory> TakeOutOfMemory(const std::exception& e) override {
    const std::string what = e.what();
    // TorchScript rethrows the allocator's c10::OutOfMemoryError as a plain error carrying its message.
    if (!dynamic_cast<const c10::OutOfMemoryError*>(&e) && what.find("CUDA out of memory") == std::string::npos)
      return std::nullopt;
    OutOfMemory oom;
    oom.requested = RequestedBytes(what);
    oom.used = Memory().allocated;
    oom.capacity = capacity_ > 0 ? capacity_ : total_;
    alloc::emptyCache();  // the next try (a cheaper strategy) starts from what is really in use
    return oom;
  }

 private:
  c10::DeviceIndex index_;
  std::string name_;
  int64_t total_ = 0;
  int64_t capacity_ = 0;
};

}  // namespace

int TorchCudaDevices() { return static_cast<int>(c10::cuda::device_count()); }

ComputeDevice& CudaDevice(int index) {
  static std::mutex mu;
  static std::array<std::unique_ptr<Cuda>, 64> devices;
  std::lock_guard<std::mutex> lock(mu);
  auto& d = devices.at(static_cast<size_t>(index));
  if (!d) d = std::make_unique<Cuda>(static_cast<c10::DeviceIndex>(index));
  return *d;
}

}  // namespace reel
