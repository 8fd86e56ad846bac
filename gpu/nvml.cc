// NVML through dlopen: the few types and entry points Reel uses are declared here, with nvml.h's layouts,
// because the toolkit may not ship nvml.h and the library must stay optional at run time.
#include "gpu/nvml.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "common/error.h"

namespace reel {
namespace {

using nvmlReturn_t = int;
using nvmlDevice_t = void*;  // a pointer to an opaque struct in nvml.h
constexpr nvmlReturn_t kSuccess = 0;
constexpr nvmlReturn_t kInsufficientSize = 7;
constexpr nvmlReturn_t kFunctionNotFound = 13;
constexpr unsigned long long kValueNotAvailable = ~0ULL;
constexpr unsigned kStringBytes = 96;  // NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_DEVICE_UUID_V2_BUFFER_SIZE

struct MemoryV1 {
  unsigned long long total, free, used;
};
struct MemoryV2 {
  unsigned int version;
  unsigned long long total, reserved, free, used;
};
constexpr unsigned kMemoryV2Version = sizeof(MemoryV2) | (2u << 24);  // NVML_STRUCT_VERSION(Memory, 2)
struct UtilizationV1 {
  unsigned int gpu, memory;
};
struct ProcessV1 {  // nvmlDeviceGetComputeRunningProcesses (unversioned)
  unsigned int pid;
  unsigned long long used;
};
struct ProcessV2 {  // _v2 and _v3 both take this layout
  unsigned int pid;
  unsigned long long used;
  unsigned int gpu_instance, compute_instance;
};
template <typename Info>
using GetProcesses = nvmlReturn_t (*)(nvmlDevice_t, unsigned*, Info*);

// (pid, bytes) of the compute processes on `d`; the list can grow between the sizing call and the filling one.
template <typename Info>
nvmlReturn_t ListProcesses(GetProcesses<Info> get, nvmlDevice_t d,
                           std::vector<std::pair<unsigned, unsigned long long>>* out) {
  std::vector<Info> infos(16);
  nvmlReturn_t r = kInsufficientSize;
  for (int tries = 0; r == kInsufficientSize && tries < 4; ++tries) {
    unsigned n = static_cast<unsigned>(infos.size());
    r = get(d, &n, infos.data());
    if (r == kInsufficientSize) infos.resize(n + 16);
    if (r == kSuccess)
      for (unsigned i = 0; i < n; ++i) out->emplace_back(infos[i].pid, infos[i].used);
  }
  return r;
}

}  // namespace

struct Nvml::Api {
  nvmlReturn_t (*init)();
  nvmlReturn_t (*shutdown)();
  const char* (*error_string)(nvmlReturn_t);
  nvmlReturn_t (*count)(unsigned*);
  nvmlReturn_t (*by_index)(unsigned, nvmlDevice_t*);
  nvmlReturn_t (*by_pci_bus_id)(const char*, nvmlDevice_t*);
  nvmlReturn_t (*by_uuid)(const char*, nvmlDevice_t*);
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned);
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned);
  nvmlReturn_t (*memory)(nvmlDevice_t, MemoryV1*);
  nvmlReturn_t (*utilization)(nvmlDevice_t, UtilizationV1*);
  // Optional: newer entry points first, each may be missing from an older driver.
  nvmlReturn_t (*memory_v2)(nvmlDevice_t, MemoryV2*);
  GetProcesses<ProcessV2> processes_v3, processes_v2;
  GetProcesses<ProcessV1> processes_v1;
};

Nvml::Nvml(void* library, std::unique_ptr<Api> api) : library_(library), api_(std::move(api)) {}

Nvml::~Nvml() {
  api_->shutdown();
  dlclose(library_);
}

std::unique_ptr<Nvml> Nvml::Open(std::string* reason, const char* library) {
  auto fail = [&](const std::string& why) {
    if (reason) *reason = "NVML unavailable: " + why;
    return nullptr;
  };
  dlerror();
  void* lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
  if (!lib) return fail(dlerror());

  auto api = std::make_unique<Api>();
  const char* missing = nullptr;
  auto load = [&](const char* symbol, auto* fn, bool required = true) {
    *fn = reinterpret_cast<std::remove_reference_t<decltype(*fn)>>(dlsym(lib, symbol));
    if (!*fn && required && !missing) missing = symbol;
  };
  load("nvmlInit_v2", &api->init);
  load("nvmlShutdown", &api->shutdown);
  load("nvmlErrorString", &api->error_string);
  load("nvmlDeviceGetCount_v2", &api->count);
  load("nvmlDeviceGetHandleByIndex_v2", &api->by_index);
  load("nvmlDeviceGetHandleByPciBusId_v2", &api->by_pci_bus_id);
  load("nvmlDeviceGetHandleByUUID", &api->by_uuid);
  load("nvmlDeviceGetName", &api->name);
  load("nvmlDeviceGetUUID", &api->uuid);
  load("nvmlDeviceGetMemoryInfo", &api->memory);
  load("nvmlDeviceGetUtilizationRates", &api->utilization);
  load("nvmlDeviceGetMemoryInfo_v2", &api->memory_v2, false);
  load("nvmlDeviceGetComputeRunningProcesses_v3", &api->processes_v3, false);
  load("nvmlDeviceGetComputeRunningProcesses_v2", &api->processes_v2, false);
  load("nvmlDeviceGetComputeRunningProcesses", &api->processes_v1, false);
  if (missing) {
    dlclose(lib);
    return fail(fmt::format("{} has no {} (a driver older than NVML 10?)", library, missing));
  }
  if (nvmlReturn_t r = api->init(); r != kSuccess) {
    const std::string why = fmt::format("nvmlInit: {}", api->error_string(r));
    dlclose(lib);
    return fail(why);
  }

  std::unique_ptr<Nvml> nvml(new Nvml(lib, std::move(api)));  // from here its destructor shuts NVML down
  const Api& a = *nvml->api_;
  unsigned n = 0;
  if (nvmlReturn_t r = a.count(&n); r != kSuccess)
    return fail(fmt::format("nvmlDeviceGetCount: {}", a.error_string(r)));
  for (unsigned i = 0; i < n; ++i) {
    nvmlDevice_t d = nullptr;
    if (nvmlReturn_t r = a.by_index(i, &d); r != kSuccess)
      return fail(fmt::format("nvmlDeviceGetHandleByIndex({}): {}", i, a.error_string(r)));
    nvml->devices_.push_back(d);
  }
  if (reason) reason->clear();
  return nvml;
}

