// The stage runtime on the device under test: cuda:0 where this build has CUDA and the machine a GPU (the GPU
// check), else the simulated device. The same assertions hold on both: every strategy gives the same frames, an
// out-of-memory is the runtime's DeviceOutOfMemory and leaves the device usable, and the allocator's figures
// account the bytes placed. Cases that only mean something on CUDA say why they skip.
#include <cstdlib>
#include <future>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/error.h"
#ifdef REEL_HAVE_CUDA_TOOLKIT
#include <unistd.h>

#include "gpu/cuda_host.h"
#include "gpu/nvml.h"
#endif
#include "models/synth.h"
#include "runtime/compute_device.h"
#include "runtime/pipeline.h"
#include "runtime/sequence_parallel.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using reel::testing::ScratchDir;

ComputeDevice& DeviceUnderTest() {
  if (const char* d = std::getenv("REEL_TEST_DEVICE"); d && *d) return OpenComputeDevice(d, "REEL_TEST_DEVICE");
  return CudaDeviceCount() > 0 ? OpenComputeDevice("cuda:0") : SimulatedDevice();
}

class GpuRuntime : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    at::set_num_threads(2);
    scratch_ = new ScratchDir("gpu-runtime");
    SynthOptions o;
    o.preset = "tiny";  // CogVideoX's block structure at small widths
    o.seed = 5;
    o.out = *scratch_ / "pkg";
    SynthesizePackage(o);
  }
  static void TearDownTestSuite() { delete scratch_; }
  void TearDown() override { DeviceUnderTest().SetCapacity(0); }

  static GenerateRequest Request() { return reel::testing::SmallRequest(9, 64, 64, 3); }
  // The denoised latents of the request with the denoiser under `strategy`, back on the host.
  static torch::Tensor Denoise(StagePackage& pkg, const std::string& strategy) {
    ComputeDevice& dev = DeviceUnderTest();
    RunOptions o;
    o.device = &dev;
    o.offload[StageKind::kDenoiser] = ParseOffload(strategy, "strategy");
    Runtime rt(pkg, o);
    const GenerateRequest r = Request();
    const torch::Tensor text = rt.EncodePrompt(r);
    return dev.Download(rt.DenoiseLatents(r, text, torch::Tensor()));
  }
  static ScratchDir* scratch_;
};
ScratchDir* GpuRuntime::scratch_ = nullptr;

TEST_F(GpuRuntime, EveryStrategyGivesTheSameLatentsOnTheDevice) {
  StagePackage pkg = StagePackage::Load(*scratch_ / "pkg");
  std::printf("device under test: %s\n", DeviceUnderTest().Describe().c_str());
  const torch::Tensor none = Denoise(pkg, "none");
  ASSERT_TRUE(none.device().is_cpu());
  EXPECT_TRUE(torch::isfinite(none).all().item<bool>());
  for (const std::string s : {"model", "block:1", "sequential"}) {
    const torch::Tensor other = Denoise(pkg, s);
    // The same kernels on the same weights: prefetching on another thread changes no arithmetic on the simulated
    // device. cuBLAS may pick other algorithms for other allocations: on CUDA the latents agree to 1e-4.
    if (DeviceUnderTest().simulated())
      EXPECT_TRUE(torch::equal(none, other)) << s << " differs from none by "
                                             << (none - other).abs().max().item<double>();
    else
      EXPECT_TRUE(torch::allclose(none, other, 1e-4, 1e-4)) << s << " differs from none by "
                                                             << (none - other).abs().max().item<double>();
  }
}

TEST_F(GpuRuntime, OutOfMemoryIsDeviceOutOfMemoryAndTheDeviceStaysUsable) {
  ComputeDevice& dev = DeviceUnderTest();
  StagePackage pkg = StagePackage::Load(*scratch_ / "pkg");
  const int64_t weights = [&] {
    int64_t n = 0;
    for (const auto& [k, st] : pkg.manifest().stages) n += st.bytes();
    return n;
  }();
  const int64_t base = dev.Memory().allocated;
  // Room for a third of the resident weights: `none` cannot place them.
  dev.SetCapacity(base + weights / 3);
  RunOptions o;
  o.device = &dev;
  try {
    Runtime rt(pkg, o);
    FAIL() << "placing " << weights << " bytes of weights under a capacity of " << weights / 3 << " succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kDeviceOutOfMemory) << e.what();
    EXPECT_NE(std::string(e.what()).find("out of memory in stage"), std::string::npos) << e.what();
  }
  EXPECT_LE(dev.Memory().allocated - base, 1024) << "the failed placement left device bytes behind";
  // The same device, with the memory back, runs the job.
  dev.SetCapacity(0);
  const torch::Tensor z = Denoise(pkg, "sequential");
  EXPECT_TRUE(torch::isfinite(z).all().item<bool>());
}

