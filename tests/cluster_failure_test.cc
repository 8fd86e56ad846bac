// Failures and stops as they happen to real processes on loopback: a worker killed (SIGKILL) or frozen (SIGSTOP)
// in the middle of a denoise, a coordinator killed and started again with jobs in flight, and graceful stops
// (SIGTERM) of a worker and of the coordinator. Every job completes exactly once, clients and workers find a
// restarted coordinator by themselves, and a stopped process exits 0 having handed over what it held.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "tests/cluster_harness.h"
#include "tests/test_util.h"

namespace reel {
namespace {

using testing::Cluster;
using testing::CommandResult;
using testing::Process;
using testing::Quote;
using testing::RunCommand;
using testing::ScratchDir;
using testing::WaitFor;
namespace v1 = reel::v1;
using Clock = std::chrono::steady_clock;

// Enough steps that a denoise takes a while with one thread (about 1.5 ms a step at 9x64x64 here), so a signal
// lands in its middle; no guidance, so one worker runs it.
v1::SubmitJobRequest Job(int steps, int seed = 1, int frames = 9, int size = 64) {
  v1::SubmitJobRequest req;
  auto* s = req.mutable_spec();
  s->set_model("tiny");
  s->set_prompt("a red fox");
  s->set_frames(frames);
  s->set_height(size);
  s->set_width(size);
  s->set_steps(steps);
  s->set_guidance(1.0);
  s->set_seed(seed);
  return req;
}

const v1::StageRun& StageOf(const v1::Job& j, v1::Stage s) {
  for (const auto& st : j.stages())
    if (st.stage() == s) return st;
  static v1::StageRun none;
  return none;
}

// How often the coordinator's log (every start of it, appended) says `job` succeeded.
int Successes(const std::string& log, const std::string& job) {
  const std::regex line("job " + job + " succeeded\\n");
  return static_cast<int>(std::distance(std::sregex_iterator(log.begin(), log.end(), line), std::sregex_iterator()));
}

bool FileHas(const std::filesystem::path& file, const std::string& text) {
  std::ifstream in(file);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str().find(text) != std::string::npos;
}

// Frames in an MP4, as ffprobe counts them by decoding.
int FramesIn(const std::filesystem::path& mp4) {
  const CommandResult r = RunCommand("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                                     "stream=nb_read_frames -of csv=p=0 " +
                                     Quote(mp4.string()));
  return r.exit_code == 0 ? std::atoi(r.output.c_str()) : -1;
}

class ClusterFailureTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new ScratchDir("cluster-failure");
    ::setenv("REEL_CACHE_DIR", (*scratch_ / "cache").c_str(), 1);
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }
  void SetUp() override {
    dir_ = scratch_->path() / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directories(dir_);
    cluster_ = std::make_unique<Cluster>(REEL_BINARY, dir_);
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << cluster_->Logs();
    cluster_.reset();
  }

  static CommandResult Reel(const std::string& args) { return RunCommand(std::string(REEL_BINARY) + " " + args); }

  std::string Submit(const v1::SubmitJobRequest& req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::SubmitJobResponse resp;
    const grpc::Status st = cluster_->stub().SubmitJob(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.job_id();
  }

  // The text encoder and decoder on "enc", the denoiser on "dit0" and "dit1": a denoise can move between the two
  // while the text encoder's result stays where it is.
  void StartSplit(const std::vector<std::string>& extra = {}) {
    const auto placement = dir_ / "placement.json";
    std::ofstream(placement) << R"({"workers": [
        {"name": "enc", "stages": ["text_encoder", "vae_decoder"]},
        {"name": "dit0", "stages": ["denoiser"]}, {"name": "dit1", "stages": ["denoiser"]}]})";
    std::vector<std::string> args = {"--placement", placement.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(cluster_->StartCoordinator(args));
    for (const char* n : {"enc", "dit0", "dit1"}) cluster_->StartWorker(n);
    ASSERT_TRUE(cluster_->WaitIdle(3));
  }

  // Waits until `id` denoises (at least `step` steps done); returns the worker doing it.
  std::string WaitDenoising(const std::string& id, int step = 5) {
    std::string worker;
    EXPECT_TRUE(WaitFor(
        [&] {
          const v1::Job j = cluster_->Job(id);
          const v1::StageRun& d = StageOf(j, v1::DENOISER);
          worker = d.worker();
          return d.state() == "running" && d.step() >= step;
        },
        60))
        << id << " never denoised";
    return worker;
  }

  std::string WorkerState(const std::string& name) {
    const v1::ListWorkersResponse list = cluster_->Workers();
    for (const auto& w : list.workers())
      if (w.name() == name) return w.state();
    return "";
  }

  // The jobs table of the coordinator's store: id → state.
  std::map<std::string, std::string> StoredStates() {
    const CommandResult r = RunCommand("sqlite3 " + Quote((cluster_->data() / "jobs.db").string()) +
                                       " 'SELECT id, state FROM jobs'");
    std::map<std::string, std::string> out;
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);)
      if (auto bar = line.find('|'); bar != std::string::npos) out[line.substr(0, bar)] = line.substr(bar + 1);
    return out;
  }

  static ScratchDir* scratch_;
  std::filesystem::path dir_;
  std::unique_ptr<Cluster> cluster_;
};

