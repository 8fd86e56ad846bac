// The coordinator core driven directly with events: no network, threads or clock. Each test is a short history
// of a cluster and checks the commands the core answers with.
#include "coordinator/coordinator_core.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <set>

#include <fmt/format.h>

namespace reel::core {
namespace {

constexpr Micros kSecond = 1'000'000;
const std::vector<StageKind> kT2V = {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder};

Assignments Everything() {
  Assignments a;
  for (StageKind k : kT2V) a["m"].push_back({k, {}});
  return a;
}

CoreOptions Options() {
  CoreOptions o;
  o.models["m"] = {kT2V, false};
  o.planned = false;
  return o;
}

template <typename T>
std::vector<T> All(const StepResult& r) {
  std::vector<T> out;
  for (const auto& c : r.commands)
    if (auto* x = std::get_if<T>(&c)) out.push_back(*x);
  return out;
}

// A core with a clock the test moves, and helpers that answer its commands as a well-behaved worker would.
struct Harness {
  CoordinatorCore core;
  Micros now = kSecond;
  explicit Harness(CoreOptions o = Options()) : core(std::move(o)) { core.Restore({}, 1, 1, now); }

  StepResult Do(Event e) {
    now += 1000;
    StepResult r = core.Step(now, e);
    EXPECT_EQ(core.IndexMismatch(), "");  // what dispatch reads agrees with the state after every event
    return r;
  }
  // Registers a worker holding `target` (every stage) and finishes its load; returns its id and the load's step.
  std::string AddWorker(const std::string& name, StepResult* loaded = nullptr, Assignments target = Everything(),
                        bool sequence_parallel = false) {
    ev::Register r;
    r.name = name;
    r.address = name + ":1";
    r.device = "cpu";
    r.sequence_parallel = sequence_parallel;
    r.static_target = std::move(target);
    StepResult reg = Do(r);
    EXPECT_EQ(reg.reply.code, Code::kOk) << reg.reply.message;
    auto loads = All<cmd::LoadWorker>(reg);
    EXPECT_EQ(loads.size(), 1u);
    StepResult done = Do(LoadedAll(loads.at(0)));
    if (loaded) *loaded = done;
    return reg.reply.id;
  }
  ev::Loaded LoadedAll(const cmd::LoadWorker& l) {
    ev::Loaded e;
    e.worker_id = l.worker_id;
    e.reported = true;
    e.applied = l.want;
    e.held = l.held;
    for (const auto& [model, a] : l.want)
      for (const auto& c : a) e.holds.insert({model, c.kind});
    return e;
  }
  std::string Submit(int priority = 0, double guidance = 1.0, const std::string& request = "", bool latency = false) {
    ev::Submit s;
    s.shape = {"m", 9, 64, 64, 4, guidance, latency};
    s.priority = priority;
    s.request_id = request;
    last = Do(s);
    EXPECT_EQ(last.reply.code, Code::kOk) << last.reply.message;
    return last.reply.id;
  }
  ev::StageResult ResultOf(const cmd::RunStage& r) {
    ev::StageResult e;
    e.attempt = r.attempt;
    const char* out = r.kind == StageKind::kTextEncoder ? "text" : r.kind == StageKind::kDenoiser ? "latents"
                                                                                                 : "video.mp4";
    e.outputs.push_back({out, 100});
    return e;
  }
  StepResult last;
};

TEST(CoordinatorCore, AJobRunsItsStagesInOrderAndEndsOnceItsOutputIsStored) {
  Harness h;
  const std::string job = h.Submit();
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kQueued);
  EXPECT_EQ(All<cmd::Persist>(h.last).size(), 1u);  // durable before acknowledged
  StepResult loaded;
  h.AddWorker("w0", &loaded);
  auto runs = All<cmd::RunStage>(loaded);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].kind, StageKind::kTextEncoder);
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kRunning);
  StepResult s = h.Do(h.ResultOf(runs[0]));
  runs = All<cmd::RunStage>(s);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].kind, StageKind::kDenoiser);
  ASSERT_EQ(runs[0].inputs.size(), 1u);
  EXPECT_EQ(runs[0].inputs[0].worker, "w0");  // where the text is
  s = h.Do(h.ResultOf(runs[0]));
  runs = All<cmd::RunStage>(s);
  ASSERT_EQ(runs.size(), 1u);
  s = h.Do(h.ResultOf(runs[0]));
  const auto stores = All<cmd::StoreOutput>(s);
  ASSERT_EQ(stores.size(), 1u);
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kRunning);  // not until the MP4 is kept
  s = h.Do(ev::OutputStored{job, stores[0].attempt, "/out/job.mp4", "", 1234, 9});
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kSucceeded);
  EXPECT_EQ(h.core.FindJob(job)->output_path, "/out/job.mp4");
  EXPECT_EQ(All<cmd::ReleaseTensors>(s).size(), 1u);
  // A second copy of the same answer changes nothing.
  s = h.Do(ev::OutputStored{job, stores[0].attempt, "/elsewhere.mp4", "", 1, 9});
  EXPECT_EQ(h.core.FindJob(job)->output_path, "/out/job.mp4");
  EXPECT_TRUE(All<cmd::Persist>(s).empty());
}

