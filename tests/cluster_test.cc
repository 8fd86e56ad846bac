// The coordinator and workers as users run them: real processes on loopback ports chosen at run time, jobs
// submitted with the CLI, state read over reel.v1. Stages run where they were placed, outputs equal `reel
// generate`'s, jobs pipeline across workers, guidance-parallel equals single-worker output, cancel frees the
// worker, a queued job survives a coordinator restart, and bad input is refused before anything is queued.
#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
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
using testing::StageOf;
using testing::WaitFor;
namespace v1 = reel::v1;

constexpr const char* kJob = "--model tiny --prompt 'a red fox' --frames 9 --height 64 --width 64";

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("cluster");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
    // One reference per job shape used below, from `reel generate` in one process with one thread (as the
    // workers run), so the frames must match exactly.
    const CommandResult r = Reel(std::string("generate ") + kJob + " --steps 4 --threads 1 --out " +
                                 Quote((*scratch_ / "ref.mp4").string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = scratch_->path() / info->name();
    std::filesystem::remove_all(dir_);
    cluster_ = std::make_unique<Cluster>(REEL_BINARY, dir_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
    cluster_.reset();
  }

  static CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

  std::string Placement(const std::string& json) {
    const auto p = dir_ / "placement.json";
    std::ofstream(p) << json;
    return p.string();
  }

  // Submits with the CLI; returns the job id printed on stdout.
  std::string Submit(const std::string& args) {
    const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + args + " 2>/dev/null");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string id = r.output;
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
    return id;
  }

  void ExpectSameAsGenerate(const std::filesystem::path& mp4) {
    const std::string got = testing::DecodedRgb(mp4), want = testing::DecodedRgb(scratch_->path() / "ref.mp4");
    ASSERT_FALSE(want.empty());
    EXPECT_EQ(got.size(), want.size());
    EXPECT_TRUE(got == want) << "the frames differ from reel generate's";
  }

  // Encoders and decoder on "enc", the denoiser on "dit".
  void StartSplit() {
    const std::string placement = Placement(R"({"workers": [
        {"name": "enc", "stages": ["text_encoder", "vae_decoder"]},
        {"name": "dit", "stages": ["denoiser"]}]})");
    ASSERT_TRUE(cluster_->StartCoordinator({"--placement", placement}));
    cluster_->StartWorker("enc");
    cluster_->StartWorker("dit");
    ASSERT_TRUE(cluster_->WaitIdle(2));
  }

  // Encoders and decoder on "enc", two denoiser workers "dit0" and "dit1" (a guided denoise splits across them).
  void StartGuidanceParallel() {
    const std::string placement = Placement(R"({"workers": [
        {"name": "enc", "stages": ["text_encoder", "vae_decoder"]},
        {"name": "dit0", "stages": ["denoiser"]},
        {"name": "dit1", "stages": ["denoiser"]}]})");
    ASSERT_TRUE(cluster_->StartCoordinator({"--placement", placement}));
    for (const char* n : {"enc", "dit0", "dit1"}) cluster_->StartWorker(n);
  }

  static ScratchDir* scratch_;
  std::filesystem::path dir_;
  std::unique_ptr<Cluster> cluster_;
};

ScratchDir* ClusterTest::scratch_ = nullptr;

