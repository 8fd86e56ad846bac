// Sequence parallelism through the coordinator (docs/SEQUENCE_PARALLEL.md), as users run it: a coordinator and
// worker processes on loopback, a 2B-shaped package (two blocks at the real width), jobs submitted with the CLI.
// A job with the latency objective has its denoise shared by several workers, chosen by the cost model, and its
// video equals the same job's on one worker; a rank killed mid-denoise fails the run and the job runs again on
// the workers left. The link rank 0 measured prices the next job's ranks. `reel plan --explain` says which degree
// each objective takes and what lost.
#include <gtest/gtest.h>

#include <signal.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "models/synth.h"
#include "profiler/profile_store.h"
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

CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

class SequenceCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("sequence-cluster");
    // 30 heads at the 2B width, two blocks; one T5 block (its width is what the text costs).
    SynthOptions o;
    o.preset = "cogvideox-2b";
    o.layers = 2;
    o.text_layers = 1;
    o.seed = 7;
    o.out = root() / "pkg";
    std::filesystem::create_directories(root());
    SynthesizePackage(o);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  static std::filesystem::path root() { return scratch_->path() / "models"; }
  static std::string package() { return (root() / "pkg").string(); }
  // 225 video tokens beside the 226 text tokens: enough that sharing them pays by the cost model; one frame keeps
  // the 2B-width decode short. Unguided: with guidance, splitting the guided batch across two workers (no
  // all-to-alls) is faster here than three ranks.
  static std::string Job(int steps) {
    return fmt::format("--model {} --prompt 'a red fox' --frames 1 --height 240 --width 240 --steps {} --guidance 1",
                       Quote(package()), steps);
  }

  void SetUp() override {
    dir_ = scratch_->path() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    cluster_ = std::make_unique<Cluster>(REEL_BINARY, dir_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
    cluster_.reset();
  }

  // The text encoder and decoder on "enc", the denoiser on dit0..dit{n-1}; `extra`: more flags for some.
  void Start(int dits, const std::map<std::string, std::vector<std::string>>& extra = {}) {
    std::string workers = R"({"name": "enc", "stages": ["text_encoder", "vae_decoder"]})";
    for (int i = 0; i < dits; ++i) workers += fmt::format(R"(, {{"name": "dit{}", "stages": ["denoiser"]}})", i);
    const auto placement = dir_ / "placement.json";
    std::filesystem::create_directories(dir_);
    std::ofstream(placement) << R"({"workers": [)" << workers << "]}";
    ASSERT_TRUE(cluster_->StartCoordinator(
        {"--placement", placement.string(), "--model", package(), "--model-root", root().string()}));
    cluster_->StartWorker("enc", {"--model-root", root().string()});
    for (int i = 0; i < dits; ++i) {
      const std::string name = fmt::format("dit{}", i);
      std::vector<std::string> flags = {"--model-root", root().string()};
      if (auto it = extra.find(name); it != extra.end()) flags.insert(flags.end(), it->second.begin(), it->second.end());
      cluster_->StartWorker(name, flags);
    }
    ASSERT_TRUE(cluster_->WaitIdle(static_cast<size_t>(dits) + 1, 180));
  }

  // Submits and waits; returns the job.
  v1::Job Run(const std::string& args, const std::filesystem::path& out) {
    const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + args + " --wait --out " +
                                 Quote(out.string()) + " 2>&1");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string id = r.output.substr(0, r.output.find('\n'));
    return cluster_->Job(id);
  }

  static const v1::StageRun& Denoiser(const v1::Job& j) { return testing::StageOf(j, v1::DENOISER); }

  static ScratchDir* scratch_;
  std::filesystem::path dir_;
  std::unique_ptr<Cluster> cluster_;
};

ScratchDir* SequenceCluster::scratch_ = nullptr;