TEST(CoordinatorCore, HigherPriorityFirstThenSubmissionOrder) {
  Harness h;
  const std::string a = h.Submit(0), b = h.Submit(5), c = h.Submit(0);
  StepResult loaded;
  h.AddWorker("w0", &loaded);
  auto runs = All<cmd::RunStage>(loaded);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].job_id, b);
  h.Do(ev::Cancel{b});
  StepResult s = h.Do(ev::StageFailed{runs[0].attempt, ev::Failure::kOther, "cancelled"});
  runs = All<cmd::RunStage>(s);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].job_id, a);
  EXPECT_NE(a, c);
}

TEST(CoordinatorCore, ASilentWorkerIsLostAtItsLeaseAndItsJobRunsAgainElsewhere) {
  Harness h;
  const std::string w0 = h.AddWorker("w0");
  const std::string job = h.Submit();
  const auto first = All<cmd::RunStage>(h.last);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].worker_id, w0);
  StepResult s = h.Do(ev::Tick{});
  EXPECT_EQ(h.core.workers().at(w0).state, WorkerState::kBusy);
  StepResult loaded;
  const std::string w1 = h.AddWorker("w1", &loaded);
  // Nothing else waits for w1: it takes the denoiser early, to fetch the text the moment it exists.
  const auto early = All<cmd::RunStage>(loaded);
  ASSERT_EQ(early.size(), 1u);
  EXPECT_EQ(early[0].kind, StageKind::kDenoiser);
  EXPECT_EQ(early[0].inputs.at(0).worker, "w0");
  h.now += h.core.options().worker_timeout_us + kSecond;
  EXPECT_EQ(h.Do(ev::Heartbeat{w1, 0, 0, 0}).reply.code, Code::kOk);  // w1 is alive; w0 stays silent
  s = h.Do(ev::Tick{});
  EXPECT_EQ(h.core.workers().at(w0).state, WorkerState::kLost);
  EXPECT_EQ(All<cmd::CancelRun>(s).size(), 2u);  // the lost run, and the one waiting for its output
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kQueued);
  // The cancelled calls end. The lost one ended as calls to a dead worker do, so every worker of the job is
  // suspect (w1 too) until it heartbeats; then the job starts again there.
  h.Do(ev::StageFailed{first[0].attempt, ev::Failure::kUnavailable, "gone"});
  s = h.Do(ev::StageFailed{early[0].attempt, ev::Failure::kOther, "cancelled"});
  EXPECT_TRUE(All<cmd::RunStage>(s).empty());
  EXPECT_TRUE(h.core.workers().at(w1).suspect);
  s = h.Do(ev::Heartbeat{w1, 0, 0, 0});
  const auto again = All<cmd::RunStage>(s);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].worker_id, w1);
  EXPECT_EQ(again[0].kind, StageKind::kTextEncoder);
  EXPECT_EQ(h.core.FindJob(job)->attempts, 2) << h.core.FindJob(job)->error;
  // Its heartbeat now is refused: it registers again from scratch.
  s = h.Do(ev::Heartbeat{w0, 0, 0, 0});
  EXPECT_EQ(s.reply.code, Code::kNotFound);
}