TEST_F(ClusterTest, StagesRunWhereTheyArePlacedAndTheVideoEqualsGenerate) {
  ASSERT_NO_FATAL_FAILURE(StartSplit());
  // Both kinds of process answer the standard health check.
  EXPECT_TRUE(testing::HealthServing(cluster_->address()));
  const auto workers = cluster_->Workers();
  for (const auto& w : workers.workers()) {
    EXPECT_TRUE(testing::HealthServing(w.address())) << w.name();
    if (w.name() == "enc") {
      EXPECT_EQ(w.stages_size(), 2);
    }
    if (w.name() == "dit") {
      ASSERT_EQ(w.stages_size(), 1);
    }
  }

  const auto out = dir_ / "fox.mp4";
  const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + kJob +
                               " --steps 4 --wait --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string id = r.output.substr(0, r.output.find('\n'));
  const v1::Job j = cluster_->Job(id);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  EXPECT_EQ(StageOf(j, v1::TEXT_ENCODER).worker(), "enc");
  EXPECT_EQ(StageOf(j, v1::DENOISER).worker(), "dit");
  EXPECT_EQ(StageOf(j, v1::VAE_DECODER).worker(), "enc");
  EXPECT_TRUE(StageOf(j, v1::DENOISER).guidance_peer().empty());
  ExpectSameAsGenerate(out);

  // The human table and the JSON agree on where each stage ran.
  const CommandResult table = Reel("job " + id + " --coordinator " + cluster_->address());
  EXPECT_NE(table.output.find("denoiser      done      on dit"), std::string::npos) << table.output;
  const CommandResult js = Reel("job " + id + " --json --coordinator " + cluster_->address());
  ASSERT_EQ(js.exit_code, 0) << js.output;
  const auto parsed = nlohmann::json::parse(js.output);
  EXPECT_EQ(parsed["state"], "SUCCEEDED");
  EXPECT_EQ(parsed["stages"][1]["worker"], "dit");

  // The listings, as people and scripts read them.
  const CommandResult wt = Reel("workers --coordinator " + cluster_->address());
  ASSERT_EQ(wt.exit_code, 0) << wt.output;
  EXPECT_NE(wt.output.find("dit          idle"), std::string::npos) << wt.output;
  EXPECT_NE(wt.output.find("tiny/denoiser (none)"), std::string::npos) << wt.output;
  const CommandResult wj = Reel("workers --json --coordinator " + cluster_->address());
  ASSERT_EQ(wj.exit_code, 0) << wj.output;
  EXPECT_EQ(nlohmann::json::parse(wj.output)["workers"].size(), 2u);
  const CommandResult jl = Reel("jobs --json --coordinator " + cluster_->address());
  ASSERT_EQ(jl.exit_code, 0) << jl.output;
  EXPECT_EQ(nlohmann::json::parse(jl.output)["jobs"][0]["id"], id);
  const CommandResult jt = Reel("jobs --coordinator " + cluster_->address());
  EXPECT_NE(jt.output.find(id + " "), std::string::npos) << jt.output;
  EXPECT_NE(jt.output.find("succeeded"), std::string::npos) << jt.output;

  // Each run's profile reached the coordinator's profile store.
  const CommandResult rows = RunCommand("sqlite3 " + Quote((cluster_->data() / "profiles.db").string()) +
                                        " 'SELECT stage FROM stage_profiles ORDER BY id'");
  EXPECT_EQ(rows.output, "text_encoder\ndenoiser\nvae_decoder\n");
}

TEST_F(ClusterTest, GuidanceParallelDenoisingEqualsOneWorker) {
  ASSERT_NO_FATAL_FAILURE(StartGuidanceParallel());
  ASSERT_TRUE(cluster_->WaitIdle(3));
  const auto out = dir_ / "fox.mp4";
  const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + kJob +
                               " --steps 4 --wait --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const v1::Job j = cluster_->Job(r.output.substr(0, r.output.find('\n')));
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  const auto& d = StageOf(j, v1::DENOISER);
  EXPECT_EQ((std::set<std::string>{d.worker(), d.guidance_peer()}), (std::set<std::string>{"dit0", "dit1"}));
  ExpectSameAsGenerate(out);
}

TEST_F(ClusterTest, JobsPipelineAcrossWorkers) {
  ASSERT_NO_FATAL_FAILURE(StartSplit());
  // Submitted over the API back to back (a CLI process takes longer to start than a tiny stage takes to run).
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    v1::SubmitJobRequest req;
    auto* spec = req.mutable_spec();
    spec->set_model("tiny");
    spec->set_prompt("a red fox");
    spec->set_frames(9);
    spec->set_height(64);
    spec->set_width(64);
    spec->set_steps(40);
    spec->set_guidance(6);
    spec->set_seed(i);
    grpc::ClientContext ctx;
    v1::SubmitJobResponse resp;
    ASSERT_TRUE(cluster_->stub().SubmitJob(&ctx, req, &resp).ok());
    ids.push_back(resp.job_id());
  }
  std::vector<v1::Job> done;
  for (const auto& id : ids) {
    done.push_back(cluster_->WaitJob(id));
    ASSERT_EQ(done.back().state(), v1::SUCCEEDED) << done.back().error();
  }
  // Some stage of one job ran on the encoder worker while a different job denoised on the other.
  int overlaps = 0;
  for (size_t a = 0; a < done.size(); ++a)
    for (size_t b = 0; b < done.size(); ++b) {
      if (a == b) continue;
      const auto& den = StageOf(done[b], v1::DENOISER);
      for (const auto& s : done[a].stages())
        if (s.worker() == "enc" && s.started_unix_us() < den.finished_unix_us() &&
            den.started_unix_us() < s.finished_unix_us())
          ++overlaps;
    }
  std::string timeline;
  for (const auto& j : done)
    for (const auto& s : j.stages())
      timeline += fmt::format("{} {} on {}: {} .. {}\n", j.id(), v1::Stage_Name(s.stage()), s.worker(),
                              s.started_unix_us() % 100000000, s.finished_unix_us() % 100000000);
  EXPECT_GT(overlaps, 0) << "no two jobs' stages ran at once:\n" << timeline;
  // FIFO within a priority: jobs started in submission order.
  EXPECT_LT(done[0].started_unix_us(), done[1].started_unix_us());
  EXPECT_LT(done[1].started_unix_us(), done[2].started_unix_us());
}