TEST_F(SequenceCluster, ALatencyJobSharesItsDenoiseAcrossWorkersAndMakesTheVideoOneWorkerMakes) {
  ASSERT_NO_FATAL_FAILURE(Start(3));
  // The throughput objective keeps today's dispatch: one worker.
  const v1::Job base = Run(Job(3), dir_ / "throughput.mp4");
  ASSERT_EQ(base.state(), v1::SUCCEEDED) << base.error();
  EXPECT_EQ(Denoiser(base).sequence_peers_size(), 0);

  const v1::Job fast = Run(Job(3) + " --objective latency", dir_ / "latency.mp4");
  ASSERT_EQ(fast.state(), v1::SUCCEEDED) << fast.error();
  EXPECT_EQ(fast.spec().objective(), "latency");
  const v1::StageRun& d = Denoiser(fast);
  std::set<std::string> ranks = {d.worker()};
  for (const auto& p : d.sequence_peers()) ranks.insert(p);
  EXPECT_GE(d.sequence_peers_size(), 1) << fast.denoiser_dispatch();
  EXPECT_EQ(ranks.size(), static_cast<size_t>(d.sequence_peers_size()) + 1);
  EXPECT_FALSE(ranks.count("enc"));
  EXPECT_EQ(fast.denoiser_dispatch().rfind("sequence_parallel: ", 0), 0u) << fast.denoiser_dispatch();
  EXPECT_NE(fast.denoiser_dispatch().find("one worker"), std::string::npos) << fast.denoiser_dispatch();
  // Each rank computes its tokens' rows with the same kernels, one thread each: the same frames exactly.
  const std::string a = testing::DecodedRgb(dir_ / "throughput.mp4"), b = testing::DecodedRgb(dir_ / "latency.mp4");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(a == b) << "the sequence-parallel video differs from one worker's";

  // Rank 0 measured the link: the coordinator keeps it as the link's profile, and prices the next latency job's
  // ranks with it instead of the loopback estimate; `reel plan --explain` reads it from the same store.
  const std::string db = (cluster_->data() / "profiles.db").string();
  const std::vector<LinkProfile> links = ProfileStore(db).Links();
  ASSERT_EQ(links.size(), 1u);
  EXPECT_EQ(links[0].link, "host/gloo");
  EXPECT_EQ(links[0].ranks, d.sequence_peers_size() + 1);
  EXPECT_GT(links[0].bytes_sent, 0);
  EXPECT_GT(links[0].exchange_seconds, 0);
  EXPECT_NE(fast.denoiser_dispatch().find("(link loopback 1.50 GB/s (an estimate))"), std::string::npos)
      << fast.denoiser_dispatch();
  const v1::Job again = Run(Job(3) + " --objective latency", dir_ / "latency-again.mp4");
  ASSERT_EQ(again.state(), v1::SUCCEEDED) << again.error();
  EXPECT_NE(again.denoiser_dispatch().find("(link host/gloo "), std::string::npos) << again.denoiser_dispatch();
  EXPECT_NE(again.denoiser_dispatch().find("(measured, 1 run)"), std::string::npos) << again.denoiser_dispatch();
  const CommandResult plan = Reel("plan --model " + Quote(package()) + " --frames 1 --height 240 --width 240 "
                                  "--device-kind cpu --device-memory 8GiB --devices 3 --explain --profile-db " +
                                  Quote(db) + " 2>&1");
  ASSERT_EQ(plan.exit_code, 0) << plan.output;
  EXPECT_NE(plan.output.find("link host/gloo "), std::string::npos) << plan.output;
  EXPECT_NE(plan.output.find("(measured, "), std::string::npos) << plan.output;
}

// A guided latency job on four workers: two ranks in sequence for the conditional halves, two more for the
// unconditional ones (each rank's guidance peer; they form their own group), as the cost model finds fastest here.
TEST_F(SequenceCluster, AGuidedLatencyJobSplitsItsBatchBesidesTheSequenceAndMakesTheVideoOneWorkerMakes) {
  ASSERT_NO_FATAL_FAILURE(Start(4));
  const std::string guided = fmt::format("--model {} --prompt 'a red fox' --frames 1 --height 240 --width 240 "
                                         "--steps 2 --guidance 6",
                                         Quote(package()));
  const v1::Job base = Run(guided, dir_ / "throughput.mp4");
  ASSERT_EQ(base.state(), v1::SUCCEEDED) << base.error();
  EXPECT_EQ(Denoiser(base).sequence_peers_size(), 0);
  const v1::Job fast = Run(guided + " --objective latency", dir_ / "latency.mp4");
  ASSERT_EQ(fast.state(), v1::SUCCEEDED) << fast.error();
  const v1::StageRun& d = Denoiser(fast);
  EXPECT_EQ(fast.denoiser_dispatch().rfind("sequence_parallel: 4 workers (", 0), 0u) << fast.denoiser_dispatch();
  EXPECT_NE(fast.denoiser_dispatch().find(") with the guidance split ("), std::string::npos)
      << fast.denoiser_dispatch();
  ASSERT_EQ(d.sequence_peers_size(), 1) << fast.DebugString();
  ASSERT_EQ(d.sequence_guidance_peers_size(), 1) << fast.DebugString();
  const std::set<std::string> workers = {d.worker(), d.guidance_peer(), d.sequence_peers(0),
                                         d.sequence_guidance_peers(0)};
  EXPECT_EQ(workers.size(), 4u);
  EXPECT_FALSE(workers.count("enc"));
  const std::string a = testing::DecodedRgb(dir_ / "throughput.mp4"), b = testing::DecodedRgb(dir_ / "latency.mp4");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(a == b) << "the split sequence-parallel video differs from the throughput job's";
  // `reel job` names every worker of the denoise and what each ran.
  const CommandResult shown = Reel("job --coordinator " + cluster_->address() + " " + fast.id() + " 2>&1");
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_NE(shown.output.find(fmt::format("on {}, {} (sequence-parallel; the unconditional halves on {}, {})",
                                          d.worker(), d.sequence_peers(0), d.guidance_peer(),
                                          d.sequence_guidance_peers(0))),
            std::string::npos)
      << shown.output;
}