TEST(CoordinatorCore, ARestartQueuesRunningJobsAgainAndFailsJobsOfModelsNoLongerServed) {
  Job running;
  running.id = "job-1";
  running.seq = 1;
  running.shape.model = "m";
  running.state = JobState::kRunning;
  running.stages.resize(2);
  running.stages[0].kind = StageKind::kTextEncoder;
  running.stages[0].state = StageState::kDone;
  running.stages[1].kind = StageKind::kDenoiser;
  running.stages[1].state = StageState::kRunning;
  Job gone = running;
  gone.id = "job-2";
  gone.seq = 2;
  gone.shape.model = "retired";
  gone.state = JobState::kQueued;
  CoordinatorCore core(Options());
  const StepResult r = core.Restore({running, gone}, 7, 3, kSecond);
  EXPECT_EQ(core.FindJob("job-1")->state, JobState::kQueued);
  EXPECT_EQ(core.FindJob("job-1")->stages[0].state, StageState::kPending);
  EXPECT_EQ(core.FindJob("job-2")->state, JobState::kFailed);
  const auto persisted = All<cmd::Persist>(r);
  ASSERT_EQ(persisted.size(), 1u);
  EXPECT_EQ(persisted[0].jobs.size(), 2u);  // one transaction
  EXPECT_EQ(core.next_seq(), 3);
}

TEST(CoordinatorCore, ARetriedSubmissionWithTheSameRequestIdReturnsTheSameJob) {
  Harness h;
  const std::string a = h.Submit(0, 1.0, "req-1");
  const std::string b = h.Submit(0, 1.0, "req-1");
  EXPECT_EQ(a, b);
  EXPECT_TRUE(h.last.reply.existing);
  EXPECT_TRUE(All<cmd::Persist>(h.last).empty());
  EXPECT_EQ(h.core.jobs().size(), 1u);
  EXPECT_NE(h.Submit(0, 1.0, "req-2"), a);
}

TEST(CoordinatorCore, ADuplicatedOrLateResultChangesNothing) {
  Harness h;
  h.AddWorker("w0");
  const std::string job = h.Submit();
  const auto run = All<cmd::RunStage>(h.last).at(0);
  StepResult s = h.Do(h.ResultOf(run));
  const auto next = All<cmd::RunStage>(s);
  ASSERT_EQ(next.size(), 1u);
  s = h.Do(h.ResultOf(run));  // the same result again
  EXPECT_TRUE(s.commands.empty());
  EXPECT_EQ(h.core.FindJob(job)->stages[1].state, StageState::kRunning);
}

// Bug (a): a worker that outlived a coordinator restart loads on top of what it held; the stages it kept and is
// no longer to hold are unloaded before anything is dispatched to it.
TEST(CoordinatorCore, AWorkerStillHoldingStagesOfAnEarlierPlanHasThemUnloaded) {
  for (const bool revert : {false, true}) {
    CoreOptions o = Options();
    o.revert_register_holds = revert;
    Harness h(o);
    ev::Register r;
    r.name = "w0";
    r.address = "w0:1";
    r.device = "cpu";
    r.static_target["m"] = {{StageKind::kTextEncoder, {}}};  // the new placement: the text encoder only
    const auto load = All<cmd::LoadWorker>(h.Do(r)).at(0);
    EXPECT_TRUE(load.held.empty());  // the core's record of a worker that just registered
    ev::Loaded done = h.LoadedAll(load);
    done.holds.insert({"m", StageKind::kDenoiser});  // what it still held from the old placement
    StepResult s = h.Do(done);
    const auto reload = All<cmd::LoadWorker>(s);
    if (revert) {
      EXPECT_TRUE(reload.empty());
      EXPECT_TRUE(h.core.workers().begin()->second.holds.count({"m", StageKind::kDenoiser}));
      continue;
    }
    ASSERT_EQ(reload.size(), 1u);
    EXPECT_TRUE(reload[0].held.count({"m", StageKind::kDenoiser}));  // so the denoiser is unloaded
    s = h.Do(h.LoadedAll(reload[0]));
    EXPECT_EQ(h.core.workers().begin()->second.state, WorkerState::kIdle);
    EXPECT_FALSE(h.core.workers().begin()->second.holds.count({"m", StageKind::kDenoiser}));
  }
}