TEST_F(ClusterTest, CancelStopsAJobAndFreesItsWorker) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  cluster_->StartWorker("solo");
  ASSERT_TRUE(cluster_->WaitIdle(1));
  const std::string id = Submit(std::string(kJob) + " --steps 900");
  ASSERT_TRUE(WaitFor([&] { return StageOf(cluster_->Job(id), v1::DENOISER).step() >= 2; }, 60)) << "never denoised";
  const CommandResult c = Reel("cancel " + id + " --coordinator " + cluster_->address());
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(c.output, "cancelled " + id + "\n");
  EXPECT_EQ(cluster_->Job(id).state(), v1::CANCELLED);
  // The worker stops at the next step and is free for the next job.
  ASSERT_TRUE(WaitFor([&] { return cluster_->Workers().workers(0).state() == "idle"; }, 10));
  EXPECT_LT(StageOf(cluster_->Job(id), v1::DENOISER).step(), 900);
  const v1::Job next = cluster_->WaitJob(Submit(std::string(kJob) + " --steps 2"));
  EXPECT_EQ(next.state(), v1::SUCCEEDED) << next.error();
  // Cancelling an ended job says so.
  const CommandResult again = Reel("cancel " + id + " --coordinator " + cluster_->address());
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("already CANCELLED"), std::string::npos) << again.output;
}

TEST_F(ClusterTest, CancelFreesAWorkerWaitingForItsInputs) {
  ASSERT_NO_FATAL_FAILURE(StartSplit());
  const std::string id = Submit(std::string(kJob) + " --steps 900");
  // While the denoiser runs, the decoder was dispatched early to the idle encoder worker and waits for latents.
  ASSERT_TRUE(WaitFor([&] { return StageOf(cluster_->Job(id), v1::DENOISER).step() >= 2; }, 60));
  ASSERT_EQ(StageOf(cluster_->Job(id), v1::VAE_DECODER).state(), "running");
  ASSERT_EQ(Reel("cancel " + id + " --coordinator " + cluster_->address()).exit_code, 0);
  ASSERT_TRUE(WaitFor(
      [&] {
        const auto w = cluster_->Workers();
        return w.workers_size() == 2 && w.workers(0).state() == "idle" && w.workers(1).state() == "idle";
      },
      10))
      << "a worker stayed busy after the cancel";
  const v1::Job j = cluster_->Job(id);
  EXPECT_EQ(j.state(), v1::CANCELLED);
  EXPECT_EQ(StageOf(j, v1::VAE_DECODER).state(), "cancelled");
  const v1::Job next = cluster_->WaitJob(Submit(std::string(kJob) + " --steps 2"));
  EXPECT_EQ(next.state(), v1::SUCCEEDED) << next.error();
}

TEST_F(ClusterTest, AQueuedJobSurvivesACoordinatorRestart) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  const std::string id = Submit(std::string(kJob) + " --steps 4");
  EXPECT_EQ(cluster_->Job(id).state(), v1::QUEUED);  // no worker yet
  cluster_->KillCoordinator();                       // no clean shutdown
  ASSERT_TRUE(cluster_->StartCoordinator());
  EXPECT_EQ(cluster_->Job(id).state(), v1::QUEUED);
  cluster_->StartWorker("late");
  const v1::Job j = cluster_->WaitJob(id);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  const auto out = dir_ / "later.mp4";
  const CommandResult r = Reel("job " + id + " --coordinator " + cluster_->address() + " --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectSameAsGenerate(out);
}