TEST_F(GpuRuntime, AllocatorFiguresAccountTheBytesPlaced) {
  ComputeDevice& dev = DeviceUnderTest();
  const int64_t bytes = 64ll << 20;
  const auto before = dev.Memory();
  dev.ResetPeak();
  {
    const torch::Tensor host = torch::ones({bytes / 4}, torch::kFloat32);
    const torch::Tensor placed = dev.Upload(host);
    EXPECT_EQ(placed.device(), dev.device());
    const auto during = dev.Memory();
    EXPECT_GE(during.allocated - before.allocated, bytes);
    EXPECT_LE(during.allocated - before.allocated, bytes + (2 << 20));  // allocator rounding only
    EXPECT_GE(during.reserved, during.allocated);
    EXPECT_GE(during.peak, during.allocated);
    EXPECT_EQ(dev.Download(placed).sum().item<double>(), static_cast<double>(bytes / 4));
  }
  EXPECT_LE(dev.Memory().allocated - before.allocated, 1024);
  EXPECT_GE(dev.Memory().peak - before.allocated, bytes);
}

TEST_F(GpuRuntime, CudaDevicesAreRefusedClearlyWhereThereAreNone) {
  const int n = CudaDeviceCount();
  try {
    OpenComputeDevice(fmt::format("cuda:{}", n), "--device");
    FAIL() << "cuda:" << n << " opened on a machine with " << n << " CUDA devices";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("--device cuda:{}", n)), std::string::npos) << what;
    EXPECT_NE(what.find(CudaBuilt() ? "CUDA device" : "accepted cpu in this build"), std::string::npos) << what;
  }
  EXPECT_THROW(OpenComputeDevice("tpu:0", "--device"), Error);
  EXPECT_THROW(OpenComputeDevice("cuda:x", "--device"), Error);
}

TEST_F(GpuRuntime, CudaCopiesOverlapOnASideStream) {
  ComputeDevice& dev = DeviceUnderTest();
  if (dev.simulated()) GTEST_SKIP() << "needs a CUDA device (this machine: " << dev.Describe() << ")";
  // A copy started on the copy stream lands only after Wait orders the compute stream behind it; the data that
  // arrives is the host's.
  auto stream = dev.NewCopyStream();
  const torch::Tensor host = dev.HostCopy(torch::arange(1 << 22, torch::kFloat32));
  EXPECT_TRUE(host.is_pinned());
  torch::Tensor placed;
  stream->Start(host.nbytes(), [&] {
    placed = dev.Upload(host);
    return std::vector<torch::Tensor>{placed};
  });
  stream->Wait();
  EXPECT_TRUE(torch::equal(dev.Download(placed * 1), host));
  dev.Synchronize();
  EXPECT_GT(stream->Drain(), 0.0);
}

TEST_F(GpuRuntime, AllocatorFiguresAgreeWithNvml) {
  ComputeDevice& dev = DeviceUnderTest();
  if (dev.simulated()) GTEST_SKIP() << "needs a CUDA device (this machine: " << dev.Describe() << ")";
#ifndef REEL_HAVE_CUDA_TOOLKIT
  GTEST_SKIP() << "built without the CUDA toolkit's gpu/ library (NVML access)";
#else
  std::string reason;
  auto nvml = Nvml::Open(&reason);
  if (!nvml) GTEST_SKIP() << reason;
  const auto props = CudaProperties(dev.device().index());
  const auto index = nvml->IndexOf(props.pci_bus_id, props.uuid);
  ASSERT_TRUE(index.has_value()) << "NVML has no device at " << props.pci_bus_id;
  const auto before = nvml->ProcessMemory(*index, ::getpid());
  if (!before) GTEST_SKIP() << "NVML withholds this process's memory (PID namespace or permissions)";
  const int64_t bytes = 512ll << 20;
  const torch::Tensor placed = dev.Upload(torch::zeros({bytes / 4}, torch::kFloat32));
  dev.Synchronize();
  const auto mem = dev.Memory();
  const int64_t after = nvml->ProcessMemory(*index, ::getpid()).value_or(0);
  // NVML sees what the caching allocator reserved plus the CUDA context; never less than the allocator's figure.
  EXPECT_GE(after, mem.reserved) << "NVML " << after << " < allocator reserved " << mem.reserved;
  EXPECT_GE(mem.reserved, mem.allocated);
  const auto nv = nvml->Memory(*index);
  EXPECT_NEAR(static_cast<double>(mem.total), static_cast<double>(nv.total_bytes - nv.reserved_bytes), 64.0 * (1 << 20))
      << "CUDA's total should be NVML's less the driver's reserve";
  EXPECT_GE(after - *before, 0);
#endif
}