// Bug (b): two workers holding every stage and one guided job. Early dispatch would hand the second worker the
// denoiser while the first encodes text, leaving no pair; where the cost model says the split is faster the
// denoiser waits for the text and runs on both.
TEST(CoordinatorCore, AGuidedJobOnTwoWorkersRunsSplitWhenTheCostModelSaysItIsFaster) {
  for (const bool revert : {false, true}) {
    CoreOptions o = Options();
    o.revert_split_choice = revert;
    o.estimate = [](const JobShape&, StageKind k) {
      return k == StageKind::kDenoiser ? StageEstimate{10.0, 5.5} : StageEstimate{1.0, 0};
    };
    Harness h(o);
    h.AddWorker("w0");
    h.AddWorker("w1");
    const std::string job = h.Submit(0, 6.0);
    const auto first = All<cmd::RunStage>(h.last);
    if (revert) {
      ASSERT_EQ(first.size(), 2u);  // text encoder, and the denoiser early on the other worker
      EXPECT_TRUE(first[1].peer_id.empty());
      EXPECT_EQ(h.core.FindJob(job)->denoiser_dispatch.rfind("early", 0), 0u);
      continue;
    }
    ASSERT_EQ(first.size(), 1u) << "the denoiser was dispatched early";
    EXPECT_EQ(h.core.FindJob(job)->denoiser_dispatch.rfind("guidance_split", 0), 0u);
    const auto den = All<cmd::RunStage>(h.Do(h.ResultOf(first[0])));
    ASSERT_EQ(den.size(), 1u);
    EXPECT_EQ(den[0].kind, StageKind::kDenoiser);
    EXPECT_FALSE(den[0].peer_id.empty());
    EXPECT_EQ(h.core.FindJob(job)->denoiser_dispatch.rfind("guidance_split: on", 0), 0u)
        << h.core.FindJob(job)->denoiser_dispatch;
  }
  // Where the split gains nothing (a short denoise), early dispatch stays (the text encoder, 10 ms by the cost
  // model, is within a handoff of its end: see the next test for one that is not).
  CoreOptions o = Options();
  o.estimate = [](const JobShape&, StageKind k) {
    return k == StageKind::kDenoiser ? StageEstimate{0.2, 0.19} : StageEstimate{0.01, 0};
  };
  Harness h(o);
  h.AddWorker("w0");
  h.AddWorker("w1");
  h.Submit(0, 6.0);
  EXPECT_EQ(All<cmd::RunStage>(h.last).size(), 2u);
}

