// Memory strategies through `reel generate` as a user runs them: the device-OOM boundary on the tiny model, the
// JSON report, the trace showing each block copied in before it computes, the profile store, and bad strategy flags.
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace reel {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using reel::testing::CommandResult;
using reel::testing::Quote;
using reel::testing::RunCommand;
using reel::testing::ScratchDir;

class StrategiesCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("strategies");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() { delete scratch_; }
  static fs::path Tmp(const std::string& n) { return *scratch_ / n; }
  static CommandResult Generate(const std::string& tag, const std::string& extra) {
    return RunCommand(std::string(REEL_BINARY) +
                      " generate --model tiny --prompt 'a red fox' --frames 9 --height 64 --width 64 --steps 2 "
                      "--threads 2 --out " + Quote(Tmp(tag + ".mp4").string()) + " --report " +
                      Quote(Tmp(tag + ".json").string()) + " --profile-db " + Quote(Tmp("profiles.sqlite").string()) +
                      " " + extra);
  }
  static json Report(const std::string& tag) {
    std::ifstream in(Tmp(tag + ".json"));
    return json::parse(in);
  }
  static int64_t Peak(const json& report) {
    int64_t peak = 0;
    for (const auto& s : report["stages"]) peak = std::max(peak, s["peak_device_bytes"].get<int64_t>());
    return peak;
  }
  static ScratchDir* scratch_;
};
ScratchDir* StrategiesCli::scratch_ = nullptr;

