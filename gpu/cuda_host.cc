// CUDA runtime calls turned into Reel's errors. Every entry point checks the device index first, so a machine
// without a GPU gets one clear Unavailable naming the CUDA error rather than a failure deep in a call.
#include "gpu/cuda_host.h"

#include <fmt/format.h>

#include <utility>

namespace reel {
namespace {

std::string CudaErrorText(cudaError_t e) { return fmt::format("{}: {}", cudaGetErrorName(e), cudaGetErrorString(e)); }

void CheckDevice(int device) {
  const CudaDeviceCount c = CudaDevices();
  if (c.count == 0) throw Unavailable(fmt::format("CUDA device {}: no CUDA device ({})", device, c.reason));
  if (device < 0 || device >= c.count)
    throw InvalidArgument(fmt::format("CUDA device {}: accepted 0 to {} (the visible devices)", device, c.count - 1));
}

// NVML's spelling of a UUID: "GPU-" and the 16 bytes as 8-4-4-4-12 lowercase hex digits.
std::string FormatUuid(const cudaUUID_t& u) {
  std::string s = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", static_cast<unsigned char>(u.bytes[i]));
  }
  return s;
}

}  // namespace

ErrorKind CudaErrorKind(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return ErrorKind::kDeviceOutOfMemory;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
    case cudaErrorStubLibrary:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorDeviceNotLicensed:
    case cudaErrorSystemNotReady:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return ErrorKind::kUnavailable;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return ErrorKind::kInvalidArgument;
    default:
      return ErrorKind::kInternal;
  }
}

void CheckCuda(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();
  throw Error(CudaErrorKind(e), fmt::format("{}: {}", what, CudaErrorText(e)));
}

CudaDeviceCount CudaDevices() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);  // leaves n untouched on failure
  if (e != cudaSuccess) {
    cudaGetLastError();
    return {0, "cudaGetDeviceCount: " + CudaErrorText(e)};
  }
  if (n == 0) return {0, "cudaGetDeviceCount: 0 devices"};
  return {n, ""};
}

CudaDeviceProperties CudaProperties(int device) {
  CheckDevice(device);
  cudaDeviceProp p{};
  CheckCuda(cudaGetDeviceProperties(&p, device), fmt::format("CUDA device {}: cudaGetDeviceProperties", device));
  char bus_id[32] = {};
  CheckCuda(cudaDeviceGetPCIBusId(bus_id, sizeof bus_id, device),
            fmt::format("CUDA device {}: cudaDeviceGetPCIBusId", device));
  return {device, p.name, static_cast<int64_t>(p.totalGlobalMem), p.major, p.minor, bus_id, FormatUuid(p.uuid)};
}

CudaMemoryInfo CudaMemory(int device) {
  CudaDeviceScope scope(device);
  size_t free = 0, total = 0;
  CheckCuda(cudaMemGetInfo(&free, &total), fmt::format("CUDA device {}: cudaMemGetInfo", device));
  return {static_cast<int64_t>(free), static_cast<int64_t>(total)};
}

PinnedHostBuffer::PinnedHostBuffer(int64_t bytes, unsigned flags) {
  if (bytes < 0) throw InvalidArgument(fmt::format("pinned host buffer of {} bytes: accepted 0 bytes or more", bytes));
  if (bytes == 0) return;
  CheckCuda(cudaHostAlloc(&data_, static_cast<size_t>(bytes), flags),
            fmt::format("pinned host buffer of {} bytes: cudaHostAlloc", bytes));
  size_ = bytes;
}

PinnedHostBuffer::~PinnedHostBuffer() {
  if (data_) cudaFreeHost(data_);
}

PinnedHostBuffer::PinnedHostBuffer(PinnedHostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

PinnedHostBuffer& PinnedHostBuffer::operator=(PinnedHostBuffer&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  return *this;
}

CudaStreamEvent::CudaStreamEvent(int device) : device_(device) {
  CudaDeviceScope scope(device);
  CheckCuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
            fmt::format("CUDA device {}: cudaStreamCreate", device));
  if (cudaError_t e = cudaEventCreateWithFlags(&event_, cudaEventDisableTiming); e != cudaSuccess) {
    cudaStreamDestroy(stream_);
    CheckCuda(e, fmt::format("CUDA device {}: cudaEventCreate", device));
  }
}

CudaStreamEvent::~CudaStreamEvent() {
  cudaEventDestroy(event_);
  cudaStreamDestroy(stream_);
}

void CudaStreamEvent::Record() { CheckCuda(cudaEventRecord(event_, stream_), "cudaEventRecord"); }

bool CudaStreamEvent::Done() const {
  const cudaError_t e = cudaEventQuery(event_);
  if (e == cudaErrorNotReady) return false;
  CheckCuda(e, "cudaEventQuery");
  return true;
}

void CudaStreamEvent::Wait() const { CheckCuda(cudaEventSynchronize(event_), "cudaEventSynchronize"); }

void CudaStreamEvent::MakeWait(cudaStream_t other) const {
  CheckCuda(cudaStreamWaitEvent(other, event_, 0), "cudaStreamWaitEvent");
}

CudaDeviceScope::CudaDeviceScope(int device) : device_(device) {
  CheckDevice(device);
  CheckCuda(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device) CheckCuda(cudaSetDevice(device), fmt::format("CUDA device {}: cudaSetDevice", device));
}

CudaDeviceScope::~CudaDeviceScope() {
  if (previous_ != device_) cudaSetDevice(previous_);
}

}  // namespace reel