// A job with the latency objective takes as many idle denoiser workers as the cost model finds fastest (sequence
// parallelism), among those built for it; one rank lost fails the run, and the job runs again on the rest.
TEST(CoordinatorCore, ALatencyJobsDenoiseTakesTheDegreeTheCostModelPrefersAndRunsAgainWhenARankIsLost) {
  CoreOptions o = Options();
  // One worker 10 s, guidance split 5.5 s, 2/3/4/5 workers in sequence 5.4/4.0/3.5/3.8 s.
  o.estimate = [](const JobShape&, StageKind k) {
    return k == StageKind::kDenoiser ? StageEstimate{10.0, 5.5, {5.4, 4.0, 3.5, 3.8}} : StageEstimate{1.0, 0, {}};
  };
  Harness h(o);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(h.AddWorker(fmt::format("w{}", i), nullptr, Everything(), true));
  const std::string plain = h.AddWorker("w4", nullptr, Everything(), false);  // built without sequence parallelism
  const std::string job = h.Submit(0, 6.0, "", true);
  const auto text = All<cmd::RunStage>(h.last);
  ASSERT_EQ(text.size(), 1u) << "a latency job's denoiser went early, on one worker";
  EXPECT_EQ(text[0].kind, StageKind::kTextEncoder);
  auto den = All<cmd::RunStage>(h.Do(h.ResultOf(text[0])));
  ASSERT_EQ(den.size(), 1u);
  EXPECT_EQ(den[0].kind, StageKind::kDenoiser);
  ASSERT_EQ(den[0].sequence.size(), 3u) << h.core.FindJob(job)->denoiser_dispatch;  // 4 workers: 3.5 s
  EXPECT_TRUE(den[0].peer_id.empty());
  std::set<std::string> ranks = {den[0].worker_id};
  for (const auto& r : den[0].sequence) ranks.insert(r.id);
  EXPECT_EQ(ranks.size(), 4u);
  EXPECT_FALSE(ranks.count(plain));
  for (const auto& id : ranks) EXPECT_EQ(h.core.workers().at(id).state, WorkerState::kBusy);
  const Job& j = *h.core.FindJob(job);
  EXPECT_EQ(j.denoiser_dispatch.rfind("sequence_parallel: 4 workers", 0), 0u) << j.denoiser_dispatch;
  EXPECT_NE(j.denoiser_dispatch.find("guidance split 5.500 s"), std::string::npos) << j.denoiser_dispatch;
  EXPECT_EQ(j.denoiser_dispatch.find("5 workers"), std::string::npos) << "w4 cannot be a rank";
  EXPECT_EQ(j.stages[1].sequence_peers.size(), 3u);

  // The last rank is lost mid-step: rank 0's collective fails as a call to a dead peer does.
  const std::string lost = den[0].sequence.back().id;
  StepResult s = h.Do(ev::StageFailed{den[0].attempt, ev::Failure::kUnavailable, "sequence-parallel rank 3: gone"});
  for (const auto& id : ranks) EXPECT_TRUE(h.core.workers().at(id).suspect) << id;
  EXPECT_EQ(All<cmd::ReleaseTensors>(s).size(), 1u);
  // It runs again from its first stage at once, on the one worker not suspect (w4).
  const auto again = All<cmd::RunStage>(s);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].kind, StageKind::kTextEncoder);
  EXPECT_EQ(again[0].worker_id, plain);
  EXPECT_EQ(h.core.FindJob(job)->attempts, 2);
  for (const auto& id : ranks)
    if (id != lost) h.Do(ev::Heartbeat{id, 0, 0, 0});
  den = All<cmd::RunStage>(h.Do(h.ResultOf(again[0])));
  ASSERT_EQ(den.size(), 1u);
  ASSERT_EQ(den[0].sequence.size(), 2u) << h.core.FindJob(job)->denoiser_dispatch;  // three left: 4.0 s
  for (const auto& r : den[0].sequence) EXPECT_NE(r.id, lost);
  EXPECT_NE(den[0].worker_id, lost);
  // Its result frees every rank: the decoder takes one, the rest are idle.
  s = h.Do(h.ResultOf(den[0]));
  const auto dec = All<cmd::RunStage>(s);
  ASSERT_EQ(dec.size(), 1u);
  EXPECT_EQ(dec[0].kind, StageKind::kVaeDecoder);
  for (const auto& id : ranks)
    if (id != lost && id != dec[0].worker_id) EXPECT_EQ(h.core.workers().at(id).state, WorkerState::kIdle) << id;
}

