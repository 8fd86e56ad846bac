// Sequence-parallel denoising (runtime/sequence_parallel.*): k real processes on loopback, joined through a TCP
// store and Gloo, produce the latents of one process within a stated tolerance, for 2B- and 5B-shaped packages.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <thread>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/error.h"
#include "models/synth.h"
#include "planner/sequence_parallel_cost.h"
#include "runtime/sequence_parallel.h"
#include "tests/child_process.h"
#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;

TEST(SequenceShares, SplitContiguouslyWithTheRemainderOnTheFirstRanks) {
  const Shares s = ShareEvenly(30, 4);  // 2B's heads on four ranks
  EXPECT_EQ(s.counts, (std::vector<int64_t>{8, 8, 7, 7}));
  EXPECT_EQ(s.offsets, (std::vector<int64_t>{0, 8, 16, 23}));
  const Shares even = ShareEvenly(48, 4);
  EXPECT_EQ(even.counts, (std::vector<int64_t>{12, 12, 12, 12}));
  EXPECT_EQ(ShareEvenly(3, 4).counts, (std::vector<int64_t>{1, 1, 1, 0}));
}

TEST(SequenceGroupSpec, ParsesRankSizeAndStoreAndRefusesTheRest) {
  const SequenceGroupSpec s = ParseSequenceGroup("1/4@127.0.0.1:29500", "--group");
  EXPECT_EQ(s.rank, 1);
  EXPECT_EQ(s.size, 4);
  EXPECT_EQ(s.store, "127.0.0.1:29500");
  for (const char* bad : {"4/4@h:1", "-1/2@h:1", "1/2", "1/2@h", "1/2@h:0", "1/2@h:70000", "a/2@h:1", "1/65@h:1",
                          "1/2@:1", "1x/2@h:1"}) {
    try {
      ParseSequenceGroup(bad, "--group");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(std::string("--group '") + bad + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("RANK/SIZE@HOST:PORT"), std::string::npos) << e.what();
    }
  }
}

// A port free now on loopback (the kernel's pick; the rank 0 process binds it a moment later).
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

torch::Tensor LoadLatents(const fs::path& p) {
  const std::string bytes = ReadAll(p);
  return torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toTensor();
}

class SequenceParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new testing::ScratchDir("sequence-parallel");
    // Two blocks at the real widths: 2B (30 heads, 3D sin-cos positions) and 5B (48 heads, RoPE); one T5 block.
    for (const char* preset : {"cogvideox-2b", "cogvideox-5b"}) {
      SynthOptions o;
      o.preset = preset;
      o.layers = 2;
      o.text_layers = 1;
      o.seed = 7;
      o.out = *scratch_ / preset;
      SynthesizePackage(o);
    }
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }

  // Runs `size` ranks (or one process without a group when size is 0) and returns rank 0's latents; `report`
  // gets rank 0's JSON line.
  static torch::Tensor Run(const std::string& preset, int size, const std::string& dtype, const std::string& tag,
                           nlohmann::json* report = nullptr,
                           const std::map<int, std::vector<std::string>>& per_rank = {}) {
    const int port = FreePort();
    std::vector<std::unique_ptr<testing::Process>> ranks;
    std::vector<fs::path> outs;
    for (int rank = 0; rank < std::max(size, 1); ++rank) {
      outs.push_back(*scratch_ / fmt::format("{}-{}-{}-{}.pt", preset, tag, size, rank));
      const fs::path log = *scratch_ / fmt::format("{}-{}-{}-{}.log", preset, tag, size, rank);
      fs::remove(log);
      std::vector<std::string> args = {REEL_SP_DENOISE, "--package", (*scratch_ / preset).string(),
                                       // 9 frames at 80x80: 3 x 5 x 5 = 75 video tokens, shared unevenly
                                       "--frames", "9", "--height", "80", "--width", "80", "--steps", "2",
                                       "--threads", "1", "--dtype", dtype, "--out", outs.back().string()};
      if (size > 0) {
        args.push_back("--group");
        args.push_back(fmt::format("{}/{}@127.0.0.1:{}", rank, size, port));
      }
      if (auto it = per_rank.find(rank); it != per_rank.end()) args.insert(args.end(), it->second.begin(), it->second.end());
      ranks.push_back(std::make_unique<testing::Process>(args, log));
    }
    for (auto& r : ranks) {
      const int status = r->Wait(240);
      EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n" << r->Log();
    }
    if (report) {
      const std::string log = ranks[0]->Log();
      const auto at = log.rfind("\n{");
      *report = nlohmann::json::parse(log.substr(at == std::string::npos ? 0 : at + 1));
    }
    return LoadLatents(outs[0]);
  }

  // The largest difference from the reference relative to the reference's largest magnitude.
  static double RelativeError(const torch::Tensor& a, const torch::Tensor& ref) {
    return ((a - ref).abs().max() / ref.abs().max()).item<double>();
  }

  static testing::ScratchDir* scratch_;
};

testing::ScratchDir* SequenceParallel::scratch_ = nullptr;

