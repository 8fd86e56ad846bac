// The device a Runtime computes on: the simulated device (host memory with a capacity, accounted by the tracking
// allocator of device_memory.h) or a CUDA device through LibTorch's caching allocator (cuda_device.cc, compiled
// only against a CUDA-enabled LibTorch). Stage executors place weights and stream blocks through this interface.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "runtime/device_memory.h"

namespace reel {

struct DeviceMemoryStats {
  int64_t allocated = 0;  // bytes in live tensors
  int64_t reserved = 0;   // bytes the allocator holds from the device (equals allocated on the simulated device)
  int64_t peak = 0;       // peak allocated since the last ResetPeak
  int64_t capacity = 0;   // what this process may use (0 = the whole device, unlimited when simulated)
  int64_t total = 0;      // the device's memory (0 when simulated)
};

// Copies that overlap compute: the next block's weights are placed while the current block runs.
class CopyStream {
 public:
  virtual ~CopyStream() = default;
  // Starts `copy`, which places one block on the device and returns the device tensors it made. `bytes`: what
  // those take. A GPU allocates them now, as the copy is queued on this thread; the simulated device counts them
  // now too (DevicePrepayment) and its copy thread's allocations draw on that, so a stage's peak does not depend
  // on how far the copy thread has got. A copy that does not fit fails here on both.
  virtual void Start(int64_t bytes, std::function<std::vector<torch::Tensor>()> copy) = 0;
  // Makes the compute that follows wait for the started copy (on CUDA without blocking the host), rethrowing
  // its failure. Returns the copy's seconds when known now (the simulated device's copy thread), else 0 and the
  // time is collected by Drain.
  virtual double Wait() = 0;
  // Seconds of copies completed since the last Drain whose time Wait could not report (CUDA event timings).
  virtual double Drain() { return 0; }
};

class ComputeDevice {
 public:
  virtual ~ComputeDevice() = default;
  virtual c10::Device device() const = 0;
  virtual bool simulated() const = 0;
  // "cpu (simulated, capacity 2 GiB)", "cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)".
  virtual std::string Describe() const = 0;
  virtual DeviceMemoryStats Memory() const = 0;
  virtual void ResetPeak() = 0;
  // Limits the bytes this process may hold on the device (0 = no limit beyond the device's).
  virtual void SetCapacity(int64_t bytes) = 0;
  // The host copy a weight keeps for placing it again: pinned on CUDA so copies are asynchronous.
  virtual torch::Tensor HostCopy(const torch::Tensor& weight) = 0;
  // A copy of a host tensor on the device, ordered on the current stream.
  virtual torch::Tensor Upload(const torch::Tensor& host) = 0;
  // A copy of a device tensor on the host (outside the device's accounting).
  virtual torch::Tensor Download(const torch::Tensor& t) = 0;
  virtual std::unique_ptr<CopyStream> NewCopyStream() = 0;
  // Waits for the device's queued work (timing boundaries).
  virtual void Synchronize() = 0;
  // Whether `e` (as thrown, or as the TorchScript interpreter rethrows it) is this device running out of memory;
  // when it is, returns the figures and frees what the allocator caches so the next try starts clean.
  virtual std::optional<OutOfMemory> TakeOutOfMemory(const std::exception& e) = 0;
};

// The process's simulated device (host memory accounted by DeviceMemory).
ComputeDevice& SimulatedDevice();

// "cpu" (the simulated device) or "cuda:N". InvalidArgument naming `flag` for anything else, for a CUDA device
// in a build without CUDA, or for a device index the machine does not have.
ComputeDevice& OpenComputeDevice(const std::string& spec, const std::string& flag = "--device");

// Whether this build can run on CUDA devices, and how many it sees (0 without CUDA).
bool CudaBuilt();
int CudaDeviceCount();

}  // namespace reel
