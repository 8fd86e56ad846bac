// NVML, the driver's management library, loaded at run time (dlopen) so Reel links and starts on machines
// without the NVIDIA driver; it reports what CUDA cannot: other processes' memory and the device's utilisation.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace reel {

// Device memory as NVML sees it, every process on the device together.
struct NvmlMemoryInfo {
  int64_t total_bytes = 0;
  int64_t reserved_bytes = 0;  // held by the driver and firmware; 0 where the driver lacks nvmlDeviceGetMemoryInfo_v2
  int64_t used_bytes = 0;      // includes reserved_bytes
  int64_t free_bytes = 0;
};

// Percent of NVML's last sample period (1/6 s to 1 s) that kernels ran / device memory was read or written.
struct NvmlUtilization {
  int gpu_percent = 0;
  int memory_percent = 0;
};

class Nvml {
 public:
  // Loads `library` and initialises NVML. Null with `reason` set when it cannot: "NVML unavailable: " then
  // dlopen's message ("libnvidia-ml.so.1: cannot open shared object file: ..."), the missing symbol, or the
  // failing call and nvmlErrorString's text.
  static std::unique_ptr<Nvml> Open(std::string* reason, const char* library = "libnvidia-ml.so.1");
  ~Nvml();  // nvmlShutdown, dlclose
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  // Devices in NVML's order (PCI bus order), which need not be CUDA's: map with IndexOf.
  int device_count() const { return static_cast<int>(devices_.size()); }

  // Each throws Error: InvalidArgument for an index outside 0..device_count()-1, Unavailable naming the NVML
  // call and its error text.
  std::string Name(int device) const;
  std::string Uuid(int device) const;  // "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
  NvmlMemoryInfo Memory(int device) const;
  NvmlUtilization Utilization(int device) const;
  // Device memory the process `pid` holds on the device; nullopt when it has no context there or NVML withholds
  // the figure (no permission, or a PID from another PID namespace).
  std::optional<int64_t> ProcessMemory(int device, int pid) const;

  // The NVML index of the device with this PCI bus id ("0000:3B:00.0", as cudaDeviceGetPCIBusId writes it) or,
  // failing that, this UUID (as NVML writes it); nullopt when neither names a device. Either may be empty.
  std::optional<int> IndexOf(const std::string& pci_bus_id, const std::string& uuid) const;

 private:
  struct Api;
  Nvml(void* library, std::unique_ptr<Api> api);
  void* Handle(int device) const;
  [[noreturn]] void Fail(int device, const char* call, int result) const;

  void* library_;
  std::unique_ptr<Api> api_;
  std::vector<void*> devices_;  // nvmlDevice_t by NVML index
};

}  // namespace reel