ScratchDir* ClusterFailureTest::scratch_ = nullptr;

TEST_F(ClusterFailureTest, AJobWhoseWorkerIsKilledMidDenoiseCompletesOnAnother) {
  // Every worker holds every stage: the job can run anywhere.
  ASSERT_TRUE(cluster_->StartCoordinator({"--no-plan"}));
  cluster_->StartWorker("a");
  cluster_->StartWorker("b");
  ASSERT_TRUE(cluster_->WaitIdle(2));
  const std::string id = Submit(Job(400));
  const std::string victim = WaitDenoising(id);
  ASSERT_FALSE(victim.empty());
  const std::string survivor = victim == "a" ? "b" : "a";
  cluster_->worker(victim).Stop(SIGKILL);

  // Its call fails at once; the job runs again, and not on the dead worker even before its lease runs out (a
  // dispatch there would fail too and spend the job's attempts).
  const v1::Job j = cluster_->WaitJob(id);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  EXPECT_EQ(j.attempts(), 2);
  for (const auto& s : j.stages()) EXPECT_EQ(s.worker(), survivor) << v1::Stage_Name(s.stage());
  EXPECT_TRUE(WaitFor([&] { return WorkerState(victim) == "lost"; }, 10)) << WorkerState(victim);
  EXPECT_EQ(Successes(cluster_->coordinator().Log(), id), 1);
}

TEST_F(ClusterFailureTest, AFrozenWorkerIsLostItsStageRunsElsewhereAndItRejoins) {
  // --worker-timeout-ms 1500 with heartbeats every 200 ms (the harness's).
  ASSERT_NO_FATAL_FAILURE(StartSplit());
  const std::string id = Submit(Job(400));
  const std::string frozen = WaitDenoising(id);
  ASSERT_TRUE(frozen == "dit0" || frozen == "dit1") << frozen;
  const std::string other = frozen == "dit0" ? "dit1" : "dit0";
  const v1::Job before = cluster_->Job(id);
  const auto stopped = Clock::now();
  cluster_->worker(frozen).Signal(SIGSTOP);

  // Lost within its lease (plus the monitor's half-heartbeat tick and this poll), not before.
  ASSERT_TRUE(WaitFor([&] { return WorkerState(frozen) == "lost"; }, 10));
  const double lost_after = std::chrono::duration<double>(Clock::now() - stopped).count();
  EXPECT_GE(lost_after, 1.25);  // 1.5 s less the 200 ms since its last heartbeat, at worst
  EXPECT_LE(lost_after, 4.5);   // and the lease, with slack for a loaded machine

  // Only the denoise runs again (and the decode that was waiting for its latents): the text encoder's result on
  // "enc" is kept.
  const v1::Job j = cluster_->WaitJob(id);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  EXPECT_EQ(j.attempts(), 2);
  EXPECT_EQ(StageOf(j, v1::DENOISER).worker(), other);
  EXPECT_EQ(StageOf(j, v1::TEXT_ENCODER).worker(), "enc");
  EXPECT_EQ(StageOf(j, v1::TEXT_ENCODER).started_unix_us(), StageOf(before, v1::TEXT_ENCODER).started_unix_us())
      << "the text encoder ran again";
  EXPECT_NE(cluster_->coordinator().Log().find("running denoiser, vae_decoder again"), std::string::npos);

  // Woken, it hears it was declared lost, stops the stage it was given, drops what it held and registers again.
  cluster_->worker(frozen).Signal(SIGCONT);
  ASSERT_TRUE(WaitFor([&] { return WorkerState(frozen) == "idle"; }, 20)) << WorkerState(frozen);
  EXPECT_NE(cluster_->worker(frozen).Log().find("registering again"), std::string::npos);
  // Its late run changed nothing: the job succeeded once and is as it was.
  const v1::Job after = cluster_->Job(id);
  EXPECT_EQ(after.state(), v1::SUCCEEDED);
  EXPECT_EQ(after.finished_unix_us(), j.finished_unix_us());
  EXPECT_EQ(StageOf(after, v1::DENOISER).worker(), other);
  EXPECT_EQ(Successes(cluster_->coordinator().Log(), id), 1);
  // And it works: the next denoise goes to it (it has run the fewest stages in its new registration).
  const v1::Job next = cluster_->WaitJob(Submit(Job(2, 2)));
  ASSERT_EQ(next.state(), v1::SUCCEEDED) << next.error();
  EXPECT_EQ(StageOf(next, v1::DENOISER).worker(), frozen);
}