// With four idle ranks a guided latency job may take two in sequence for its conditional halves and two more for
// its unconditional ones (the guided batch split besides), when the cost model finds that fastest; a lost worker of
// either half fails the run and suspects every worker of it.
TEST(CoordinatorCore, ALatencyJobCombinesSequenceParallelismWithTheGuidanceSplitWhenTheCostModelSaysSo) {
  CoreOptions o = Options();
  // One worker 10 s, guidance split 5.5 s, 2/3/4 workers in sequence 5.4/4.0/3.5 s, 2 in sequence × split 2.9 s.
  o.estimate = [](const JobShape&, StageKind k) {
    if (k != StageKind::kDenoiser) return StageEstimate{1.0, 0, {}};
    StageEstimate e{10.0, 5.5, {5.4, 4.0, 3.5}};
    e.sequence_split_seconds = {2.9};
    return e;
  };
  Harness h(o);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(h.AddWorker(fmt::format("w{}", i), nullptr, Everything(), true));
  const std::string job = h.Submit(0, 6.0, "", true);
  const auto text = All<cmd::RunStage>(h.last);
  ASSERT_EQ(text.size(), 1u);
  auto den = All<cmd::RunStage>(h.Do(h.ResultOf(text[0])));
  ASSERT_EQ(den.size(), 1u);
  const Job& j = *h.core.FindJob(job);
  ASSERT_EQ(den[0].sequence.size(), 1u) << j.denoiser_dispatch;
  ASSERT_EQ(den[0].sequence_guidance.size(), 1u) << j.denoiser_dispatch;
  EXPECT_FALSE(den[0].peer_id.empty());
  const std::vector<std::string> run = den[0].Workers();
  EXPECT_EQ(std::set<std::string>(run.begin(), run.end()).size(), 4u);
  for (const auto& id : ids) EXPECT_EQ(h.core.workers().at(id).state, WorkerState::kBusy);
  EXPECT_EQ(j.denoiser_dispatch.rfind("sequence_parallel: 4 workers (w0, w1) with the guidance split (w2, w3), "
                                      "2.900 s by the cost model",
                                      0),
            0u)
      << j.denoiser_dispatch;
  EXPECT_NE(j.denoiser_dispatch.find("4 workers in sequence 3.500 s"), std::string::npos) << j.denoiser_dispatch;
  EXPECT_EQ(j.stages[1].guidance_peer, "w2");
  EXPECT_EQ(j.stages[1].sequence_peers, std::vector<std::string>{"w1"});
  EXPECT_EQ(j.stages[1].sequence_guidance_peers, std::vector<std::string>{"w3"});

  // Rank 1's unconditional half (w3) is lost: the run fails, and every worker of it is suspect until it heartbeats.
  h.Do(ev::StageFailed{den[0].attempt, ev::Failure::kUnavailable, "guidance peer w3: gone"});
  for (const auto& id : ids) EXPECT_TRUE(h.core.workers().at(id).suspect) << id;
  EXPECT_EQ(h.core.FindJob(job)->state, JobState::kQueued);
  EXPECT_TRUE(h.core.FindJob(job)->stages[1].sequence_guidance_peers.empty());
  std::vector<cmd::RunStage> again;
  for (int i = 0; i < 3; ++i)
    for (const auto& r : All<cmd::RunStage>(h.Do(ev::Heartbeat{ids[static_cast<size_t>(i)], 0, 0, 0})))
      again.push_back(r);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].kind, StageKind::kTextEncoder);
  // Three workers left: no room for 2 × 2, so three ranks in sequence (4.0 s) without w3.
  den = All<cmd::RunStage>(h.Do(h.ResultOf(again[0])));
  ASSERT_EQ(den.size(), 1u);
  EXPECT_EQ(den[0].sequence.size(), 2u) << h.core.FindJob(job)->denoiser_dispatch;
  EXPECT_TRUE(den[0].sequence_guidance.empty());
  EXPECT_TRUE(den[0].peer_id.empty());
  for (const auto& id : den[0].Workers()) EXPECT_NE(id, ids[3]);
  EXPECT_EQ(h.core.FindJob(job)->attempts, 2);
}

// The throughput objective keeps today's dispatch (the guidance split), and a latency job whose cost model finds
// one worker fastest runs on one worker, saying why.
TEST(CoordinatorCore, SequenceParallelismOnlyForTheLatencyObjectiveAndOnlyWhenTheCostModelFindsItFaster) {
  for (const bool latency : {false, true}) {
    CoreOptions o = Options();
    o.estimate = [latency](const JobShape&, StageKind k) {
      if (k != StageKind::kDenoiser) return StageEstimate{1.0, 0, {}};
      return latency ? StageEstimate{1.0, 1.2, {1.1, 1.3}} : StageEstimate{10.0, 5.5, {5.4, 4.0}};
    };
    Harness h(o);
    for (int i = 0; i < 3; ++i) h.AddWorker(fmt::format("w{}", i), nullptr, Everything(), true);
    const std::string job = h.Submit(0, 6.0, "", latency);
    const auto text = All<cmd::RunStage>(h.last);
    ASSERT_FALSE(text.empty());
    std::vector<cmd::RunStage> den;
    for (const auto& r : text)
      if (r.kind == StageKind::kDenoiser) den.push_back(r);
    if (den.empty()) den = All<cmd::RunStage>(h.Do(h.ResultOf(text[0])));
    ASSERT_EQ(den.size(), 1u);
    EXPECT_TRUE(den[0].sequence.empty()) << h.core.FindJob(job)->denoiser_dispatch;
    const std::string& why = h.core.FindJob(job)->denoiser_dispatch;
    if (latency) {
      EXPECT_TRUE(den[0].peer_id.empty());
      EXPECT_EQ(why.rfind("single: on w", 0), 0u) << why;
      EXPECT_NE(why.find("latency objective: one worker 1.000 s by the cost model; guidance split 1.200 s, "
                         "2 workers in sequence 1.100 s, 3 workers in sequence 1.300 s"),
                std::string::npos)
          << why;
    } else {
      EXPECT_FALSE(den[0].peer_id.empty()) << why;
      EXPECT_EQ(why.find("sequence"), std::string::npos) << why;
    }
  }
}

