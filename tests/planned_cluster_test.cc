// The planner in a running cluster: the coordinator places stages by the plan for its workers (and `reel plan
// --coordinator` reports that same plan), re-plans when a worker is lost so its stages move to the others, and a
// worker whose stage runs out of device memory retries it cheaper, completes the job and reports the failed
// attempts to the profile store.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/cluster_harness.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using testing::Cluster;
using testing::CommandResult;
using testing::Quote;
using testing::RunCommand;
using testing::ScratchDir;
using testing::WaitFor;
namespace v1 = reel::v1;
using json = nlohmann::json;

CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

class PlannedClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("planned-cluster");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override {
    dir_ = scratch_->path() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    cluster_ = std::make_unique<Cluster>(REEL_BINARY, dir_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
    cluster_.reset();
  }

  // Worker name → its stage listing ("tiny/denoiser (block:1,f32)", …).
  std::map<std::string, std::vector<std::string>> Holdings() {
    std::map<std::string, std::vector<std::string>> out;
    const v1::ListWorkersResponse list = cluster_->Workers();
    for (const auto& w : list.workers()) {
      if (w.state() == "lost") continue;
      auto& v = out[w.name()];
      for (const auto& s : w.stages()) v.push_back(s);
    }
    return out;
  }

  // Worker name → what a plan report places on it, as Holdings() lists it, sorted.
  static std::map<std::string, std::vector<std::string>> PlannedOf(const json& plan) {
    std::map<std::string, std::vector<std::string>> planned;
    for (const auto& s : plan["stages"])
      for (const auto& rep : s["replicas"])
        planned[rep["device"].get<std::string>()].push_back(
            "tiny/" + s["stage"].get<std::string>() + " (" + rep["strategy"].get<std::string>() + "," +
            rep["dtype"].get<std::string>() + ")");
    for (auto& [w, v] : planned) std::sort(v.begin(), v.end());
    return planned;
  }
  // What `reel plan --coordinator` (the coordinator's objective, profile store and live workers) places.
  std::map<std::string, std::vector<std::string>> Planned() {
    const CommandResult r = Reel("plan --json --model tiny --coordinator " + cluster_->address());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.exit_code == 0 ? PlannedOf(json::parse(r.output)) : std::map<std::string, std::vector<std::string>>{};
  }
  std::map<std::string, std::vector<std::string>> SortedHoldings() {
    auto held = Holdings();
    for (auto& [w, v] : held) std::sort(v.begin(), v.end());
    return held;
  }
  // "tiny/denoiser (block:1,f32)" → "tiny/denoiser": the stages, whatever their strategies.
  static std::set<std::string> StagesOf(const std::vector<std::string>& listing) {
    std::set<std::string> out;
    for (const auto& s : listing) out.insert(s.substr(0, s.find(' ')));
    return out;
  }

  std::string Submit(const std::string& args) {
    const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + args + " 2>/dev/null");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output.substr(0, r.output.find('\n'));
  }

  static ScratchDir* scratch_;
  std::filesystem::path dir_;
  std::unique_ptr<Cluster> cluster_;
};

ScratchDir* PlannedClusterTest::scratch_ = nullptr;

