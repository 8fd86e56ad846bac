// gpu/: NVML, the CUDA runtime from host code and NCCL links. Without a GPU the tests check the clear failures
// (no device, no NVML, no communicator); with one, the real figures (tests that need one skip, saying why).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "gpu/cuda_host.h"
#include "gpu/nvml.h"
#ifdef REEL_HAVE_NCCL
#include "gpu/nccl_link.h"
#endif

namespace reel {
namespace {

constexpr int64_t kMiB = 1 << 20;

#define SKIP_WITHOUT_GPU()                                               \
  if (const CudaDeviceCount devices = CudaDevices(); devices.count == 0) \
  GTEST_SKIP() << "needs a CUDA device; here " << devices.reason

template <typename F>
Error ErrorFrom(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no reel::Error was thrown";
  return Internal("(none thrown)");
}

bool Contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A device buffer for the tests, freed on every path.
struct DeviceBytes {
  explicit DeviceBytes(int64_t n) { CheckCuda(cudaMalloc(&p, n), "cudaMalloc"); }
  ~DeviceBytes() { cudaFree(p); }
  void* p = nullptr;
};

TEST(CudaHost, DeviceCountIsZeroWithTheCudaErrorElseDevicesHaveTheirProperties) {
  const CudaDeviceCount c = CudaDevices();
  if (c.count == 0) {
    // Here: no driver (cudaErrorInsufficientDriver) or no device (cudaErrorNoDevice); nothing aborts.
    EXPECT_TRUE(Contains(c.reason, "cudaGetDeviceCount: cudaError")) << c.reason;
    for (const Error& e : {ErrorFrom([] { CudaProperties(0); }), ErrorFrom([] { CudaMemory(0); }),
                           ErrorFrom([] { CudaStreamEvent s(0); })}) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
      EXPECT_TRUE(Contains(e.what(), "CUDA device 0: no CUDA device (" + c.reason + ")")) << e.what();
    }
    return;
  }
  EXPECT_EQ(c.reason, "");
  for (int d = 0; d < c.count; ++d) {
    const CudaDeviceProperties p = CudaProperties(d);
    std::cout << "CUDA device " << d << ": " << p.name << ", " << p.total_memory_bytes << " bytes, sm_" << p.major
              << p.minor << ", " << p.pci_bus_id << ", " << p.uuid << "\n";
    EXPECT_EQ(p.index, d);
    EXPECT_FALSE(p.name.empty());
    EXPECT_GT(p.total_memory_bytes, 1024 * kMiB);
    EXPECT_GE(p.major, 5);
    EXPECT_EQ(std::count(p.pci_bus_id.begin(), p.pci_bus_id.end(), ':'), 2) << p.pci_bus_id;  // dddd:bb:dd.f
    EXPECT_EQ(p.pci_bus_id[p.pci_bus_id.size() - 2], '.') << p.pci_bus_id;
    EXPECT_EQ(p.uuid.rfind("GPU-", 0), 0u) << p.uuid;
    EXPECT_EQ(p.uuid.size(), 40u) << p.uuid;
  }
  const Error e = ErrorFrom([&] { CudaMemory(c.count); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(Contains(e.what(), "CUDA device " + std::to_string(c.count) + ": accepted 0 to")) << e.what();
}

TEST(CudaHost, OutOfMemoryIsTheSimulatedDevicesKind) {
  EXPECT_EQ(CudaErrorKind(cudaErrorMemoryAllocation), ErrorKind::kDeviceOutOfMemory);
  EXPECT_EQ(ExitCodeFor(CudaErrorKind(cudaErrorMemoryAllocation)), 3);
  EXPECT_EQ(CudaErrorKind(cudaErrorInsufficientDriver), ErrorKind::kUnavailable);
  EXPECT_EQ(CudaErrorKind(cudaErrorNoDevice), ErrorKind::kUnavailable);
  EXPECT_EQ(CudaErrorKind(cudaErrorInvalidDevice), ErrorKind::kInvalidArgument);
  const Error e = ErrorFrom([] { CheckCuda(cudaErrorMemoryAllocation, "weights of block 3"); });
  EXPECT_EQ(e.kind(), ErrorKind::kDeviceOutOfMemory);
  EXPECT_STREQ(e.what(), "weights of block 3: cudaErrorMemoryAllocation: out of memory");
  EXPECT_NO_THROW(CheckCuda(cudaSuccess, "nothing"));
}

TEST(CudaHost, AnAllocationLargerThanTheDeviceIsDeviceOutOfMemory) {
  SKIP_WITHOUT_GPU();
  const CudaMemoryInfo m = CudaMemory(0);
  void* p = nullptr;
  const Error e = ErrorFrom([&] { CheckCuda(cudaMalloc(&p, 2 * m.total_bytes), "cudaMalloc"); });
  EXPECT_EQ(e.kind(), ErrorKind::kDeviceOutOfMemory) << e.what();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // CheckCuda cleared it
  DeviceBytes after(kMiB);                     // and the device still allocates
}

TEST(CudaHost, PinnedBufferAllocatesOrFailsWithAClearError) {
  EXPECT_EQ(ErrorFrom([] { PinnedHostBuffer b(-1); }).kind(), ErrorKind::kInvalidArgument);
  EXPECT_EQ(PinnedHostBuffer(0).data(), nullptr);  // no CUDA call for an empty buffer

  const bool gpu = CudaDevices().count > 0;
  try {
    PinnedHostBuffer b(64 * kMiB);
    ASSERT_NE(b.data(), nullptr);
    EXPECT_EQ(b.size(), 64 * kMiB);
    std::memset(b.data(), 0x5a, b.size());  // the pages are really there
    PinnedHostBuffer moved = std::move(b);
    EXPECT_EQ(b.data(), nullptr);
    EXPECT_EQ(static_cast<unsigned char*>(moved.data())[64 * kMiB - 1], 0x5a);
  } catch (const Error& e) {
    if (gpu) FAIL() << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
    EXPECT_TRUE(Contains(e.what(), "pinned host buffer of 67108864 bytes: cudaHostAlloc: cudaError")) << e.what();
  }
}

TEST(CudaHost, StreamEventCarriesACopyThroughTheDevice) {
  SKIP_WITHOUT_GPU();
  PinnedHostBuffer in(32 * kMiB), out(32 * kMiB);
  for (int64_t i = 0; i < in.size(); ++i) static_cast<unsigned char*>(in.data())[i] = static_cast<unsigned char>(i * 7);
  std::memset(out.data(), 0, out.size());
  DeviceBytes dev(in.size());
  CudaStreamEvent s(0);
  EXPECT_TRUE(s.Done());  // nothing recorded yet
  CheckCuda(cudaMemcpyAsync(dev.p, in.data(), in.size(), cudaMemcpyHostToDevice, s.stream()), "upload");
  CheckCuda(cudaMemcpyAsync(out.data(), dev.p, out.size(), cudaMemcpyDeviceToHost, s.stream()), "download");
  s.Record();
  s.Wait();
  EXPECT_TRUE(s.Done());
  EXPECT_EQ(std::memcmp(in.data(), out.data(), in.size()), 0);
}

TEST(Nvml, AMissingLibraryGivesTheReason) {
  std::string reason;
  EXPECT_EQ(Nvml::Open(&reason, "libreel-no-such-nvml.so.1"), nullptr);
  EXPECT_EQ(reason.rfind("NVML unavailable: libreel-no-such-nvml.so.1: cannot open shared object file", 0), 0u)
      << reason;
  EXPECT_EQ(Nvml::Open(&reason, "libc.so.6"), nullptr);  // loads, but is not NVML
  EXPECT_EQ(reason, "NVML unavailable: libc.so.6 has no nvmlInit_v2 (a driver older than NVML 10?)");
}

TEST(Nvml, FallsBackToOlderEntryPointsAndMapsDevices) {
  std::string reason;
  const auto nvml = Nvml::Open(&reason, REEL_FAKE_NVML);  // tests/fake_nvml.cc
  ASSERT_NE(nvml, nullptr) << reason;
  ASSERT_EQ(nvml->device_count(), 2);
  EXPECT_EQ(nvml->Name(1), "Fake GPU 1");
  EXPECT_EQ(nvml->Uuid(0), "GPU-00000000-0000-0000-0000-000000000001");
  // CUDA writes the PCI domain with 4 digits, NVML with 8; the UUID finds a device the bus id does not.
  EXPECT_EQ(nvml->IndexOf("0000:02:00.0", ""), 1);
  EXPECT_EQ(nvml->IndexOf("0000:09:00.0", "GPU-00000000-0000-0000-0000-000000000001"), 0);
  EXPECT_EQ(nvml->IndexOf("0000:09:00.0", "GPU-00000000-0000-0000-0000-000000000009"), std::nullopt);

  const NvmlMemoryInfo v2 = nvml->Memory(0), v1 = nvml->Memory(1);  // device 1 refuses the v2 struct
  EXPECT_EQ(v2.total_bytes, 16 * 1024 * kMiB);
  EXPECT_EQ(v2.reserved_bytes, 512 * kMiB);
  EXPECT_EQ(v2.used_bytes + v2.free_bytes, v2.total_bytes);
  EXPECT_EQ(v1.total_bytes, 16 * 1024 * kMiB);
  EXPECT_EQ(v1.reserved_bytes, 0);
  EXPECT_EQ(v1.free_bytes, 15 * 1024 * kMiB);

  EXPECT_EQ(nvml->Utilization(0).gpu_percent, 37);
  EXPECT_EQ(nvml->Utilization(0).memory_percent, 12);
  const Error e = ErrorFrom([&] { nvml->Utilization(1); });
  EXPECT_EQ(e.kind(), ErrorKind::kUnavailable);
  EXPECT_STREQ(e.what(), "NVML device 1: nvmlDeviceGetUtilizationRates: Not Supported");

  // 20 processes, more than the first guess; device 1 answers only the unversioned call.
  EXPECT_EQ(nvml->ProcessMemory(0, getpid()), 300 * kMiB);
  EXPECT_EQ(nvml->ProcessMemory(1, getpid()), 300 * kMiB);
  EXPECT_EQ(nvml->ProcessMemory(0, 4242), std::nullopt);  // listed, figure withheld
  EXPECT_EQ(nvml->ProcessMemory(0, 1), std::nullopt);     // not listed
}

TEST(Nvml, OpensWhereTheDriverIsElseSaysWhy) {
  std::string reason;
  const auto nvml = Nvml::Open(&reason);
  if (!nvml) {
    EXPECT_EQ(reason.rfind("NVML unavailable: ", 0), 0u) << reason;
    EXPECT_EQ(CudaDevices().count, 0) << "CUDA sees a device but NVML does not open: " << reason;
    return;
  }
  EXPECT_EQ(reason, "");
  EXPECT_EQ(nvml->device_count(), CudaDevices().count);  // (unless CUDA_VISIBLE_DEVICES hides some)
  const Error e = ErrorFrom([&] { nvml->Name(nvml->device_count()); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_TRUE(Contains(e.what(), "accepted 0 to")) << e.what();
  EXPECT_EQ(nvml->IndexOf("", ""), std::nullopt);
  EXPECT_EQ(nvml->IndexOf("0000:FF:1F.7", "GPU-00000000-0000-0000-0000-000000000000"), std::nullopt);
}

TEST(Nvml, FiguresAgreeWithCudaForTheSameDevice) {
  SKIP_WITHOUT_GPU();
  std::string reason;
  const auto nvml = Nvml::Open(&reason);
  ASSERT_NE(nvml, nullptr) << reason;
  for (int d = 0; d < CudaDevices().count; ++d) {
    const CudaDeviceProperties p = CudaProperties(d);
    const std::optional<int> n = nvml->IndexOf(p.pci_bus_id, p.uuid);
    ASSERT_TRUE(n) << p.pci_bus_id << " " << p.uuid;
    EXPECT_EQ(nvml->IndexOf("", p.uuid), n);  // the UUID alone finds it too
    EXPECT_EQ(nvml->Uuid(*n), p.uuid);
    EXPECT_EQ(nvml->Name(*n), p.name);
    const CudaMemoryInfo c = CudaMemory(d);
    const NvmlMemoryInfo m = nvml->Memory(*n);
    std::cout << "device " << d << " (NVML " << *n << "): NVML total " << m.total_bytes << " reserved "
              << m.reserved_bytes << " used " << m.used_bytes << " free " << m.free_bytes << "; CUDA total "
              << c.total_bytes << " free " << c.free_bytes << "; cudaDeviceProp total " << p.total_memory_bytes << "\n";
    // CUDA's total leaves out what the driver and firmware reserve (about 0.5 GiB on an 80 GB card), which
    // NVML counts in its total and reports apart only through nvmlDeviceGetMemoryInfo_v2.
    EXPECT_LE(c.total_bytes, m.total_bytes);
    if (m.reserved_bytes > 0) {
      EXPECT_NEAR(c.total_bytes, m.total_bytes - m.reserved_bytes, 64.0 * kMiB);
    }
    // nvmlDeviceGetMemoryInfo_v2's used leaves out the reserve (seen on an H200: used + free = total − reserved).
    EXPECT_NEAR(m.used_bytes + m.free_bytes + m.reserved_bytes, m.total_bytes, 1.0 * kMiB);
    const NvmlUtilization u = nvml->Utilization(*n);
    EXPECT_GE(u.gpu_percent, 0);
    EXPECT_LE(u.gpu_percent, 100);
    EXPECT_GE(u.memory_percent, 0);
    EXPECT_LE(u.memory_percent, 100);
  }
}

TEST(Nvml, Allocating256MiBRaisesCudaAndNvmlFigures) {
  SKIP_WITHOUT_GPU();
  std::string reason;
  const auto nvml = Nvml::Open(&reason);
  ASSERT_NE(nvml, nullptr) << reason;
  const CudaDeviceProperties p = CudaProperties(0);
  const int n = nvml->IndexOf(p.pci_bus_id, p.uuid).value();
  const CudaMemoryInfo before = CudaMemory(0);  // this process now has a context on device 0
  const std::optional<int64_t> ours_before = nvml->ProcessMemory(n, getpid());
  {
    DeviceBytes block(256 * kMiB);
    const CudaMemoryInfo after = CudaMemory(0);
    EXPECT_GE(after.used_bytes() - before.used_bytes(), 256 * kMiB);
    const std::optional<int64_t> ours_after = nvml->ProcessMemory(n, getpid());
    std::cout << "CUDA used " << before.used_bytes() << " -> " << after.used_bytes() << "; NVML for pid " << getpid()
              << ": " << ours_before.value_or(-1) << " -> " << ours_after.value_or(-1) << "\n";
    if (!ours_before || !ours_after)
      GTEST_SKIP() << "NVML lists no memory for pid " << getpid() << " (another PID namespace?); CUDA's figures held";
    EXPECT_GE(*ours_after - *ours_before, 256 * kMiB);
  }
  EXPECT_EQ(nvml->ProcessMemory(n, 0), std::nullopt);  // no such process on the device
}

#ifdef REEL_HAVE_NCCL

TEST(Nccl, UniqueIdRoundTripsThroughBytesWithoutAGpu) {
  const ncclUniqueId a = NewNcclUniqueId(), b = NewNcclUniqueId();
  const std::string bytes = EncodeNcclUniqueId(a);
  ASSERT_EQ(bytes.size(), 128u);
  const ncclUniqueId back = DecodeNcclUniqueId(bytes);
  EXPECT_EQ(std::memcmp(back.internal, a.internal, sizeof a.internal), 0);
  EXPECT_NE(EncodeNcclUniqueId(b), bytes);  // each id names its own rendezvous
}

TEST(Nccl, AnIdOfTheWrongLengthIsRejected) {
  for (size_t n : {0, 12, 127, 129}) {
    const Error e = ErrorFrom([&] { DecodeNcclUniqueId(std::string(n, 'x')); });
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()), "NCCL unique id of " + std::to_string(n) +
                                         " bytes: accepted exactly 128 bytes, as EncodeNcclUniqueId writes them");
  }
}

TEST(Nccl, TensorHeaderNamesWhatIsWrong) {
  const NcclTensorHeader h = NcclTensorHeader::Dense("bf16", {2, 3, 4});
  EXPECT_EQ(h.elements(), 24);
  EXPECT_EQ(h.bytes, 48);
  EXPECT_EQ(NcclDataType("bf16"), ncclBfloat16);
  EXPECT_EQ(NcclDataType("u8"), ncclUint8);
  EXPECT_EQ(NcclDtypeBytes("i64"), 8);
  EXPECT_STREQ(ErrorFrom([] { NcclDataType("f64"); }).what(), "dtype 'f64': accepted f32, bf16, f16, i64, u8");
  EXPECT_STREQ(ErrorFrom([] {
                 NcclTensorHeader{"f32", {2, 3}, 20}.Check();
               }).what(),
               "tensor f32 [2, 3] of 20 bytes: accepted 24 bytes (elements x 4 bytes)");
  EXPECT_STREQ(ErrorFrom([] {
                 NcclTensorHeader::Dense("f16", {2, -1});
               }).what(),
               "tensor shape [2, -1]: accepted dimensions of 0 or more");
}

TEST(Nccl, ACommunicatorWithoutItsDeviceFailsClearlyAndAtOnce) {
  const ncclUniqueId id = NewNcclUniqueId();
  const auto t0 = std::chrono::steady_clock::now();
  Error bad_rank = ErrorFrom([&] { NcclComm c(id, 2, 2, 0, std::chrono::seconds(5)); });
  EXPECT_EQ(bad_rank.kind(), ErrorKind::kInvalidArgument);
  EXPECT_STREQ(bad_rank.what(), "NCCL rank 2 of 2: accepted 1 rank or more and a rank from 0 to 1");

  const CudaDeviceCount devices = CudaDevices();
  const Error e = ErrorFrom([&] { NcclComm c(id, 0, 1, devices.count, std::chrono::seconds(5)); });
  if (devices.count == 0) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnavailable);
    EXPECT_EQ(std::string(e.what()), "CUDA device 0: no CUDA device (" + devices.reason + ")");
  } else {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(Nccl, AMissingPeerTimesOutAndAborts) {
  SKIP_WITHOUT_GPU();
  const auto t0 = std::chrono::steady_clock::now();
  const Error e = ErrorFrom([] { NcclComm c(NewNcclUniqueId(), 0, 2, 0, std::chrono::seconds(3)); });
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
  EXPECT_TRUE(Contains(e.what(), "NCCL rank 0 of 2 on CUDA device 0: ncclCommInitRankConfig: not done after 3000 ms"))
      << e.what();
  EXPECT_GE(took, std::chrono::seconds(3));
  EXPECT_LT(took, std::chrono::seconds(20));
}

TEST(Nccl, ARankSendsToItself) {
  SKIP_WITHOUT_GPU();
  NcclComm comm(NewNcclUniqueId(), 0, 1, 0, std::chrono::seconds(60));
  const NcclTensorHeader h = NcclTensorHeader::Dense("f32", {256, 1024});
  std::vector<float> host(h.elements());
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  DeviceBytes src(h.bytes), dst(h.bytes);
  CheckCuda(cudaMemcpy(src.p, host.data(), h.bytes, cudaMemcpyHostToDevice), "upload");
  CheckCuda(cudaMemset(dst.p, 0, h.bytes), "clear");
  CudaStreamEvent s(0);

  const Error bad_peer = ErrorFrom([&] { comm.Send(src.p, h, 1, s.stream()); });
  EXPECT_EQ(bad_peer.kind(), ErrorKind::kInvalidArgument);
  EXPECT_STREQ(bad_peer.what(), "NCCL rank 0 of 1 on CUDA device 0: ncclSend peer 1: accepted 0 to 0");
  ASSERT_FALSE(comm.aborted());

  comm.Group([&] {
    comm.Send(src.p, h, 0, s.stream());
    comm.Recv(dst.p, h, 0, s.stream());
  });
  comm.Synchronize(s);
  std::vector<float> back(h.elements());
  CheckCuda(cudaMemcpy(back.data(), dst.p, h.bytes, cudaMemcpyDeviceToHost), "download");
  EXPECT_EQ(back, host);
}

#endif  // REEL_HAVE_NCCL

}  // namespace
}  // namespace reel
