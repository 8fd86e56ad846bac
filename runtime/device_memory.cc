#include "runtime/device_memory.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <mutex>

#include "common/huge_pages.h"

namespace reel {

namespace {

thread_local int device_depth = 0;
thread_local int weights_depth = 0;
thread_local DevicePrepayment* prepaid = nullptr;
// Global, not per thread: an out-of-memory on the copy thread is reported by the compute thread.
std::mutex oom_mutex;
std::optional<OutOfMemory> last_oom;

// LibTorch requires a CPU allocator's context to be its data pointer (raw_allocate asserts it), so each
// allocation carries its bookkeeping in a header just before the data: no table, no lock on the hot path.
struct alignas(64) Header {
  void* base;              // what the wrapped allocator returned
  c10::DeleterFnPtr free;  // and how to give it back
  int64_t bytes;
  bool device;
};
static_assert(sizeof(Header) == 64, "the header keeps the data 64-byte aligned");

void DeleteTracked(void* data) {
  if (data == nullptr) return;
  const Header h = *reinterpret_cast<Header*>(static_cast<char*>(data) - sizeof(Header));
  if (h.device)
    DeviceMemory::Get().Release(h.bytes);
  else
    DeviceMemory::Get().AddHost(-h.bytes);
  h.free(h.base);
}

// Weights of 32 MiB or more (made inside a WeightsScope: read from the package, or copied onto the device) are
// advised into transparent huge pages. Debian's kernel gives huge pages only to memory that asks (THP mode
// "madvise"), and GEMMs over a real-width block's weights walk the TLB far less in 2 MiB pages: every stage of
// every package ran 5-13% faster (docs/BENCHMARKS.md). Activations are not advised: made and freed on every call,
// they paid more for fresh huge pages than they gained (the tiny decode 1.3x slower). Only a hint.
constexpr size_t kHugePageWeightBytes = size_t{32} << 20;

// Wraps the default CPU allocator and records every allocation as device or host bytes.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* base) : base_(base) {}

  // LibTorch 1.13 declares allocate() const; 2.x declares it non-const and adds copy_data(). Both spellings are
  // here, without `override`, so one source builds against either.
  c10::DataPtr allocate(size_t n) const { return Allocate(n); }
  c10::DataPtr allocate(size_t n) { return Allocate(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

  c10::DeleterFnPtr raw_deleter() const override { return &DeleteTracked; }

 private:
  c10::DataPtr Allocate(size_t n) const {
    const bool device = device_depth > 0;
    if (device) {
      DevicePrepayment* paid = prepaid;
      const int64_t drawn = paid ? paid->Take(static_cast<int64_t>(n)) : 0;
      if (drawn < static_cast<int64_t>(n) && !DeviceMemory::Get().Reserve(static_cast<int64_t>(n) - drawn)) {
        if (drawn > 0) paid->Return(drawn);
        TORCH_CHECK(false, "reel device out of memory: tried to allocate ", n, " bytes");
      }
    }
    c10::DataPtr inner;
    try {
      inner = base_->allocate(n + sizeof(Header));
    } catch (...) {
      if (device) DeviceMemory::Get().Release(static_cast<int64_t>(n));
      throw;
    }
    void* base = inner.get();
    TORCH_CHECK(base != nullptr && inner.get_context() == base, "reel: unexpected CPU allocation layout");
    if (weights_depth > 0) AdviseHugePages(base, n + sizeof(Header), kHugePageWeightBytes);
    auto* header = static_cast<Header*>(base);
    *header = Header{base, inner.get_deleter(), static_cast<int64_t>(n), device};
    const c10::Device dev = inner.device();
    inner.release_context();
    if (!device) DeviceMemory::Get().AddHost(static_cast<int64_t>(n));
    void* data = static_cast<char*>(base) + sizeof(Header);
    return c10::DataPtr(data, data, &DeleteTracked, dev);
  }

  c10::Allocator* base_;
};

}  // namespace

DeviceMemory& DeviceMemory::Get() {
  static DeviceMemory* instance = [] {
    // Never destroyed: LibTorch frees (and may allocate) CPU tensors during static destruction at exit.
    static TrackingAllocator* allocator = new TrackingAllocator(c10::GetDefaultCPUAllocator());
    c10::SetCPUAllocator(allocator, /*priority=*/100);
    return new DeviceMemory();
  }();
  return *instance;
}

bool DeviceMemory::Reserve(int64_t bytes) {
  const int64_t cap = capacity_;
  int64_t now = used_.fetch_add(bytes) + bytes;
  if (cap > 0 && now > cap) {
    used_ -= bytes;
    std::lock_guard<std::mutex> lock(oom_mutex);
    last_oom = OutOfMemory{bytes, now - bytes, cap};
    return false;
  }
  int64_t p = peak_;
  while (now > p && !peak_.compare_exchange_weak(p, now)) {
  }
  return true;
}

DeviceScope::DeviceScope() {
  DeviceMemory::Get();
  ++device_depth;
}
DeviceScope::~DeviceScope() { --device_depth; }
bool DeviceScope::active() { return device_depth > 0; }

WeightsScope::WeightsScope() {
  DeviceMemory::Get();  // the tracking allocator is installed
  ++weights_depth;
}
WeightsScope::~WeightsScope() { --weights_depth; }

HostScope::HostScope() : saved_(device_depth) { device_depth = 0; }
HostScope::~HostScope() { device_depth = saved_; }

DevicePrepayment::DevicePrepayment(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "reel: a negative prepayment");
  TORCH_CHECK(DeviceMemory::Get().Reserve(bytes), "reel device out of memory: tried to allocate ", bytes, " bytes");
  left_ = bytes;
}

DevicePrepayment::~DevicePrepayment() { DeviceMemory::Get().Release(left_.exchange(0)); }

int64_t DevicePrepayment::Take(int64_t n) {
  int64_t left = left_;
  while (!left_.compare_exchange_weak(left, left - std::min(left, n))) {
  }
  return std::min(left, n);
}

PrepaidScope::PrepaidScope(DevicePrepayment* paid) : saved_(prepaid) { prepaid = paid; }
PrepaidScope::~PrepaidScope() { prepaid = saved_; }

std::optional<OutOfMemory> TakeOutOfMemory() {
  std::lock_guard<std::mutex> lock(oom_mutex);
  auto o = last_oom;
  last_oom.reset();
  return o;
}

}  // namespace reel