// f32: the ranks compute the same operations on fewer rows (the linears' GEMMs round by their row count, SDPA by its
// head count), so they agree with one process to float32 rounding, not bit for bit.
constexpr double kF32Tolerance = 1e-5;

TEST_F(SequenceParallel, TwoAndFourRanksEqualOneProcessFor2BShapes) {
  const torch::Tensor one = Run("cogvideox-2b", 0, "f32", "ref");
  for (int k : {2, 4}) {  // 30 heads: 15 each on two ranks, 8/8/7/7 on four
    const torch::Tensor sp = Run("cogvideox-2b", k, "f32", "sp");
    ASSERT_EQ(sp.sizes(), one.sizes());
    EXPECT_LT(RelativeError(sp, one), kF32Tolerance) << k << " ranks";
    std::printf("2B shapes, %d ranks: relative difference %.3g\n", k, RelativeError(sp, one));
    EXPECT_GT(sp.abs().max().item<double>(), 0.1);  // not a degenerate output
  }
}

// Each rank places its share of the work with its own memory strategy: rank 0 streaming its weights to the device
// piece by piece (sequential), rank 1 keeping them resident; the same latents as one process, and rank 0's device
// peak below a resident rank 0's (block:1 peaks as high as none on this two-block package, measured).
TEST_F(SequenceParallel, EachRankKeepsItsOwnMemoryStrategy) {
  const torch::Tensor one = Run("cogvideox-2b", 0, "f32", "ref");
  nlohmann::json resident, streaming;
  Run("cogvideox-2b", 2, "f32", "resident", &resident);
  const torch::Tensor sp =
      Run("cogvideox-2b", 2, "f32", "streaming", &streaming, {{0, {"--offload", "sequential"}}});
  EXPECT_LT(RelativeError(sp, one), kF32Tolerance);
  EXPECT_EQ(streaming.at("offload"), "sequential");
  EXPECT_EQ(resident.at("offload"), "none");
  EXPECT_LT(streaming.at("device_peak_bytes").get<int64_t>(), resident.at("device_peak_bytes").get<int64_t>())
      << "resident " << resident.dump() << "\nstreaming " << streaming.dump();
  std::printf("rank 0's device peak: resident %lld, sequential %lld bytes\n",
              static_cast<long long>(resident.at("device_peak_bytes").get<int64_t>()),
              static_cast<long long>(streaming.at("device_peak_bytes").get<int64_t>()));
}

TEST_F(SequenceParallel, TwoAndFourRanksEqualOneProcessFor5BShapes) {
  const torch::Tensor one = Run("cogvideox-5b", 0, "f32", "ref");
  const Manifest manifest = LoadManifest(*scratch_ / "cogvideox-5b");
  const planner::CostModel model(manifest, {});
  planner::Device cpu;
  cpu.kind = "cpu";
  planner::Job job;
  job.frames = 9;
  job.height = job.width = 80;
  job.steps = 2;
  for (int k : {2, 4}) {
    nlohmann::json report;
    const torch::Tensor sp = Run("cogvideox-5b", k, "f32", "sp", &report);
    ASSERT_EQ(sp.sizes(), one.sizes());
    EXPECT_LT(RelativeError(sp, one), kF32Tolerance) << k << " ranks";
    std::printf("5B shapes, %d ranks: relative difference %.3g\n", k, RelativeError(sp, one));
    // What the planner prices as rank 0's traffic is what rank 0 sent.
    const auto price = planner::PriceSequenceParallel(model, cpu, job, "f32", k, false, planner::DefaultLink("loopback"));
    EXPECT_EQ(report.at("bytes_sent").get<int64_t>(), price.bytes_sent) << k << " ranks: " << report.dump();
    EXPECT_EQ(report.at("backend").get<std::string>(), "gloo");
    EXPECT_GT(report.at("exchange_seconds").get<double>(), 0.0) << report.dump();
    EXPECT_LT(report.at("exchange_seconds").get<double>(), report.at("denoise_seconds").get<double>());
  }
}

// The link the planner prices: the median of the newest five measurements of one link, with no latency added (the
// measured time includes it), else the estimate; named by where it was measured.
TEST(SequenceLink, MeasuredIsTheMedianOfTheNewestFiveAndTheEstimateOtherwise) {
  EXPECT_EQ(planner::LinkName(true, "gloo"), "host/gloo");
  EXPECT_EQ(planner::LinkName(false, "nccl"), "network/nccl");
  EXPECT_EQ(planner::LinkName(true, "gloo (host copies)"), "host/gloo-host-copies");
  const planner::Link fallback = planner::DefaultLink("loopback");
  EXPECT_EQ(planner::MeasuredLink({}, fallback).name, "loopback");
  EXPECT_EQ(fallback.Describe(), "loopback 1.50 GB/s (an estimate)");
  std::vector<LinkProfile> measured;
  // Newest first: 1, 2, 9, 4, 5 GB/s, then an older 100 GB/s that the newest five leave out.
  for (double gbps : {1.0, 2.0, 9.0, 4.0, 5.0, 100.0}) {
    LinkProfile p;
    p.link = "host/gloo";
    p.ranks = 2;
    p.bytes_sent = static_cast<int64_t>(gbps * 1e9);
    p.exchange_seconds = 1.0;
    measured.push_back(p);
  }
  const planner::Link l = planner::MeasuredLink(measured, fallback);
  EXPECT_EQ(l.name, "host/gloo");
  EXPECT_DOUBLE_EQ(l.bytes_per_second, 4e9);
  EXPECT_EQ(l.latency_seconds, 0);
  EXPECT_EQ(l.measured_runs, 5);
  EXPECT_EQ(l.Describe(), "host/gloo 4.00 GB/s (measured, 5 runs)");
  // Devices of a kind take their own backend's measurement; CUDA devices with none measured price PCIe.
  EXPECT_EQ(planner::HostLink("cpu", measured).bytes_per_second, 4e9);
  EXPECT_EQ(planner::HostLink("cuda", measured).name, "pcie");
  measured[0].link = "host/nccl";
  EXPECT_EQ(planner::HostLink("cuda", measured).Describe(), "host/nccl 1.00 GB/s (measured, 1 run)");
}