// Sequence parallelism's exchanges on the device under test: ranks as threads, each with its own group, on loopback.
// [B, H, tokens(rank), d] shares of one [B, H, T, d] tensor: TokensToHeads gives each rank its heads of every token
// and HeadsToTokens gives back its share, on whichever backend the build chose for the device.
void ExchangeOnDevices(const std::vector<torch::Device>& devices, const std::string& backend) {
  const int k = static_cast<int>(devices.size());
  const int64_t B = 2, H = 6, T = 11, d = 8;
  const torch::Tensor full = torch::randn({B, H, T, d});
  const Shares tokens = ShareEvenly(T, k), heads = ShareEvenly(H, k);
  std::promise<std::string> store;
  auto where = store.get_future().share();
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < k; ++r)
    ranks.push_back(std::async(std::launch::async, [&, r] {
      SequenceGroupSpec spec;
      spec.rank = r;
      spec.size = k;
      spec.device = devices[static_cast<size_t>(r)];
      spec.timeout = std::chrono::seconds(60);
      spec.store = r == 0 ? "127.0.0.1:0" : where.get();
      SequenceGroup g(spec, [&](const std::string& s) { store.set_value(s); });
      EXPECT_EQ(g.backend(), backend) << "rank " << r;
      const torch::Tensor mine = full.narrow(2, tokens.offset(r), tokens.count(r)).to(spec.device);
      const torch::Tensor by_head = g.TokensToHeads(mine, tokens, heads);
      EXPECT_EQ(by_head.device(), spec.device);
      EXPECT_TRUE(torch::equal(by_head.cpu(), full.narrow(1, heads.offset(r), heads.count(r)))) << "rank " << r;
      EXPECT_TRUE(torch::equal(g.HeadsToTokens(by_head, tokens, heads).cpu(), mine.cpu())) << "rank " << r;
      EXPECT_GE(g.exchange_seconds(), 0.0);
    }));
  for (auto& f : ranks) f.get();
}

TEST(GpuRuntimeSequence, CpuGroupsExchangeOverGloo) {
  if (!SequenceParallelBuilt()) GTEST_SKIP() << "built without sequence parallelism (no Gloo headers)";
  ExchangeOnDevices({torch::kCPU, torch::kCPU}, "gloo");
}

// The NCCL path: on one GPU a group of one joins NCCL (eager initialisation) and runs its all-to-all; on two or more,
// two ranks on cuda:0 and cuda:1 exchange as Gloo's ranks do on the CPU.
TEST(GpuRuntimeSequence, CudaGroupsExchangeOverNcclWhereBuilt) {
  if (!SequenceParallelBuilt()) GTEST_SKIP() << "built without sequence parallelism (no Gloo headers)";
  if (CudaDeviceCount() < 1) GTEST_SKIP() << "needs a CUDA device (this build sees none)";
  const std::string backend = SequenceParallelNcclBuilt() ? "nccl" : "gloo (host copies)";
  ExchangeOnDevices({torch::Device(torch::kCUDA, 0)}, backend);
  if (CudaDeviceCount() < 2) GTEST_SKIP() << "one rank on cuda:0 joined over " << backend
                                          << "; two ranks need two CUDA devices";
  ExchangeOnDevices({torch::Device(torch::kCUDA, 0), torch::Device(torch::kCUDA, 1)}, backend);
}

}  // namespace
}  // namespace reel
