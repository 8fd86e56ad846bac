// A stand-in libnvidia-ml for gpu_host_test: two devices with fixed figures, device 1 lacking the newer entry
// points, so Nvml's fallbacks, list resizing and device mapping run on machines without a driver.
#include <strings.h>
#include <unistd.h>

#include <cstring>

namespace {

struct Device {
  const char* name;
  const char* uuid;
  const char* pci_bus_id;
};
Device devices[2] = {{"Fake GPU 0", "GPU-00000000-0000-0000-0000-000000000001", "00000000:01:00.0"},
                     {"Fake GPU 1", "GPU-00000000-0000-0000-0000-000000000002", "00000000:02:00.0"}};
constexpr unsigned long long kGiB = 1ull << 30, kMiB = 1ull << 20;

struct Memory {
  unsigned long long total, free, used;
};
struct MemoryV2 {
  unsigned int version;
  unsigned long long total, reserved, free, used;
};
struct Utilization {
  unsigned int gpu, memory;
};
struct ProcessV1 {
  unsigned int pid;
  unsigned long long used;
};
struct ProcessV2 {
  unsigned int pid;
  unsigned long long used;
  unsigned int gpu_instance, compute_instance;
};

int Index(void* d) { return d == &devices[0] ? 0 : d == &devices[1] ? 1 : -1; }

// 20 processes on device 0 (more than Nvml's first guess of 16): this process with 300 MiB, pid 4242 whose
// figure NVML withholds, and others.
template <typename Info>
int Processes(unsigned* count, Info* infos) {
  constexpr unsigned kCount = 20;
  if (*count < kCount) {
    *count = kCount;
    return 7;  // NVML_ERROR_INSUFFICIENT_SIZE
  }
  *count = kCount;
  for (unsigned i = 0; i < kCount; ++i) {
    infos[i] = Info{};
    infos[i].pid = 5000 + i;
    infos[i].used = (i + 1) * kMiB;
  }
  infos[3].pid = static_cast<unsigned>(getpid());
  infos[3].used = 300 * kMiB;
  infos[7].pid = 4242;
  infos[7].used = ~0ull;  // NVML_VALUE_NOT_AVAILABLE
  return 0;
}

}  // namespace

extern "C" {

int nvmlInit_v2() { return 0; }
int nvmlShutdown() { return 0; }
const char* nvmlErrorString(int r) {
  return r == 3 ? "Not Supported" : r == 13 ? "Function Not Found" : "Unknown Error";
}
int nvmlDeviceGetCount_v2(unsigned* n) { return *n = 2, 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned i, void** d) { return i < 2 ? (*d = &devices[i], 0) : 2; }
int nvmlDeviceGetHandleByPciBusId_v2(const char* id, void** d) {
  // NVML accepts CUDA's 4-digit domain as well as its own 8-digit one.
  for (auto& dev : devices)
    if (!strcasecmp(id, dev.pci_bus_id) || !strcasecmp(id, dev.pci_bus_id + 4)) return *d = &dev, 0;
  return 6;  // NVML_ERROR_NOT_FOUND
}
int nvmlDeviceGetHandleByUUID(const char* uuid, void** d) {
  for (auto& dev : devices)
    if (!strcmp(uuid, dev.uuid)) return *d = &dev, 0;
  return 6;
}
int nvmlDeviceGetName(void* d, char* out, unsigned n) { return strncpy(out, devices[Index(d)].name, n), 0; }
int nvmlDeviceGetUUID(void* d, char* out, unsigned n) { return strncpy(out, devices[Index(d)].uuid, n), 0; }
int nvmlDeviceGetMemoryInfo(void* d, Memory* m) { return *m = {16 * kGiB, 15 * kGiB, 1 * kGiB}, 0; }
int nvmlDeviceGetMemoryInfo_v2(void* d, MemoryV2* m) {
  if (Index(d) == 1) return 25;  // NVML_ERROR_ARGUMENT_VERSION_MISMATCH, as an older driver answers
  if (m->version != (sizeof(MemoryV2) | (2u << 24))) return 25;
  return *m = {m->version, 16 * kGiB, 512 * kMiB, 15 * kGiB, 1 * kGiB}, 0;  // used includes reserved
}
int nvmlDeviceGetUtilizationRates(void* d, Utilization* u) { return Index(d) == 1 ? 3 : (*u = {37, 12}, 0); }
int nvmlDeviceGetComputeRunningProcesses_v3(void* d, unsigned* count, ProcessV2* infos) {
  return Index(d) == 1 ? 13 : Processes(count, infos);
}
int nvmlDeviceGetComputeRunningProcesses(void* d, unsigned* count, ProcessV1* infos) { return Processes(count, infos); }

}  // extern "C"
