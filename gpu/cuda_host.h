// The CUDA runtime from host code: device queries, memory figures, pinned host buffers, streams with events.
// Works on machines without a GPU or driver: the count is 0 with the reason, everything else throws Error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "common/error.h"

namespace reel {

// Out of memory is kDeviceOutOfMemory, as on the simulated device; no driver or no device kUnavailable; a bad
// device index or argument kInvalidArgument; anything else kInternal.
ErrorKind CudaErrorKind(cudaError_t e);
// Throws Error(CudaErrorKind(e), "<what>: <error name>: <error text>") unless `e` is cudaSuccess. Clears the
// runtime's last error, so a failed allocation does not resurface at the next unrelated check.
void CheckCuda(cudaError_t e, const std::string& what);

struct CudaDeviceCount {
  int count = 0;
  std::string reason;  // why count is 0: "cudaGetDeviceCount: cudaErrorInsufficientDriver: ..."; empty otherwise
};
CudaDeviceCount CudaDevices();

struct CudaDeviceProperties {
  int index = 0;
  std::string name;
  int64_t total_memory_bytes = 0;
  int major = 0, minor = 0;  // compute capability
  std::string pci_bus_id;    // "0000:3B:00.0"
  std::string uuid;          // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as NVML writes it
};
// Throws Error: Unavailable without a device, InvalidArgument for an index outside 0..count-1.
CudaDeviceProperties CudaProperties(int device);

struct CudaMemoryInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
  int64_t used_bytes() const { return total_bytes - free_bytes; }  // every process on the device
};
// cudaMemGetInfo on `device` (creating this process's context there if it has none). Throws as CudaProperties.
CudaMemoryInfo CudaMemory(int device);

// Page-locked host memory: copies between it and a device run asynchronously and at full bus speed.
class PinnedHostBuffer {
 public:
  // Throws Error: kDeviceOutOfMemory when the driver cannot pin `bytes`, Unavailable without a driver,
  // InvalidArgument for a negative size.
  explicit PinnedHostBuffer(int64_t bytes, unsigned flags = cudaHostAllocDefault);
  ~PinnedHostBuffer();
  PinnedHostBuffer(PinnedHostBuffer&& other) noexcept;
  PinnedHostBuffer& operator=(PinnedHostBuffer&& other) noexcept;

  void* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  int64_t size_ = 0;
};

// A non-blocking stream and an event on one device: queue work on stream(), Record() marks where it ends, Done()
// asks without blocking (how a server loop sees a transfer finish) and Wait() blocks.
class CudaStreamEvent {
 public:
  explicit CudaStreamEvent(int device);  // throws as CudaProperties
  ~CudaStreamEvent();
  CudaStreamEvent(const CudaStreamEvent&) = delete;
  CudaStreamEvent& operator=(const CudaStreamEvent&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cudaEvent_t event() const { return event_; }

  void Record();
  bool Done() const;  // true when everything before the last Record() has run, or nothing was recorded
  void Wait() const;
  void MakeWait(cudaStream_t other) const;  // `other` runs nothing queued after this call before the event

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t event_ = nullptr;
};

// Makes `device` current on this thread for the scope and restores the previous one. Throws as CudaProperties.
class CudaDeviceScope {
 public:
  explicit CudaDeviceScope(int device);
  ~CudaDeviceScope();
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  int previous_ = 0;
  int device_;
};

}  // namespace reel
