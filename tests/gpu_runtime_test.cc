// The stage runtime on the device under test: cuda:0 where this build has CUDA and the machine a GPU (the GPU
// check), else the simulated device. The same assertions hold on both: every strategy gives the same frames, an
// out-of-memory is the runtime's DeviceOutOfMemory and leaves the device usable, and the allocator's figures
// account the bytes placed. Cases that only mean something on CUDA say why they skip.
#include <cstdlib>

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
  stream->Start([&] {
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

}  // namespace
}  // namespace reel
