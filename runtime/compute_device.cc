#include "runtime/compute_device.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common/error.h"
#include "profiler/host_memory.h"

namespace reel {

#ifdef REEL_HAVE_CUDA
// cuda_device.cc
ComputeDevice& CudaDevice(int index);
int TorchCudaDevices();
#endif

namespace {

using Clock = std::chrono::steady_clock;

// One long-lived copy thread per streaming stage: starting a thread per block would cost more than copying a
// small block. The thread's allocations are device bytes, as the compute thread's are.
class ThreadCopyStream : public CopyStream {
 public:
  ThreadCopyStream() {
    thread_ = std::thread([this] {
      for (;;) {
        std::packaged_task<double()> task;
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
          if (queue_.empty()) return;
          task = std::move(queue_.front());
          queue_.pop_front();
        }
        task();
      }
    });
  }
  ~ThreadCopyStream() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Start(int64_t bytes, std::function<std::vector<torch::Tensor>()> copy) override {
    auto paid = std::make_shared<DevicePrepayment>(bytes);
    std::packaged_task<double()> task([copy = std::move(copy), paid] {
      const auto t0 = Clock::now();
      DeviceScope device;
      PrepaidScope prepaid(paid.get());
      copy();
      return std::chrono::duration<double>(Clock::now() - t0).count();
    });
    inflight_ = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  double Wait() override { return inflight_.valid() ? inflight_.get() : 0.0; }  // rethrows the copy's failure

 private:
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<double()>> queue_;
  bool stop_ = false;
  std::future<double> inflight_;
};

class Simulated : public ComputeDevice {
 public:
  c10::Device device() const override { return c10::Device(c10::kCPU); }
  bool simulated() const override { return true; }
  std::string Describe() const override {
    const int64_t cap = DeviceMemory::Get().capacity();
    return cap > 0 ? fmt::format("cpu (simulated, capacity {})", FormatBytes(cap)) : "cpu (simulated, unlimited)";
  }
  DeviceMemoryStats Memory() const override {
    const auto& m = DeviceMemory::Get();
    DeviceMemoryStats s;
    s.allocated = s.reserved = m.used();
    s.peak = m.peak();
    s.capacity = m.capacity();
    return s;
  }
  void ResetPeak() override { DeviceMemory::Get().ResetPeak(); }
  void SetCapacity(int64_t bytes) override { DeviceMemory::Get().SetCapacity(bytes); }
  torch::Tensor HostCopy(const torch::Tensor& w) override { return w; }
  torch::Tensor Upload(const torch::Tensor& host) override {
    DeviceScope device;
    WeightsScope weights;
    return host.clone();
  }
  torch::Tensor Download(const torch::Tensor& t) override {
    HostScope host;
    return t.clone();
  }
  std::unique_ptr<CopyStream> NewCopyStream() override { return std::make_unique<ThreadCopyStream>(); }
  void Synchronize() override {}
  std::optional<OutOfMemory> TakeOutOfMemory(const std::exception&) override { return reel::TakeOutOfMemory(); }
};

}  // namespace

ComputeDevice& SimulatedDevice() {
  static Simulated* device = new Simulated();
  DeviceMemory::Get();
  return *device;
}

bool CudaBuilt() {
#ifdef REEL_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int CudaDeviceCount() {
#ifdef REEL_HAVE_CUDA
  return TorchCudaDevices();
#else
  return 0;
#endif
}

ComputeDevice& OpenComputeDevice(const std::string& spec, const std::string& flag) {
  if (spec == "cpu") return SimulatedDevice();
  if (spec.rfind("cuda", 0) == 0) {
    int index = 0;
    bool ok = spec == "cuda";
    if (!ok && spec.size() > 5 && spec[4] == ':') {
      try {
        size_t used = 0;
        index = std::stoi(spec.substr(5), &used);
        ok = used == spec.size() - 5 && index >= 0;
      } catch (const std::exception&) {
      }
    }
    if (!ok) throw InvalidArgument(fmt::format("{} {}: accepted cpu or cuda:N (N a device index)", flag, spec));
    if (!CudaBuilt())
      throw InvalidArgument(fmt::format("{} {}: accepted cpu in this build (its LibTorch has no CUDA; rebuild "
                                        "against a CUDA-enabled LibTorch, docs/GPU.md)",
                                        flag, spec));
    const int n = CudaDeviceCount();
    if (index >= n)
      throw InvalidArgument(fmt::format("{} {}: accepted cpu{} (this machine has {} CUDA device{})", flag, spec,
                                        n > 0 ? fmt::format(" or cuda:0..cuda:{}", n - 1) : "", n, n == 1 ? "" : "s"));
#ifdef REEL_HAVE_CUDA
    return CudaDevice(index);
#endif
  }
  throw InvalidArgument(fmt::format("{} {}: accepted cpu or cuda:N (N a device index)", flag, spec));
}

}  // namespace reel