TEST_F(SequenceCluster, ARankKilledMidDenoiseFailsTheRunAndTheJobRunsAgainOnTheWorkersLeft) {
  // dit2 does not offer sequence parallelism: it is never a rank.
  ASSERT_NO_FATAL_FAILURE(Start(3, {{"dit2", {"--sequence-parallel", "off"}}}));
  const v1::ListWorkersResponse workers = cluster_->Workers();
  for (const auto& w : workers.workers())
    EXPECT_EQ(w.sequence_parallel(), w.name() != "dit2") << w.name();
  const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + Job(12) +
                               " --objective latency 2>&1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string id = r.output.substr(0, r.output.find('\n'));
  // Until the shared denoise is under way, then one of its other ranks dies.
  std::string victim;
  ASSERT_TRUE(WaitFor(
      [&] {
        const v1::Job now = cluster_->Job(id);
        const v1::StageRun& d = Denoiser(now);
        if (d.state() != "running" || d.sequence_peers_size() == 0 || d.step() < 1) return false;
        victim = d.sequence_peers(d.sequence_peers_size() - 1);
        EXPECT_EQ(d.sequence_peers_size(), 1) << now.denoiser_dispatch();  // dit0 and dit1
        EXPECT_NE(d.worker(), "dit2");
        return true;
      },
      180))
      << cluster_->Job(id).DebugString();
  cluster_->worker(victim).Stop(SIGKILL);
  const v1::Job j = cluster_->WaitJob(id, 300);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  EXPECT_EQ(j.attempts(), 2) << j.DebugString();
  const v1::StageRun& d = Denoiser(j);
  EXPECT_EQ(d.sequence_peers_size(), 0) << "one worker offering ranks is left: " << j.denoiser_dispatch();
  EXPECT_NE(d.worker(), victim);
  for (const auto& p : d.sequence_peers()) EXPECT_NE(p, victim);
  // The coordinator said why it ran the job again: rank 0's call failed naming the lost rank's worker.
  const std::string log = cluster_->coordinator().Log();
  EXPECT_NE(log.find("running it again"), std::string::npos) << log;
  EXPECT_NE(log.find("sequence-parallel rank"), std::string::npos) << log;
}

// `reel plan --explain`: the degree each objective takes on eight GPUs for one CogVideoX-5B job, and what lost.
TEST(SequencePlan, ExplainSaysWhichDegreeEachObjectiveTakesAndWhatLost) {
  const std::string plan = "plan --model cogvideox-5b --frames 49 --height 480 --width 720 --device-memory 80GiB "
                           "--devices 8 --no-profiles --explain";
  const CommandResult latency = Reel(plan + " --objective latency 2>&1");
  ASSERT_EQ(latency.exit_code, 0) << latency.output;
  EXPECT_NE(latency.output.find("Sequence parallelism for the denoiser (8 devices like"), std::string::npos)
      << latency.output;
  EXPECT_NE(latency.output.find("latency objective): degree 4 with the guidance split (8 devices)"),
            std::string::npos)
      << latency.output;
  EXPECT_NE(latency.output.find("degree 1 (1 device): "), std::string::npos) << latency.output;
  EXPECT_NE(latency.output.find("slower than degree 4 with the guidance split"), std::string::npos) << latency.output;
  const CommandResult throughput = Reel(plan + " --objective throughput --json 2>&1");
  ASSERT_EQ(throughput.exit_code, 0) << throughput.output;
  const auto j = nlohmann::json::parse(throughput.output.substr(throughput.output.find('{')));
  const auto& sp = j.at("sequence_parallel");
  const auto& chosen = sp.at("choices").at(sp.at("chosen").get<size_t>());
  // Pipelining (each GPU its own job) serves the most jobs an hour: a degree of k runs at less than k times.
  EXPECT_EQ(chosen.at("degree").get<int>(), 1) << sp.dump(1);
  EXPECT_FALSE(chosen.at("guidance_split").get<bool>());
  for (const auto& c : sp.at("choices")) {
    EXPECT_LE(c.at("efficiency").get<double>(), 1.0 + 1e-9);
    if (c.at("devices").get<int>() > 1) EXPECT_LT(c.at("seconds").get<double>(), chosen.at("seconds").get<double>());
  }
  EXPECT_EQ(sp.at("why").size(), sp.at("choices").size() - 1);
}

}  // namespace
}  // namespace reel