// AIP-155: a retry under the same request id is the job the first try queued, across a coordinator restart too;
// AIP-158: listings come in pages with a token for the next.
TEST_F(ClusterTest, ARetriedSubmissionIsOneJobAcrossARestartAndListingsComeInPages) {
  ASSERT_TRUE(cluster_->StartCoordinator());  // no workers: every job stays queued
  auto submit = [&](const std::string& request_id) {
    v1::SubmitJobRequest req;
    auto* spec = req.mutable_spec();
    spec->set_model("tiny");
    spec->set_prompt("a red fox");
    spec->set_steps(2);
    req.set_request_id(request_id);
    v1::SubmitJobResponse resp;
    grpc::Status st;
    // The first call after the restart may meet the old connection broken: retried, as a client with a request
    // id may, until the coordinator answers.
    for (int tries = 0; tries < 50; ++tries) {
      grpc::ClientContext ctx;
      st = cluster_->stub().SubmitJob(&ctx, req, &resp);
      if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.job_id();
  };
  const std::string a = submit("req-a");
  EXPECT_EQ(submit("req-a"), a);
  const std::string b = submit("req-b");
  EXPECT_NE(b, a);
  const std::string c = submit("");
  ASSERT_TRUE(cluster_->RestartCoordinator());
  EXPECT_EQ(submit("req-a"), a);  // the request id was stored with the job
  const std::string cli = Submit(std::string(kJob) + " --request-id req-b");
  EXPECT_EQ(cli, b);

  v1::ListJobsRequest req;
  req.set_page_size(2);
  std::vector<std::string> seen;
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 3);
    grpc::ClientContext ctx;
    v1::ListJobsResponse resp;
    ASSERT_TRUE(cluster_->stub().ListJobs(&ctx, req, &resp).ok());
    EXPECT_LE(resp.jobs_size(), 2);
    for (const auto& j : resp.jobs()) seen.push_back(j.id());
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  EXPECT_EQ(seen, (std::vector<std::string>{c, b, a}));
  req.set_page_token("nonsense");
  grpc::ClientContext ctx;
  v1::ListJobsResponse resp;
  const grpc::Status st = cluster_->stub().ListJobs(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("page_token 'nonsense'"), std::string::npos) << st.error_message();
  const CommandResult listed = Reel("jobs --json --limit 2 --coordinator " + cluster_->address());
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_EQ(nlohmann::json::parse(listed.output)["jobs"].size(), 2u);
}

TEST_F(ClusterTest, BadInputIsRefusedBeforeAnythingIsQueued) {
  ASSERT_TRUE(cluster_->StartCoordinator());
  const std::string at = " --coordinator " + cluster_->address();
  struct Case {
    std::string args, expect;
  } cases[] = {
      {"--model tiny --prompt x --frames 10", "--frames 10"},
      {"--model tiny --prompt x --height 70", "--height 70"},
      {"--model tiny --prompt x --steps 0", "--steps 0"},
      {"--model nope --prompt x", "model 'nope': this coordinator serves tiny"},
      {"--model tiny --prompt x --priority 5000", "priority 5000: accepted -1000 to 1000"},
      {"--model tiny --prompt x --objective fastest", "--objective 'fastest': accepted throughput or latency"},
  };
  for (const auto& c : cases) {
    const CommandResult r = Reel("submit " + c.args + at);
    EXPECT_EQ(r.exit_code, 2) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << "one line: " << r.output;
  }
  v1::ListJobsResponse jobs;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(cluster_->stub().ListJobs(&ctx, v1::ListJobsRequest{}, &jobs).ok());
  }
  EXPECT_EQ(jobs.jobs_size(), 0);

  // Unknown jobs are NOT_FOUND, through the CLI (exit 2) and the API.
  const CommandResult unknown = Reel("job job-404" + at);
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.output.find("job 'job-404': no such job"), std::string::npos) << unknown.output;
  v1::Job j;
  EXPECT_EQ(cluster_->GetJob("job-404", &j).error_code(), grpc::StatusCode::NOT_FOUND);

  // A second worker with a live worker's name is refused with the reason and exits 2.
  cluster_->StartWorker("twin");
  ASSERT_TRUE(cluster_->WaitIdle(1));
  cluster_->StartWorker("twin", {}, "twin2");
  const int status = cluster_->worker("twin2").Wait(20);
  ASSERT_NE(status, -1) << "the duplicate worker kept running";
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(cluster_->worker("twin2").Log().find("name 'twin': a live worker at"), std::string::npos);

  // An impossible device is refused at registration.
  auto reg = [&](const std::string& device, int64_t capacity) {
    grpc::ClientContext ctx;
    v1::RegisterRequest req;
    req.set_name("odd");
    req.set_address("127.0.0.1:1");
    req.set_device(device);
    req.set_device_capacity_bytes(capacity);
    v1::RegisterResponse resp;
    return cluster_->stub().Register(&ctx, req, &resp);
  };
  grpc::Status st = reg("tpu:0", 0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "device 'tpu:0': accepted cpu or cuda:N");
  st = reg("cpu", -5);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("device_capacity_bytes -5"), std::string::npos);
  // And a CUDA worker on a machine without a GPU (or a build without CUDA) says so before registering.
  const CommandResult cuda = Reel("worker --device cuda:0" + at);
  EXPECT_EQ(cuda.exit_code, 2);
  EXPECT_NE(cuda.output.find("--device cuda:0: accepted cpu"), std::string::npos) << cuda.output;
  const CommandResult sp = Reel("worker --sequence-parallel everywhere" + at);
  EXPECT_EQ(sp.exit_code, 2);
  EXPECT_NE(sp.output.find("--sequence-parallel 'everywhere': accepted loopback, network or off"), std::string::npos)
      << sp.output;
}