TEST_F(PlannedClusterTest, WorkersHoldWhatThePlanSaysAndPlanCoordinatorReportsIt) {
  ASSERT_TRUE(cluster_->StartCoordinator({"--plan-objective", "throughput"}));
  cluster_->StartWorker("a", {"--device-memory", "90MiB"});
  cluster_->StartWorker("b", {"--device-memory", "90MiB"});
  ASSERT_TRUE(cluster_->WaitIdle(2));
  ASSERT_TRUE(WaitFor([&] { return Holdings().size() == 2 && !Holdings()["a"].empty(); }, 30));

  const CommandResult r = Reel("plan --json --model tiny --coordinator " + cluster_->address());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json plan = json::parse(r.output);
  EXPECT_EQ(plan["objective"], "throughput");
  ASSERT_TRUE(plan["feasible"].get<bool>()) << plan.dump(2);
  ASSERT_EQ(plan["devices"].size(), 2u);
  for (const auto& d : plan["devices"]) {
    EXPECT_EQ(d["capacity_bytes"].get<int64_t>(), 90ll << 20) << d.dump();
    EXPECT_LE(d["peak_bytes"].get<double>(), d["capacity_bytes"].get<double>() * 0.9) << d.dump();
  }
  // Every replica of the report is what that worker holds, strategy and dtype included.
  EXPECT_EQ(PlannedOf(plan), SortedHoldings());

  // Jobs run on the planned placement; the table form names the workers.
  const std::string id = Submit("--model tiny --prompt fox --frames 9 --height 64 --width 64 --steps 2");
  EXPECT_EQ(cluster_->WaitJob(id).state(), v1::SUCCEEDED) << cluster_->Job(id).error();
  const CommandResult table = Reel("plan --model tiny --coordinator " + cluster_->address());
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("Machine: 2 cpu devices (90.00 MiB, 90.00 MiB)"), std::string::npos) << table.output;

  // Flags that describe a machine make no sense against a running one.
  const CommandResult bad = Reel("plan --model tiny --device-memory 12GiB --coordinator " + cluster_->address());
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("--device-memory: not accepted with --coordinator"), std::string::npos) << bad.output;
  const CommandResult unserved = Reel("plan --model cogvideox-2b --coordinator " + cluster_->address());
  EXPECT_EQ(unserved.exit_code, 2) << unserved.output;
  EXPECT_NE(unserved.output.find("model 'cogvideox-2b': this coordinator serves tiny"), std::string::npos)
      << unserved.output;
}

TEST_F(PlannedClusterTest, ALostWorkersStagesMoveToTheOthers) {
  // For latency one replica per stage is enough: one worker holds the pipeline, the other nothing.
  ASSERT_TRUE(cluster_->StartCoordinator({"--plan-objective", "latency"}));
  cluster_->StartWorker("a");
  cluster_->StartWorker("b");
  ASSERT_TRUE(cluster_->WaitIdle(2));
  std::string holder, spare;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto h = Holdings();
        if (h.size() != 2) return false;
        holder = h["a"].empty() ? "b" : "a";
        spare = holder == "a" ? "b" : "a";
        return h[holder].size() == 3 && h[spare].empty();
      },
      30))
      << "holdings: " << json(Holdings()).dump();

  cluster_->worker(holder).Stop(SIGKILL);
  // Lost after the 1.5 s lease; the plan for the one worker left gives it every stage.
  ASSERT_TRUE(WaitFor([&] { auto h = Holdings(); return h.count(spare) && h[spare].size() == 3 && !h.count(holder); },
                      30))
      << "holdings: " << json(Holdings()).dump();
  ASSERT_TRUE(cluster_->WaitIdle(1));
  const std::string id = Submit("--model tiny --prompt fox --frames 9 --height 64 --width 64 --steps 2");
  const v1::Job j = cluster_->WaitJob(id);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  for (const auto& s : j.stages()) EXPECT_EQ(s.worker(), spare);
}

TEST_F(PlannedClusterTest, AStageOutOfDeviceMemoryIsRetriedCheaperAndRemembered) {
  // The placement file asks for a whole-frame decode that needs ~330 MiB at 256×256; the device has 160 MiB.
  const auto placement = dir_ / "placement.json";
  std::filesystem::create_directories(dir_);
  std::ofstream(placement) << R"({"workers": [{"name": "w", "stages": ["text_encoder", "denoiser", "vae_decoder"]}]})";
  ASSERT_TRUE(cluster_->StartCoordinator({"--placement", placement.string()}));
  cluster_->StartWorker("w", {"--device-memory", "160MiB"});
  ASSERT_TRUE(cluster_->WaitIdle(1));
  const std::string id = Submit("--model tiny --prompt fox --frames 9 --height 256 --width 256 --steps 1");
  const v1::Job j = cluster_->WaitJob(id, 240);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();

  // The worker now decodes in tiles that fit, and says so.
  const auto held = Holdings()["w"];
  const bool tiled = std::any_of(held.begin(), held.end(), [](const std::string& s) {
    return s.rfind("tiny/vae_decoder (", 0) == 0 && s.find("tiling=64") != std::string::npos;
  });
  EXPECT_TRUE(tiled) << json(held).dump();
  // Every failed attempt is an "oom" row of the coordinator's profile store: the planner's input.
  const CommandResult rows = RunCommand("sqlite3 " + Quote((cluster_->data() / "profiles.db").string()) +
                                        " \"SELECT stage, outcome, strategy FROM stage_profiles ORDER BY id\"");
  EXPECT_NE(rows.output.find("vae_decoder|oom|none"), std::string::npos) << rows.output;
  EXPECT_NE(rows.output.find("vae_decoder|ok|none+slicing+tiling=64"), std::string::npos) << rows.output;

  // With --no-oom-retry the same job fails with the device's message.
  cluster_->worker("w").Stop(SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return Holdings().empty(); }, 30));  // lost once its lease runs out
  cluster_->StartWorker("w", {"--device-memory", "160MiB", "--no-oom-retry"}, "w2");
  ASSERT_TRUE(WaitFor([&] { return Holdings()["w"].size() == 3; }, 60));
  ASSERT_TRUE(cluster_->WaitIdle(1));
  const std::string id2 = Submit("--model tiny --prompt fox --frames 9 --height 256 --width 256 --steps 1");
  const v1::Job j2 = cluster_->WaitJob(id2, 240);
  EXPECT_EQ(j2.state(), v1::FAILED);
  EXPECT_NE(j2.error().find("out of memory in stage vae_decoder"), std::string::npos) << j2.error();
}