TEST_F(ClusterFailureTest, ACoordinatorKilledWithJobsInFlightFinishesEachOnceAfterARestart) {
  ASSERT_TRUE(cluster_->StartCoordinator({"--no-plan"}));
  cluster_->StartWorker("a");
  cluster_->StartWorker("b");
  ASSERT_TRUE(cluster_->WaitIdle(2));
  // A client following its job across the restart.
  const auto out = dir_ / "waited.mp4";
  Process waiting({REEL_BINARY, "submit", "--coordinator", cluster_->address(), "--model", "tiny", "--prompt", "fox",
                   "--frames", "9", "--height", "64", "--width", "64", "--steps", "150", "--guidance", "1", "--wait",
                   "--out", out.string()},
                  dir_ / "submit.log");
  ASSERT_TRUE(WaitFor([&] { return FileHas(dir_ / "submit.log", "job-1"); }, 30)) << waiting.Log();
  std::vector<std::string> ids = {"job-1"};
  for (int i = 0; i < 4; ++i) ids.push_back(Submit(Job(150, 10 + i)));
  // Two jobs denoise, three wait.
  ASSERT_FALSE(WaitDenoising("job-1").empty());
  std::set<std::string> running;
  for (const auto& id : ids)
    if (cluster_->Job(id).state() == v1::RUNNING) running.insert(id);
  ASSERT_FALSE(running.empty());

  cluster_->KillCoordinator();
  ASSERT_TRUE(cluster_->RestartCoordinator({"--no-plan"}));
  // The workers come back by themselves, each under its own new id.
  ASSERT_TRUE(WaitFor(
      [&] {
        std::set<std::string> names, ids;
        const v1::ListWorkersResponse list = cluster_->Workers();
        for (const auto& w : list.workers())
          if (w.state() != "lost") names.insert(w.name()), ids.insert(w.id());
        return names == std::set<std::string>{"a", "b"} && ids.size() == 2;
      },
      20));
  for (const auto& id : ids) {
    const v1::Job j = cluster_->WaitJob(id);
    EXPECT_EQ(j.state(), v1::SUCCEEDED) << id << ": " << j.error();
    // Interrupted jobs ran again from their first stage; the store kept their attempts.
    if (running.count(id)) {
      EXPECT_EQ(j.attempts(), 2) << id;
    }
  }
  // Each exactly once: one success in the coordinator's log over both runs, one succeeded row, one output.
  const std::string log = cluster_->coordinator().Log();
  for (const auto& id : ids) EXPECT_EQ(Successes(log, id), 1) << id;
  const auto stored = StoredStates();
  EXPECT_EQ(stored.size(), ids.size());
  for (const auto& [id, state] : stored) EXPECT_EQ(state, "succeeded") << id;
  for (const auto& id : ids) EXPECT_EQ(FramesIn(cluster_->data() / "outputs" / (id + ".mp4")), 9) << id;

  // The client that was waiting reconnected, saw its job through and wrote the video.
  const int status = waiting.Wait(60);
  ASSERT_NE(status, -1) << waiting.Log();
  EXPECT_EQ(WEXITSTATUS(status), 0) << waiting.Log();
  EXPECT_NE(waiting.Log().find("reconnecting"), std::string::npos) << waiting.Log();
  EXPECT_EQ(FramesIn(out), 9) << waiting.Log();
}