// Early dispatch parks the consumer's worker until its inputs exist, so with a cost model a consumer goes early only
// in its producer's last handoff: not while the producer has most of its run ahead, and then at once.
TEST(CoordinatorCore, AConsumerIsSentEarlyOnlyInItsProducersLastHandoff) {
  CoreOptions o = Options();
  o.handoff_us = 20'000;
  o.estimate = [](const JobShape&, StageKind k) {
    return StageEstimate{k == StageKind::kTextEncoder ? 1.0 : 5.0, 0};
  };
  Harness h(o);
  h.AddWorker("w0");
  h.AddWorker("w1");
  const std::string job = h.Submit();
  const Micros submitted = h.now;
  auto runs = All<cmd::RunStage>(h.last);
  ASSERT_EQ(runs.size(), 1u) << "the denoiser was sent early with its text encoder's whole second ahead";
  EXPECT_EQ(runs[0].kind, StageKind::kTextEncoder);
  EXPECT_EQ(h.core.FindJob(job)->stages[1].early_dispatch.rfind("waits for its inputs: 1.000 s left", 0), 0u)
      << h.core.FindJob(job)->stages[1].early_dispatch;
  // The core asks to be woken a handoff before the text encoder's estimated end.
  const Micros due = submitted + kSecond - o.handoff_us;
  EXPECT_EQ(h.core.NextWake(), due);
  h.now = due - 10'000;
  EXPECT_TRUE(All<cmd::RunStage>(h.Do(ev::Tick{})).empty());  // not yet
  h.now = due;
  runs = All<cmd::RunStage>(h.Do(ev::Tick{}));
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].kind, StageKind::kDenoiser);
  ASSERT_EQ(runs[0].inputs.size(), 1u);
  EXPECT_EQ(runs[0].inputs[0].worker, "w0");  // it fetches from the text encoder's worker as soon as it can
  const std::string note = h.core.FindJob(job)->stages[1].early_dispatch;
  EXPECT_EQ(note.rfind("early: on w1", 0), 0u) << note;
  // Without a cost model there is nothing to bound it by: early at once, as before.
  Harness plain;
  plain.AddWorker("w0");
  plain.AddWorker("w1");
  plain.Submit();
  EXPECT_EQ(All<cmd::RunStage>(plain.last).size(), 2u);
}

// Answers every run `from` starts, and those its results start, as a well-behaved worker would, until the decoder's
// video is to be stored; returns that StoreOutput (the test fails without one) and the runs answered.
cmd::StoreOutput RunUntilStored(Harness& h, const StepResult& from, std::vector<cmd::RunStage>* ran) {
  std::deque<cmd::RunStage> pending;
  for (const auto& r : All<cmd::RunStage>(from)) pending.push_back(r);
  while (!pending.empty()) {
    const cmd::RunStage run = pending.front();
    pending.pop_front();
    ran->push_back(run);
    const StepResult s = h.Do(h.ResultOf(run));
    for (const auto& r : All<cmd::RunStage>(s)) pending.push_back(r);
    if (const auto stores = All<cmd::StoreOutput>(s); !stores.empty()) return stores.at(0);
  }
  ADD_FAILURE() << "no output to store";
  return {};
}

