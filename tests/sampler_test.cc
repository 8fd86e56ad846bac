// MemorySampler with a scripted device callback and real host allocations, and the /proc readers and size
// parsing it builds on (HostMemory.*).
#include "profiler/sampler.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "profiler/host_memory.h"
#include "profiler/trace.h"

namespace reel {
namespace {

using std::chrono::milliseconds;
constexpr int64_t kMiB = 1 << 20;

// Polls `done` for up to 10 s: the machine may be busy building, so no fixed sleep is long enough.
template <typename F>
bool WaitFor(F done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

TEST(Sampler, RecordsTheTruePeakOfAChangingValueAndWritesCounters) {
  // Rises by 1000 per call to 17000 at the 17th call, then falls: the peak is one sample wide.
  std::atomic<int> calls{0};
  std::atomic<int64_t> max_returned{0};
  auto device = [&]() -> int64_t {
    const int n = ++calls;
    const int64_t v = n <= 17 ? n * 1000 : std::max(0, 34000 - n * 1000);
    if (v > max_returned) max_returned = v;
    return v;
  };
  TraceRecorder trace;
  MemorySampler sampler(milliseconds(1), device, &trace);
  sampler.Start();
  sampler.Start();  // a second Start while running is harmless
  ASSERT_TRUE(WaitFor([&] { return calls >= 30; }));
  sampler.Stop();
  const int total_calls = calls.load();

  EXPECT_EQ(sampler.peak_device_bytes(), 17000);
  EXPECT_EQ(sampler.peak_device_bytes(), max_returned.load());
  const auto samples = sampler.samples();
  ASSERT_EQ(static_cast<int>(samples.size()), total_calls);  // one callback call per sample, the last from Stop
  int64_t max_host = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const int n = static_cast<int>(i) + 1;
    EXPECT_EQ(samples[i].device_bytes, n <= 17 ? n * 1000 : std::max(0, 34000 - n * 1000)) << "sample " << i;
    EXPECT_GT(samples[i].host_rss_bytes, 0);
    if (i > 0) {
      EXPECT_GE(samples[i].at, samples[i - 1].at);
    }
    max_host = std::max(max_host, samples[i].host_rss_bytes);
  }
  EXPECT_EQ(sampler.peak_host_rss_bytes(), max_host);

  // Every sample is a point on both counter tracks, with the sampled value.
  const auto j = trace.ToJson();
  std::vector<double> device_series;
  int host_points = 0;
  for (const auto& e : j.at("traceEvents")) {
    if (e.at("ph") != "C") continue;
    if (e.at("name") == "device_memory_bytes") device_series.push_back(e.at("args").at("bytes").get<double>());
    if (e.at("name") == "host_rss_bytes") ++host_points;
  }
  ASSERT_EQ(device_series.size(), samples.size());
  EXPECT_EQ(host_points, static_cast<int>(samples.size()));
  for (size_t i = 0; i < samples.size(); ++i) EXPECT_EQ(device_series[i], samples[i].device_bytes);

  // Stop is idempotent and the samples stay.
  sampler.Stop();
  EXPECT_EQ(sampler.samples().size(), samples.size());
}

TEST(Sampler, HostRssPeakSeesA64MiBAllocation) {
  MemorySampler sampler(milliseconds(2), nullptr, nullptr);
  const int64_t before = HostRssBytes();
  sampler.Start();
  const size_t bytes = 64 * kMiB;
  char* buf = static_cast<char*>(std::malloc(bytes));
  ASSERT_NE(buf, nullptr);
  // Touch every page: untouched pages are not resident and would not show in RSS.
  for (size_t i = 0; i < bytes; i += 4096) buf[i] = static_cast<char>(i);
  const int64_t during = HostRssBytes();
  const size_t n_before = sampler.samples().size();
  ASSERT_TRUE(WaitFor([&] { return sampler.samples().size() >= n_before + 3; }));
  sampler.Stop();
  volatile char sink = buf[bytes / 2];
  (void)sink;
  std::free(buf);

  EXPECT_GE(during - before, 60 * kMiB) << "before " << before << " during " << during;
  EXPECT_GE(sampler.peak_host_rss_bytes() - before, 60 * kMiB);
  EXPECT_EQ(sampler.peak_device_bytes(), 0);  // no device callback
  EXPECT_GE(HostPeakRssBytes(), sampler.peak_host_rss_bytes() - kMiB);  // VmHWM saw at least as much
}

TEST(Sampler, RejectsPeriodsUnderOneMillisecond) {
  try {
    MemorySampler s(milliseconds(0), [] { return int64_t{0}; }, nullptr);
    FAIL() << "0 ms accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_EQ(std::string(e.what()), "--sample-ms 0: accepted a period of 1 ms or more");
  }
  EXPECT_NO_THROW(MemorySampler(milliseconds(1), nullptr, nullptr));
}

TEST(Sampler, CallbackErrorEndsSamplingAndSurfacesAtStop) {
  std::atomic<int> calls{0};
  MemorySampler sampler(
      milliseconds(1),
      [&]() -> int64_t {
        if (++calls == 3) throw IoError("device query failed");
        return 5;
      },
      nullptr);
  sampler.Start();
  ASSERT_TRUE(WaitFor([&] { return calls >= 3; }));
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(calls.load(), 3);  // the thread stopped at the error
  try {
    sampler.Stop();
    FAIL() << "error swallowed";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "device query failed");
  }
  EXPECT_EQ(sampler.peak_device_bytes(), 5);
  EXPECT_EQ(sampler.samples().size(), 2u);
}

TEST(Sampler, DestructorStopsARunningSampler) {
  std::atomic<int> calls{0};
  {
    MemorySampler sampler(milliseconds(1), [&] { return int64_t{++calls}; }, nullptr);
    sampler.Start();
    ASSERT_TRUE(WaitFor([&] { return calls >= 2; }));
  }
  const int after = calls.load();
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(calls.load(), after);
}

TEST(HostMemory, ParseSizeAcceptsEverySuffix) {
  const int64_t Ki = 1024, Mi = Ki * Ki, Gi = Mi * Ki, Ti = Gi * Ki;
  const std::vector<std::pair<std::string, int64_t>> cases = {
      {"1000000", 1000000},   {"0", 0},
      {"17B", 17},            {"2KiB", 2 * Ki},
      {"512MiB", 512 * Mi},   {"12GiB", 12 * Gi},
      {"3TiB", 3 * Ti},       {"2KB", 2000},
      {"5MB", 5000000},       {"24GB", 24000000000LL},
      {"2TB", 2000000000000LL}, {"4K", 4 * Ki},
      {"3M", 3 * Mi},         {"1.5G", 3 * Gi / 2},
      {"2T", 2 * Ti},         {"12gib", 12 * Gi},
      {"24gb", 24000000000LL}, {"1.5g", 3 * Gi / 2},
      {"0.5KiB", 512},        {"1.25MB", 1250000},
  };
  for (const auto& [text, bytes] : cases) EXPECT_EQ(ParseSize(text, "--device-memory"), bytes) << text;
  EXPECT_EQ(ParseSize("8388607TiB", "--x"), 8388607 * Ti);  // largest whole TiB count in int64
}

TEST(HostMemory, ParseSizeRejectsBadValuesNamingFlagAndValue) {
  for (const std::string bad : {"", "GiB", "-1", "-1GiB", "12XB", "12 GiB", "1.5", "1e9", "12GiBs", "0x10", "1..5G",
                                "8EiB", "9999999999TiB", "99999999999999999999", "12Gi"}) {
    try {
      const int64_t v = ParseSize(bad, "--host-memory");
      ADD_FAILURE() << "'" << bad << "' parsed as " << v;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_EQ(std::string(e.what()),
                "--host-memory " + bad + ": accepted a size such as 12GiB, 512MiB or 1000000 (bytes)");
    }
  }
}

TEST(HostMemory, FormatBytes) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(3LL << 29), "1.50 GiB");
  EXPECT_EQ(FormatBytes(24LL << 30), "24.00 GiB");
  EXPECT_EQ(FormatBytes(-(3LL << 29)), "-1.50 GiB");
  EXPECT_EQ(ParseSize(FormatBytes(5LL << 40).erase(4, 1), "--x"), 5LL << 40);  // "5.00TiB" parses back
}

TEST(HostMemory, ProcReadersAgreeWithTheKernel) {
  const int64_t rss = HostRssBytes();
  const int64_t peak = HostPeakRssBytes();
  EXPECT_GT(rss, 0);
  EXPECT_EQ(rss % ::sysconf(_SC_PAGESIZE), 0);
  EXPECT_GE(peak, rss - ::sysconf(_SC_PAGESIZE));  // statm and status are read at slightly different moments
  const MachineMemoryInfo m = MachineMemory();
  const int64_t phys = static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) * ::sysconf(_SC_PAGESIZE);
  EXPECT_NEAR(static_cast<double>(m.total_bytes), static_cast<double>(phys), phys * 0.01);
  EXPECT_GT(m.available_bytes, 0);
  EXPECT_LE(m.available_bytes, m.total_bytes);
  EXPECT_GE(m.total_bytes, rss);
}

}  // namespace
}  // namespace reel