TEST_F(ClusterFailureTest, ASigtermedWorkerFinishesItsStageHandsOverAndLeaves) {
  ASSERT_NO_FATAL_FAILURE(StartSplit());
  const std::string first = Submit(Job(300));
  const std::string leaving = WaitDenoising(first);
  ASSERT_TRUE(leaving == "dit0" || leaving == "dit1") << leaving;
  const std::string staying = leaving == "dit0" ? "dit1" : "dit0";
  cluster_->worker(leaving).Signal(SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return WorkerState(leaving) == "draining"; }, 10)) << WorkerState(leaving);
  // Two more denoises while it drains: both go to the other worker, the second waiting for it rather than taking
  // the draining one when that finishes.
  const std::string second = Submit(Job(1000, 2)), third = Submit(Job(1000, 3));

  // It finishes its denoise (not run again), waits for the decoder to fetch the latents, leaves, and exits 0.
  const int status = cluster_->worker(leaving).Wait(30);
  ASSERT_NE(status, -1) << "the draining worker did not exit";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const v1::Job j = cluster_->WaitJob(first);
  ASSERT_EQ(j.state(), v1::SUCCEEDED) << j.error();
  EXPECT_EQ(j.attempts(), 1);
  EXPECT_EQ(StageOf(j, v1::DENOISER).worker(), leaving);
  for (const auto& id : {second, third}) {
    const v1::Job k = cluster_->WaitJob(id);
    ASSERT_EQ(k.state(), v1::SUCCEEDED) << k.error();
    EXPECT_EQ(StageOf(k, v1::DENOISER).worker(), staying) << id;
  }
  // Gone, not lost: no longer listed, and the coordinator never waited for its lease.
  EXPECT_EQ(WorkerState(leaving), "");
  const std::string log = cluster_->coordinator().Log();
  EXPECT_NE(log.find("worker " + leaving + " left"), std::string::npos) << log;
  EXPECT_EQ(log.find("worker " + leaving + " (127"), std::string::npos) << "declared lost:\n" << log;
  EXPECT_NE(cluster_->worker(leaving).Log().find("drained; left the coordinator"), std::string::npos);
}