void* Nvml::Handle(int device) const {
  if (device < 0 || device >= device_count())
    throw InvalidArgument(
        fmt::format("NVML device {}: accepted 0 to {} (the devices NVML reports)", device, device_count() - 1));
  return devices_[device];
}

void Nvml::Fail(int device, const char* call, int result) const {
  throw Unavailable(fmt::format("NVML device {}: {}: {}", device, call, api_->error_string(result)));
}

std::string Nvml::Name(int device) const {
  char buf[kStringBytes] = {};
  if (nvmlReturn_t r = api_->name(Handle(device), buf, sizeof buf); r != kSuccess) Fail(device, "nvmlDeviceGetName", r);
  return buf;
}

std::string Nvml::Uuid(int device) const {
  char buf[kStringBytes] = {};
  if (nvmlReturn_t r = api_->uuid(Handle(device), buf, sizeof buf); r != kSuccess) Fail(device, "nvmlDeviceGetUUID", r);
  return buf;
}

NvmlMemoryInfo Nvml::Memory(int device) const {
  nvmlDevice_t d = Handle(device);
  if (api_->memory_v2) {
    MemoryV2 m{};
    m.version = kMemoryV2Version;
    if (api_->memory_v2(d, &m) == kSuccess)  // else the unversioned call below says what is wrong
      return {static_cast<int64_t>(m.total), static_cast<int64_t>(m.reserved), static_cast<int64_t>(m.used),
              static_cast<int64_t>(m.free)};
  }
  MemoryV1 m{};
  if (nvmlReturn_t r = api_->memory(d, &m); r != kSuccess) Fail(device, "nvmlDeviceGetMemoryInfo", r);
  return {static_cast<int64_t>(m.total), 0, static_cast<int64_t>(m.used), static_cast<int64_t>(m.free)};
}

NvmlUtilization Nvml::Utilization(int device) const {
  UtilizationV1 u{};
  if (nvmlReturn_t r = api_->utilization(Handle(device), &u); r != kSuccess)
    Fail(device, "nvmlDeviceGetUtilizationRates", r);
  return {static_cast<int>(u.gpu), static_cast<int>(u.memory)};
}

std::optional<int64_t> Nvml::ProcessMemory(int device, int pid) const {
  nvmlDevice_t d = Handle(device);
  std::vector<std::pair<unsigned, unsigned long long>> processes;
  nvmlReturn_t r = kFunctionNotFound;
  if (api_->processes_v3) r = ListProcesses(api_->processes_v3, d, &processes);
  if (r == kFunctionNotFound && api_->processes_v2) r = ListProcesses(api_->processes_v2, d, &processes);
  if (r == kFunctionNotFound && api_->processes_v1) r = ListProcesses(api_->processes_v1, d, &processes);
  if (r != kSuccess) Fail(device, "nvmlDeviceGetComputeRunningProcesses", r);
  for (const auto& [p, bytes] : processes)
    if (static_cast<int>(p) == pid) {
      if (bytes == kValueNotAvailable) return std::nullopt;
      return static_cast<int64_t>(bytes);
    }
  return std::nullopt;
}

std::optional<int> Nvml::IndexOf(const std::string& pci_bus_id, const std::string& uuid) const {
  nvmlDevice_t d = nullptr;
  if ((pci_bus_id.empty() || api_->by_pci_bus_id(pci_bus_id.c_str(), &d) != kSuccess) &&
      (uuid.empty() || api_->by_uuid(uuid.c_str(), &d) != kSuccess))
    return std::nullopt;
  auto it = std::find(devices_.begin(), devices_.end(), d);
  if (it == devices_.end()) return std::nullopt;
  return static_cast<int>(it - devices_.begin());
}

}  // namespace reel