TEST_F(ClusterTest, ServeWithTwoWorkersMakesTheSameVideoAsGenerate) {
  const auto data = dir_ / "serve-data";
  testing::Process serve({REEL_BINARY, "serve", "--workers", "2", "--listen", "127.0.0.1:0", "--data", data.string(),
                          "--threads", "1", "--metrics", "127.0.0.1:0"},
                         dir_ / "serve.log");
  ASSERT_TRUE(WaitFor([&] { return std::filesystem::exists(data / "metrics.address"); }, 60)) << serve.Log();
  std::string address, metrics;
  std::ifstream(data / "coordinator.address") >> address;
  std::ifstream(data / "metrics.address") >> metrics;
  auto stub = reel::v1::Coordinator::NewStub(ChannelTo(address));
  ASSERT_TRUE(WaitFor(
      [&] {
        grpc::ClientContext ctx;
        v1::ListWorkersResponse w;
        stub->ListWorkers(&ctx, v1::ListWorkersRequest{}, &w);
        return w.workers_size() == 2 && w.workers(0).state() == "idle" && w.workers(1).state() == "idle";
      },
      60))
      << serve.Log();
  const auto out = dir_ / "served.mp4";
  const CommandResult r =
      Reel("submit --coordinator " + address + " " + kJob + " --steps 4 --wait --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output << serve.Log();
  ExpectSameAsGenerate(out);

  // The coordinator's metrics, scraped over HTTP.
  int status = 0;
  const std::string body = testing::HttpGet(std::stoi(metrics.substr(metrics.rfind(':') + 1)), "/metrics", &status);
  EXPECT_EQ(status, 200);
  for (const char* want : {"reel_jobs_total{event=\"submitted\"} 1", "reel_jobs_total{event=\"succeeded\"} 1",
                           "reel_queue_depth 0", "reel_workers{state=\"idle\"} 2", "reel_frames_generated_total 9",
                           "reel_job_duration_seconds_count 1", "reel_job_queue_wait_seconds_count 1",
                           "reel_job_stage_duration_seconds_count{stage=\"denoiser\"",
                           "reel_worker_device_memory_bytes{kind=\"used\",worker=\"w0\"}"})
    EXPECT_NE(body.find(want), std::string::npos) << want << "\n" << body;
  serve.Stop(SIGTERM);
}

// `reel submit --dynamic-cfg` reaches the denoiser through the coordinator (JobSpec.dynamic_cfg), also when its
// guidance branch runs on another worker: the video equals `reel generate --dynamic-cfg`'s, not the plain job's.
TEST_F(ClusterTest, DynamicGuidanceTravelsWithTheJob) {
  ASSERT_NO_FATAL_FAILURE(StartGuidanceParallel());
  const auto ref = dir_ / "dynamic-ref.mp4";
  const CommandResult g =
      Reel(std::string("generate ") + kJob + " --steps 4 --dynamic-cfg --threads 1 --out " + Quote(ref.string()));
  ASSERT_EQ(g.exit_code, 0) << g.output;
  ASSERT_TRUE(cluster_->WaitIdle(3));
  const auto out = dir_ / "fox.mp4";
  const CommandResult r = Reel("submit --coordinator " + cluster_->address() + " " + kJob +
                               " --steps 4 --dynamic-cfg --wait --out " + Quote(out.string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const v1::Job j = cluster_->Job(r.output.substr(0, r.output.find('\n')));
  EXPECT_TRUE(j.spec().dynamic_cfg());
  const CommandResult shown = Reel("job " + j.id() + " --coordinator " + cluster_->address());
  EXPECT_NE(shown.output.find("guidance 6 (dynamic)"), std::string::npos) << shown.output;
  EXPECT_FALSE(StageOf(j, v1::DENOISER).guidance_peer().empty());
  const std::string got = testing::DecodedRgb(out);
  EXPECT_TRUE(got == testing::DecodedRgb(ref)) << "the frames differ from reel generate --dynamic-cfg's";
  EXPECT_FALSE(got == testing::DecodedRgb(scratch_->path() / "ref.mp4")) << "--dynamic-cfg changed nothing";
}

}  // namespace
}  // namespace reel