TEST_F(PlannedClusterTest, TuneOnTheClusterMeasuresOnTheWorkersAndStoresWhatTheyMeasured) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  cluster_->StartWorker("a", {"--device-memory", "200MiB"});
  ASSERT_TRUE(cluster_->WaitIdle(1));
  ASSERT_TRUE(WaitFor([&] { return Holdings()["a"].size() == 3; }, 30));
  const auto before = Holdings()["a"];

  const CommandResult r = Reel("tune --json --model tiny --steps 4 --stages denoiser --coordinator " +
                               cluster_->address() + " 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  ASSERT_GE(j["measurements"].size(), 2u) << j.dump(2);
  for (const auto& m : j["measurements"]) {
    EXPECT_EQ(m["worker"], "a");
    EXPECT_EQ(m["stage"], "denoiser");
    EXPECT_EQ(m["outcome"], "ok") << m.dump();
  }
  // Every measurement is a row of the coordinator's profile store, and the plan it returns uses them.
  const CommandResult rows = RunCommand("sqlite3 " + Quote((cluster_->data() / "profiles.db").string()) +
                                        " \"SELECT COUNT(*) FROM stage_profiles WHERE stage = 'denoiser' AND steps = 2\"");
  EXPECT_EQ(rows.output, std::to_string(j["measurements"].size()) + "\n");
  for (const auto& s : j["plan"]["stages"])
    if (s["stage"] == "denoiser") {
      EXPECT_EQ(s["replicas"][0]["basis"].get<std::string>().rfind("measured", 0), 0u) << s.dump();
    }

  // The worker is no longer tuning: it holds every stage it held before (not just the one tuned), each as the
  // coordinator now plans it from what was measured (which strategy that is depends on the timings measured, so
  // it is read from the coordinator's plan, not assumed unchanged), and runs jobs again.
  ASSERT_TRUE(cluster_->WaitIdle(1));
  std::map<std::string, std::vector<std::string>> planned;
  EXPECT_TRUE(WaitFor([&] { return (planned = Planned()) == SortedHoldings(); }, 30))
      << "planned " << json(planned).dump() << ", held " << json(Holdings()).dump();
  EXPECT_EQ(StagesOf(Holdings()["a"]), StagesOf(before)) << json(Holdings()["a"]).dump();
  const std::string id = Submit("--model tiny --prompt fox --frames 9 --height 64 --width 64 --steps 2");
  EXPECT_EQ(cluster_->WaitJob(id).state(), v1::SUCCEEDED) << cluster_->Job(id).error();

  // A worker it does not know, and flags that describe this machine, are refused in one line.
  const CommandResult unknown = Reel("tune --model tiny --workers nobody --coordinator " + cluster_->address());
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("worker 'nobody': not registered here"), std::string::npos) << unknown.output;
  const CommandResult local = Reel("tune --model tiny --device-memory 1GiB --coordinator " + cluster_->address());
  EXPECT_EQ(local.exit_code, 2) << local.output;
  EXPECT_NE(local.output.find("--device-memory: not accepted with --coordinator"), std::string::npos) << local.output;
}

}  // namespace
}  // namespace reel