// The soak's chaos killed the decoder's worker while the coordinator fetched the video from it: the adapter says
// the worker was unavailable, and the decoder runs again on another worker from the latents kept elsewhere; the job
// does not fail. A store that fails on the coordinator's side (its disk) still fails the job.
TEST(CoordinatorCore, AVideoItsWorkerCannotHandOverIsDecodedAgainElsewhereWhileAFailedStoreFailsTheJob) {
  Assignments encoders, decoder;
  encoders["m"] = {{StageKind::kTextEncoder, {}}, {StageKind::kDenoiser, {}}};
  decoder["m"] = {{StageKind::kVaeDecoder, {}}};
  for (const bool unavailable : {true, false}) {
    SCOPED_TRACE(unavailable ? "unavailable" : "disk");
    Harness h;
    h.AddWorker("enc", nullptr, encoders);
    const std::string d0 = h.AddWorker("d0", nullptr, decoder), d1 = h.AddWorker("d1", nullptr, decoder);
    const std::string job = h.Submit();
    std::vector<cmd::RunStage> ran;
    const cmd::StoreOutput store = RunUntilStored(h, h.last, &ran);
    ASSERT_EQ(ran.size(), 3u);
    const std::string first = ran.back().worker_id;  // the decoder's worker
    ASSERT_TRUE(first == d0 || first == d1);
    ev::OutputStored failed{job, store.attempt, "", "", 0, 0};
    if (!unavailable) {
      failed.error = "storing the output: output /data/outputs/j.mp4: write failed";
      const StepResult s = h.Do(failed);
      EXPECT_EQ(h.core.FindJob(job)->state, JobState::kFailed);
      EXPECT_EQ(h.core.FindJob(job)->error, failed.error);
      EXPECT_TRUE(All<cmd::RunStage>(s).empty());
      continue;
    }
    failed.error = "storing the output: fetching video.mp4 from worker d0: Connection reset by peer";
    failed.failure = ev::Failure::kUnavailable;
    StepResult s = h.Do(failed);
    const Job& j = *h.core.FindJob(job);
    EXPECT_EQ(j.state, JobState::kRunning) << j.error;
    EXPECT_EQ(j.stages[0].state, StageState::kDone);  // the text and the latents stay where they are
    EXPECT_EQ(j.stages[1].state, StageState::kDone);
    EXPECT_TRUE(h.core.workers().at(first).suspect);
    const auto again = All<cmd::RunStage>(s);
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0].kind, StageKind::kVaeDecoder);
    EXPECT_NE(again[0].worker_id, first);  // the other decoder worker
    ASSERT_EQ(again[0].inputs.size(), 1u);
    EXPECT_EQ(again[0].inputs[0].worker, "enc");
    EXPECT_GT(again[0].attempt, store.attempt);
    s = h.Do(h.ResultOf(again[0]));
    const auto stores = All<cmd::StoreOutput>(s);
    ASSERT_EQ(stores.size(), 1u);
    EXPECT_EQ(stores[0].attempt, again[0].attempt);
    // The first attempt's answer, late or repeated, changes nothing; the second's ends the job once.
    EXPECT_TRUE(All<cmd::Persist>(h.Do(failed)).empty());
    h.Do(ev::OutputStored{job, stores[0].attempt, "/out/j.mp4", "", 1234, 9});
    EXPECT_EQ(h.core.FindJob(job)->state, JobState::kSucceeded);
    EXPECT_EQ(h.core.FindJob(job)->output_path, "/out/j.mp4");
  }
}

// When the unreachable decoder's worker also held the latents (and the text), nothing of the job is left to keep:
// it runs again from its first stage, off that worker.
TEST(CoordinatorCore, AVideoUnfetchableFromTheWorkerHoldingAllItsInputsRunsTheJobAgain) {
  Harness h;
  const std::string w0 = h.AddWorker("w0");
  const std::string job = h.Submit();
  std::vector<cmd::RunStage> ran;
  const cmd::StoreOutput store = RunUntilStored(h, h.last, &ran);
  ASSERT_EQ(ran.size(), 3u);
  StepResult loaded;
  const std::string w1 = h.AddWorker("w1", &loaded);
  EXPECT_TRUE(All<cmd::RunStage>(loaded).empty());
  ev::OutputStored failed{job, store.attempt, "", "storing the output: fetching video.mp4: unavailable", 0, 0,
                          ev::Failure::kUnavailable};
  const StepResult s = h.Do(failed);
  EXPECT_NE(h.core.FindJob(job)->state, JobState::kFailed) << h.core.FindJob(job)->error;
  const auto again = All<cmd::RunStage>(s);
  ASSERT_FALSE(again.empty());
  EXPECT_EQ(again[0].kind, StageKind::kTextEncoder);
  for (const auto& r : again) EXPECT_EQ(r.worker_id, w1);
  EXPECT_TRUE(h.core.workers().at(w0).suspect);
  EXPECT_EQ(h.core.FindJob(job)->attempts, 2);
}

TEST(CoordinatorCore, ADrainingCoordinatorRefusesAndStartsNothingNew) {
  Harness h;
  h.Do(ev::Drain{});
  ev::Submit s;
  s.shape = {"m", 9, 64, 64, 4, 1.0};
  EXPECT_EQ(h.Do(s).reply.code, Code::kUnavailable);
  ASSERT_TRUE(h.core.Admission().has_value());
}

}  // namespace
}  // namespace reel::core
