// `reel tune` as a user runs it on the simulated device: every candidate is measured and stored — those that run
// out of device memory as "oom" rows, without ending the tuning — and the plan printed after uses the measurements.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace reel {
namespace {

using nlohmann::json;
using reel::testing::CommandResult;
using reel::testing::Quote;
using reel::testing::RunCommand;
using reel::testing::ScratchDir;

class TuneCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("tune-cli");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  static CommandResult Tune(const std::string& args) {
    return RunCommand(std::string(REEL_BINARY) + " tune --model tiny --frames 9 --height 64 --width 64 --steps 4 " +
                      "--threads 1 " + args + " 2>/dev/null");
  }
  static std::string Db(const std::string& name) { return (scratch_->path() / name).string(); }
  static std::string Sql(const std::string& db, const std::string& query) {
    return RunCommand("sqlite3 " + Quote(db) + " " + Quote(query)).output;
  }
  static ScratchDir* scratch_;
};
ScratchDir* TuneCli::scratch_ = nullptr;

TEST_F(TuneCli, EveryCandidateIsMeasuredAndThePlanUsesTheMeasurements) {
  const std::string db = Db("roomy.db");
  const CommandResult r = Tune("--device-memory 200MiB --json --profile-db " + Quote(db));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  int measured = 0;
  for (const auto& m : j["measurements"]) {
    EXPECT_EQ(m["outcome"], "ok") << m.dump();
    EXPECT_GT(m["peak_device_bytes"].get<int64_t>(), 0) << m.dump();
    EXPECT_GT(m["seconds"].get<double>(), 0) << m.dump();
    ++measured;
  }
  EXPECT_GE(measured, 6);
  EXPECT_EQ(Sql(db, "SELECT COUNT(*) FROM stage_profiles WHERE outcome = 'ok'"), std::to_string(measured) + "\n");
  // The short runs are 2 steps of the job's 4: the store says so, and the plan's denoiser time is scaled to 4.
  EXPECT_EQ(Sql(db, "SELECT DISTINCT steps FROM stage_profiles WHERE stage = 'denoiser'"), "2\n");
  const json& plan = j["plan"];
  ASSERT_TRUE(plan["feasible"].get<bool>()) << plan.dump(2);
  for (const auto& s : plan["stages"])
    EXPECT_EQ(s["replicas"][0]["basis"].get<std::string>().rfind("measured", 0), 0u) << s.dump();
}

TEST_F(TuneCli, OutOfMemoryCandidatesAreRecordedAndTuningGoesOn) {
  // tiny's decoder needs ~80 MiB at 64×64 whatever its strategy (tiles would not split the frame).
  const std::string db = Db("tight.db");
  const CommandResult r = Tune("--device-memory 60MiB --profile-db " + Quote(db));
  EXPECT_EQ(r.exit_code, 3) << r.output;  // nothing fits: the plan says what would
  EXPECT_NE(r.output.find("vae_decoder   none                       f32   oom"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Nothing fits: vae_decoder"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Would fit: "), std::string::npos) << r.output;
  const std::string oom = Sql(db, "SELECT COUNT(*) FROM stage_profiles WHERE stage = 'vae_decoder' AND outcome = 'oom'");
  EXPECT_GE(std::stoi(oom), 1) << oom;
  // The stages measured after the first out-of-memory one were still measured, and the others fit.
  EXPECT_EQ(Sql(db, "SELECT COUNT(*) FROM stage_profiles WHERE stage = 'vae_decoder' AND outcome = 'ok'"), "0\n");
  EXPECT_NE(Sql(db, "SELECT COUNT(*) FROM stage_profiles WHERE stage = 'denoiser' AND outcome = 'ok'"), "0\n");
}

TEST_F(TuneCli, BadInputIsOneLine) {
  for (const auto& [args, expect] : std::vector<std::pair<std::string, std::string>>{
           {"--tune-steps 0", "--tune-steps 0: accepted 1 to 50"},
           {"--stages denoiser,wings", "--stages denoiser,wings: 'wings' is not a stage (text_encoder"},
           {"--stages vae_encoder", "--stages vae_encoder: 'vae_encoder' is not a stage of tiny"},
           {"--margin 0.95", "--margin 0.95: accepted 0 to 0.9"},
           {"--device-memory lots", "--device-memory lots"}}) {
    const CommandResult r = RunCommand(std::string(REEL_BINARY) + " tune --model tiny " + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
}

}  // namespace
}  // namespace reel