// A rank lost mid-job: its peer's next all-to-all fails at once with one line naming the rank (Unavailable, the
// program's exit status 4), not a hang or a crash.
TEST_F(SequenceParallel, ARankLostMidJobFailsItsPeersStepCleanly) {
  const std::string group = fmt::format("@127.0.0.1:{}", FreePort());
  const std::vector<std::string> job = {REEL_SP_DENOISE, "--package", (*scratch_ / "cogvideox-2b").string(),
                                        "--frames", "9", "--height", "80", "--width", "80", "--steps", "3",
                                        "--threads", "1", "--timeout-ms", "20000"};
  auto r0_args = job, r1_args = job;
  r0_args.insert(r0_args.end(), {"--group", "0/2" + group, "--out", (*scratch_ / "lost-0.pt").string()});
  r1_args.insert(r1_args.end(), {"--group", "1/2" + group, "--die-after-step", "1"});
  fs::remove(*scratch_ / "lost-0.log");
  fs::remove(*scratch_ / "lost-1.log");
  testing::Process r0(r0_args, *scratch_ / "lost-0.log"), r1(r1_args, *scratch_ / "lost-1.log");
  const auto start = std::chrono::steady_clock::now();
  const int s1 = r1.Wait(120), s0 = r0.Wait(120);
  EXPECT_TRUE(s1 != -1 && WIFEXITED(s1) && WEXITSTATUS(s1) == 3) << r1.Log();
  ASSERT_TRUE(s0 != -1 && WIFEXITED(s0)) << r0.Log();
  EXPECT_EQ(WEXITSTATUS(s0), 4) << r0.Log();
  EXPECT_NE(r0.Log().find("sequence-parallel rank 0 of 2: an all-to-all failed"), std::string::npos) << r0.Log();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(100));
  EXPECT_FALSE(fs::exists(*scratch_ / "lost-0.pt"));  // no latents from a failed job
}

// The command line: two `reel generate --sequence-parallel` processes write the frames one process writes.
TEST(SequenceParallelCli, TwoGenerateProcessesWriteTheVideoOneProcessWrites) {
  testing::ScratchDir dir("sequence-parallel-cli");
  ::setenv("REEL_CACHE_DIR", (dir / "cache").c_str(), 1);
  const std::vector<std::string> job = {REEL_BINARY, "generate", "--model", "tiny", "--prompt", "a red fox",
                                        "--frames", "9", "--height", "64", "--width", "64", "--steps", "2",
                                        "--threads", "1", "--no-profile-db"};
  const auto with = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> a = job;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  {
    testing::Process one(with(std::vector<std::string>{"--out", (dir / "one.mp4").string(), "--frames-dir", (dir / "one").string()}),
                         dir / "one.log");
    const int status = one.Wait(120);
    ASSERT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << one.Log();
  }
  const std::string group = fmt::format("@127.0.0.1:{}", FreePort());
  testing::Process r0(with(std::vector<std::string>{"--out", (dir / "two.mp4").string(), "--frames-dir", (dir / "two").string(),
                            "--sequence-parallel", "0/2" + group}),
                      dir / "r0.log");
  testing::Process r1(with(std::vector<std::string>{"--out", (dir / "unused.mp4").string(), "--sequence-parallel", "1/2" + group}),
                      dir / "r1.log");
  for (testing::Process* p : {&r0, &r1}) {
    const int status = p->Wait(120);
    EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0) << p->Log();
  }
  EXPECT_NE(r1.Log().find("denoised as rank 1 of 2; rank 0 writes the video"), std::string::npos) << r1.Log();
  EXPECT_FALSE(fs::exists(dir / "unused.mp4"));
  int frames = 0;
  for (const auto& e : fs::directory_iterator(dir / "one")) {
    ++frames;
    EXPECT_EQ(ReadAll(e.path()), ReadAll(dir / "two" / e.path().filename())) << e.path().filename();
  }
  EXPECT_EQ(frames, 9);
}

}  // namespace
}  // namespace reel