TEST_F(StrategiesCli, AnOutOfMemoryIsRetriedWithACheaperChoiceAndRecorded) {
  auto r = Generate("full", "--offload none");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const int64_t cap = Peak(Report("full")) - 1;

  // Without --no-oom-retry the stage that ran out is retried one step cheaper and the job completes.
  r = Generate("retried", "--offload none --device-memory " + std::to_string(cap));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("out of memory in stage"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("retrying with"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(Tmp("retried.mp4")));
  const json report = Report("retried");
  int ooms = 0, oks = 0;
  std::string oom_strategy;
  for (const auto& s : report["stages"]) {
    if (s["outcome"] == "oom") {
      ++ooms;
      oom_strategy = s["strategy"];
    }
    oks += s["outcome"] == "ok";
    EXPECT_LE(s["peak_device_bytes"].get<int64_t>(), cap) << s.dump();
  }
  EXPECT_GE(ooms, 1) << report.dump(2);
  EXPECT_EQ(oks, 3) << report.dump(2);  // text encoder, denoiser, decoder all completed
  // The completed run made something cheaper: another stage's weights left the device, or the failed stage changed.
  bool cheaper = false;
  for (const auto& s : report["stages"])
    if (s["outcome"] == "ok") cheaper |= s["strategy"] != "none";
  EXPECT_TRUE(cheaper) << report.dump(2);
  EXPECT_EQ(oom_strategy, "none");
}

TEST_F(StrategiesCli, NoneFailsJustUnderItsNeedAndBlockOneFits) {
  auto r = Generate("none", "--offload none");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const int64_t need = Peak(Report("none"));
  ASSERT_GT(need, 0);
  const int64_t cap = need - 1;

  r = Generate("none-capped", "--offload none --no-oom-retry --device-memory " + std::to_string(cap));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("reel: error: device cpu (simulated, capacity"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("out of memory in stage"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(Tmp("none-capped.mp4")));
  const json failed = Report("none-capped");
  bool saw_oom = false;
  for (const auto& s : failed["stages"]) saw_oom |= s["outcome"] == "oom";
  EXPECT_TRUE(saw_oom) << failed.dump(2);

  r = Generate("block1", "--offload block:1 --device-memory " + std::to_string(cap) + " --trace " +
                             Quote(Tmp("block1.trace.json").string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json ok = Report("block1");
  EXPECT_LT(Peak(ok), cap);
  EXPECT_GT(Peak(ok), 0);
  for (const auto& s : ok["stages"]) {
    EXPECT_EQ(s["device_capacity_bytes"].get<int64_t>(), cap);
    EXPECT_EQ(s["outcome"], "ok");
  }

  // The trace shows every block's copy on the copy track, landed before that block computes: block:1 streams each
  // of the 2 blocks once per call of the text encoder (1) and the denoiser (2 steps), and copies nothing in behind
  // a stage's last call. Whether a prefetch overlaps the previous block's compute on this shared 2-core machine is up
  // to the kernel's scheduler (a tiny block's copy takes ~0.2 ms, and the woken copy thread may preempt the compute
  // thread for it), so it is printed, not asserted; the overlap is measured at real widths in bench/.
  std::ifstream in(Tmp("block1.trace.json"));
  const json trace = json::parse(in);
  std::map<int, std::string> tracks;
  struct Interval {
    std::string name;
    double start, end;
  };
  std::vector<Interval> copies, blocks;
  for (const auto& e : trace["traceEvents"])
    if (e["ph"] == "M" && e["name"] == "thread_name") tracks[e["tid"].get<int>()] = e["args"]["name"];
  for (const auto& e : trace["traceEvents"]) {
    if (e["ph"] != "X") continue;
    const double ts = e["ts"].get<double>(), end = ts + e["dur"].get<double>();
    if (tracks[e["tid"].get<int>()] == "copy" && e["cat"] == "copy") copies.push_back({e["name"], ts, end});
    if (tracks[e["tid"].get<int>()] == "compute" && e["cat"] == "block") blocks.push_back({e["name"], ts, end});
  }
  EXPECT_EQ(copies.size(), 6u);
  EXPECT_EQ(blocks.size(), 6u);
  std::map<std::string, double> computed;  // when each block name last finished computing
  bool overlap = false;
  for (const auto& b : blocks) {
    // The latest copy of this block before it computed must have come after its previous compute (it went back
    // to the host then) and ended before this one began.
    const Interval* copy = nullptr;
    for (const auto& c : copies)
      if (c.name == "copy " + b.name && c.start <= b.start && (!copy || c.start > copy->start)) copy = &c;
    ASSERT_NE(copy, nullptr) << b.name << " computed with no copy before it";
    EXPECT_LE(copy->end, b.start + 0.001) << b.name << " computed before its copy landed";
    EXPECT_GE(copy->start, computed[b.name]) << b.name << " was not copied in again after its previous compute";
    computed[b.name] = b.end;
  }
  for (const auto& c : copies)
    for (const auto& b : blocks) overlap |= c.start < b.end && b.start < c.end;
  std::printf("block:1 trace: %zu copies, %zu block computes; a prefetch overlapped a block's compute: %s\n",
              copies.size(), blocks.size(), overlap ? "yes" : "no");
}

TEST_F(StrategiesCli, EveryModeWritesTheSameVideoFrames) {
  std::string reference;
  for (const std::string mode : {"none", "model", "block:2", "sequential"}) {
    const std::string tag = "eq-" + std::to_string(reference.size());
    const fs::path frames = Tmp("frames-" + mode.substr(0, mode.find(':')));
    auto r = Generate(tag + mode.substr(0, 1), "--offload " + mode + " --frames-dir " + Quote(frames.string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ifstream in(frames / "frame_0004.png", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (reference.empty())
      reference = ss.str();
    else
      EXPECT_EQ(ss.str(), reference) << mode;
  }
}

TEST_F(StrategiesCli, BadStrategyFlagsAreRefused) {
  struct Case {
    std::string flags, expect;
  };
  const std::vector<Case> cases = {
      {"--offload block:0", "--offload block:0: accepted none, model, block:K"},
      {"--offload fast", "--offload fast: accepted none, model, block:K"},
      {"--offload denoiser=block:2,vae=none", "'vae=none' is not STAGE=VALUE"},
      {"--dtype int4", "--dtype int4: accepted f32, bf16 or f16"},
      {"--vae-tiling 10", "--vae-tiling 10: accepted a tile size in pixels, a multiple of 8, at least 16"},
      {"--vae-tiling 48x12", "--vae-tiling 12: accepted a tile size in pixels, a multiple of 8, at least 16"},
      {"--vae-tiling 48x", "--vae-tiling 48x: accepted a tile size in pixels (a multiple of 8, at least 16), HxW, or "
                           "diffusers (240x360, as enable_tiling())"},
      {"--vae-tiling diffuser", "--vae-tiling diffuser: accepted a tile size in pixels"},
      {"--device cuda:0", "--device cuda:0: accepted cpu"},
      {"--device-memory 12XB", "--device-memory 12XB: accepted a size such as 12GiB"},
      {"--sample-ms -5", "--sample-ms -5: accepted 0 (off) or more"},
      {"--weights int4", "--weights int4: accepted int8 or float"},
      {"--host-memory 1KiB", "--host-memory 1.00 KiB: the weights need"},
      {"--host-memory lots", "--host-memory lots: accepted a size such as 12GiB"},
  };
  for (const auto& c : cases) {
    const auto r = Generate("bad", c.flags);
    EXPECT_EQ(r.exit_code, 2) << c.flags << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << "expected '" << c.expect << "' in:\n" << r.output;
    EXPECT_FALSE(fs::exists(Tmp("bad.mp4")));
  }
}

TEST_F(StrategiesCli, MeasurementsLandInTheProfileStore) {
  auto r = Generate("store", "--offload block:1 --vae-slicing");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto q = RunCommand("sqlite3 " + Quote(Tmp("profiles.sqlite").string()) +
                            " \"select count(*) from stage_profiles where strategy like 'block:1%'\"");
  ASSERT_EQ(q.exit_code, 0) << q.output;
  EXPECT_GE(std::stoi(q.output), 2) << "text encoder and denoiser ran with block:1";
}

}  // namespace
}  // namespace reel