TEST_F(ClusterFailureTest, ASigtermedCoordinatorFinishesRunningJobsKeepsTheQueueAndExitsZero) {
  ASSERT_TRUE(cluster_->StartCoordinator({"--no-plan"}));
  cluster_->StartWorker("solo");
  ASSERT_TRUE(cluster_->WaitIdle(1));
  const std::string running = Submit(Job(1000));
  ASSERT_FALSE(WaitDenoising(running).empty());
  // A client submits a job that waits behind it, and follows it across the stop and the next start.
  const auto out = dir_ / "queued.mp4";
  Process waiting({REEL_BINARY, "submit", "--coordinator", cluster_->address(), "--model", "tiny", "--prompt", "fox",
                   "--frames", "9", "--height", "64", "--width", "64", "--steps", "2", "--wait", "--out",
                   out.string()},
                  dir_ / "submit.log");
  const std::string queued = "job-2";
  ASSERT_TRUE(WaitFor([&] { return FileHas(dir_ / "submit.log", queued); }, 30)) << waiting.Log();
  cluster_->coordinator().Signal(SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return FileHas(dir_ / "coordinator.log", "coordinator draining"); }, 10));
  ASSERT_TRUE(FileHas(dir_ / "coordinator.log", "1 running job(s) may finish")) << "nothing ran when it drained";

  // Draining: new jobs are refused with the reason, in one line, and nothing is queued.
  {
    grpc::ClientContext ctx;
    v1::SubmitJobResponse resp;
    const grpc::Status st = cluster_->stub().SubmitJob(&ctx, Job(2, 3), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(st.error_message().find("draining"), std::string::npos) << st.error_message();
  }
  const CommandResult refused =
      Reel("submit --model tiny --prompt x --frames 9 --height 64 --width 64 --steps 2 --reconnect-seconds 0 "
           "--coordinator " +
           cluster_->address());
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("the coordinator is draining"), std::string::npos) << refused.output;
  EXPECT_EQ(std::count(refused.output.begin(), refused.output.end(), '\n'), 1) << refused.output;

  // The running job finishes; the coordinator exits 0 with the queued job still queued in its store.
  const int status = cluster_->coordinator().Wait(40);
  ASSERT_NE(status, -1) << "the coordinator did not exit";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto stored = StoredStates();
  EXPECT_EQ(stored[running], "succeeded");
  EXPECT_EQ(stored[queued], "queued");
  EXPECT_EQ(stored.size(), 2u);

  // Started again: the worker finds it, the queued job runs, and its client, reconnected, writes the video.
  ASSERT_TRUE(cluster_->RestartCoordinator({"--no-plan", "--drain-seconds", "1"}));
  EXPECT_EQ(cluster_->WaitJob(queued).state(), v1::SUCCEEDED);
  const int client = waiting.Wait(30);
  ASSERT_NE(client, -1) << waiting.Log();
  EXPECT_EQ(WEXITSTATUS(client), 0) << waiting.Log();
  EXPECT_EQ(FramesIn(out), 9) << waiting.Log();

  // The drain is bounded: a job longer than --drain-seconds is stopped with it and queued for the next start.
  const std::string longer = Submit(Job(1000, 4, 17, 128));  // several seconds
  ASSERT_FALSE(WaitDenoising(longer).empty());
  const auto signalled = Clock::now();
  cluster_->coordinator().Signal(SIGTERM);
  const int bounded = cluster_->coordinator().Wait(15);
  ASSERT_NE(bounded, -1) << "the coordinator outlived its drain bound";
  EXPECT_TRUE(WIFEXITED(bounded) && WEXITSTATUS(bounded) == 0) << bounded;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - signalled).count(), 10.0);
  EXPECT_EQ(StoredStates()[longer], "queued");  // cut short, not finished
}

TEST_F(ClusterFailureTest, EndedJobsLeaveMemoryAndAreStillServedFromTheStore) {
  // Memory keeps one ended job: the others are read from the store when asked for, so a long-running coordinator
  // does not grow with its history.
  ASSERT_TRUE(cluster_->StartCoordinator({"--no-plan", "--keep-ended-jobs", "1"}));
  cluster_->StartWorker("solo");
  ASSERT_TRUE(cluster_->WaitIdle(1));
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(Submit(Job(1, i)));
    ASSERT_EQ(cluster_->WaitJob(ids.back()).state(), v1::SUCCEEDED);
  }
  const std::string at = " --coordinator " + cluster_->address();
  // The oldest, long out of memory: shown, downloaded, watched, listed, and not cancellable, as before.
  const v1::Job first = cluster_->Job(ids[0]);
  EXPECT_EQ(first.state(), v1::SUCCEEDED);
  EXPECT_EQ(first.stages_size(), 3);
  const auto out = dir_ / "first.mp4";
  const CommandResult got = Reel("job " + ids[0] + at + " --out " + Quote(out.string()));
  EXPECT_EQ(got.exit_code, 0) << got.output;
  EXPECT_EQ(FramesIn(out), 9);
  {
    grpc::ClientContext ctx;
    v1::GetJobRequest req;
    req.set_job_id(ids[0]);
    auto reader = cluster_->stub().WatchJob(&ctx, req);
    v1::Job seen;
    int n = 0;
    while (reader->Read(&seen)) ++n;
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(n, 1);
    EXPECT_EQ(seen.state(), v1::SUCCEEDED);
  }
  const CommandResult listed = Reel("jobs --json" + at);
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  for (const auto& id : ids) EXPECT_NE(listed.output.find("\"" + id + "\""), std::string::npos) << id;
  const CommandResult cancel = Reel("cancel " + ids[0] + at);
  EXPECT_EQ(cancel.exit_code, 2) << cancel.output;
  EXPECT_NE(cancel.output.find("already SUCCEEDED"), std::string::npos) << cancel.output;
  const CommandResult unknown = Reel("job job-99" + at);
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("job 'job-99': no such job"), std::string::npos) << unknown.output;
}

}  // namespace
}  // namespace reel
