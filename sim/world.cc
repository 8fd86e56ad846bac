// The simulated world around the real core: workers (runs, fetches, loads, tensors, memory), clients, the network
// and the coordinator's own crash and restart, with the schedule's faults. Invariants: invariants.cc.
#include "sim/world.h"

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>

#include <fmt/format.h>

#include "coordinator/coordinator_core.h"
#include "sim/cost.h"
#include "sim/invariants.h"

namespace reel::sim {

namespace {

using core::Micros;
constexpr double kLatency = 0.002;     // one network hop
constexpr double kHeartbeat = 1.0;     // as the coordinator's defaults
constexpr double kLease = 5.0;
constexpr double kCallDeadline = 5.0;  // ReleaseJob's deadline

struct Tensor {
  int64_t bytes = 0;
};

struct WorkerRun {
  std::string job;
  StageKind kind = StageKind::kTextEncoder;
  core::JobShape shape;
  std::vector<core::TensorRef> inputs;
  std::string peer_address;
  std::vector<std::string> sequence;  // addresses of a sequence-parallel denoise's other ranks (and their peers)
  int degree = 1;                     // its ranks (its guidance peers not counted)
  bool computing = false;
  double remaining = 0, end = 0, waiting_since = 0;
  uint64_t token = 0;
  int64_t activation = 0;
};

struct Frozen {
  double expires;  // a call whose deadline passes while the process is stopped is lost
  std::function<void()> fn;
};

struct SimWorker {
  WorkerSpec spec;
  int incarnation = 0;
  std::string address;
  bool up = true, hung = false;
  double slow = 1, late_next = 0, drop_heartbeats_until = -1;
  bool oom_next = false, duplicate_next = false, lose_next = false;
  std::string id;  // as the coordinator registered it; empty: not registered
  bool forgotten = false;
  std::map<std::pair<std::string, StageKind>, int64_t> held;  // stage weights on the device
  std::map<std::string, std::map<std::string, Tensor>> tensors;  // job → "name@attempt"
  std::map<uint64_t, WorkerRun> runs;
  std::vector<Frozen> frozen;
  std::set<int> cut;  // workers it cannot reach (a partition)
};

struct Call {
  int worker = 0, incarnation = 0;
  bool ended = false;
};

std::string TensorKey(const std::string& name, uint64_t attempt) { return fmt::format("{}@{}", name, attempt); }

const char* OutputOf(StageKind k) {
  switch (k) {
    case StageKind::kTextEncoder: return "text";
    case StageKind::kVaeEncoder: return "image_moments";
    case StageKind::kDenoiser: return "latents";
    case StageKind::kVaeDecoder: return "video.mp4";
  }
  return "?";
}

std::map<std::string, core::ModelInfo> Models() {
  return {{"t2v", {{StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}, false}},
          {"i2v",
           {{StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder}, true}}};
}

class World {
 public:
  World(const Schedule& s, const RunOptions& o) : s_(s), o_(o), rng_(s.seed), checker_(s) {
    for (size_t i = 0; i < s.workers.size(); ++i) {
      SimWorker w;
      w.spec = s.workers[i];
      w.address = fmt::format("{}:{}", w.spec.name, w.incarnation);
      workers_.push_back(w);
    }
  }

  Outcome Run() {
    StartCoordinator();
    for (size_t i = 0; i < workers_.size(); ++i) At(0.01 * static_cast<double>(i), [this, i] { Beat(i, 0); });
    for (size_t i = 0; i < s_.jobs.size(); ++i) At(s_.jobs[i].at, [this, i] { Submit(i); });
    double quiet_after = 0;
    for (const auto& f : s_.faults) {
      At(f.at, [this, f] { Inject(f); });
      quiet_after = std::max(quiet_after, f.at + f.duration);
    }
    quiet_after = std::max(quiet_after, s_.jobs.empty() ? 0.0 : s_.jobs.back().at) + 3 * kLease;
    double end_at = -1;  // every job ended and the faults are over: a little longer, for releases in flight
    while (!q_.empty() && out_.ok()) {
      Pending p = q_.top();
      q_.pop();
      now_ = p.t;
      if (now_ > o_.horizon_s || (end_at >= 0 && now_ > end_at)) break;
      p.fn();
      if (end_at < 0 && now_ > quiet_after && checker_.AllEnded(submitted_)) end_at = now_ + 2 * kCallDeadline;
    }
    if (out_.ok()) {
      const std::string v = checker_.AtEnd(core_.get(), submitted_, Holdings(), now_ > o_.horizon_s);
      if (!v.empty()) Violate(v);
    }
    out_.sim_seconds = now_;
    out_.jobs = store_;
    checker_.Count(&out_);
    return std::move(out_);
  }

 private:
  struct Pending {
    double t;
    uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Pending& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };

  void At(double t, std::function<void()> fn) { q_.push({std::max(t, now_), ++seq_, std::move(fn)}); }
  double Jitter() { return kLatency * std::uniform_real_distribution<double>(0.5, 3.0)(rng_); }
  void Trace(const std::string& line) {
    if (o_.trace) out_.trace.push_back(fmt::format("{:9.4f} {}", now_, line));
  }
  void Violate(const std::string& v) {
    if (!out_.ok()) return;
    out_.violation = fmt::format("{} (at {:.4f} s)", v, now_);
    Trace("VIOLATION " + out_.violation);
  }

  // ---- the coordinator ----

  void StartCoordinator() {
    core::CoreOptions co;
    co.models = Models();
    co.planned = true;
    co.guidance_parallel = s_.guidance_parallel;
    co.max_queued_jobs = 1000;
    co.revert_register_holds = s_.revert_register_holds;
    co.revert_split_choice = s_.revert_split_choice;
    co.estimate = [](const core::JobShape& shape, StageKind k) { return EstimateOf(k, shape); };
    core_ = std::make_unique<core::CoordinatorCore>(co);
    ++boot_;
    std::vector<core::Job> stored;
    int64_t next_seq = 1;
    for (const auto& [id, j] : store_) {
      stored.push_back(j);
      next_seq = std::max(next_seq, j.seq + 1);
    }
    Trace(fmt::format("coordinator starts (boot {}, {} stored jobs)", boot_, stored.size()));
    core::StepResult r = core_->Restore(std::move(stored), boot_, next_seq, Now());
    Execute(r.commands);
    const int boot = boot_;
    At(now_ + 0.5, [this, boot] { Tick(boot); });
  }

  Micros Now() const { return static_cast<Micros>(now_ * 1e6) + 1'000'000; }

  core::Reply Step(const core::Event& e, const std::string& what) {
    core::StepResult r = core_->Step(Now(), e);
    ++out_.events;
    Trace(what + (r.reply.code != core::Code::kOk ? " -> refused: " + r.reply.message
                  : r.reply.id.empty()               ? ""
                                                     : " -> " + r.reply.id));
    Execute(r.commands);
    if (const std::string v = checker_.AfterStep(*core_); !v.empty()) Violate(v);
    // One tick per wake the core asks for (it asks again after every step until then).
    if (const Micros wake = core_->NextWake(); wake > 0 && std::make_pair(boot_, wake) != woken_) {
      woken_ = {boot_, wake};
      const int boot = boot_;
      At((wake - 1'000'000) / 1e6 + 1e-6, [this, boot] { Tick(boot, false); });
    }
    return r.reply;
  }

  void Tick(int boot, bool periodic = true) {
    if (!core_ || boot != boot_) return;
    Step(core::ev::Tick{}, "tick");
    if (periodic) At(now_ + 0.5, [this, boot] { Tick(boot); });
  }

  int WorkerAt(const std::string& address) const {
    for (size_t i = 0; i < workers_.size(); ++i)
      if (workers_[i].up && workers_[i].address == address) return static_cast<int>(i);
    return -1;
  }

  bool Cut(int a, int b) const { return a >= 0 && b >= 0 && workers_[a].cut.count(b) > 0; }

  // Delivers `fn` to worker i's process after a hop: dropped if it died meanwhile, held while it is stopped.
  void ToWorker(int i, std::function<void()> fn, double deadline = 1e18) {
    const int inc = workers_[i].incarnation;
    At(now_ + Jitter(), [this, i, inc, deadline, fn = std::move(fn)] {
      SimWorker& w = workers_[i];
      if (!w.up || w.incarnation != inc) return;
      if (w.hung) {
        w.frozen.push_back({now_ + deadline, fn});
        return;
      }
      fn();
    });
  }

  // A stage call's end, once: whatever the coordinator hears first about a run is what it acts on.
  void EndCall(uint64_t attempt, const core::Event& e, const std::string& what) {
    auto it = calls_.find(attempt);
    if (it == calls_.end() || it->second.ended || !core_) return;
    it->second.ended = true;
    Step(e, what);
  }

  void Execute(std::vector<core::Command>& commands);
  void RunOn(int i, const core::cmd::RunStage& c, const core::JobShape& shape);
  void TryStart(int i, uint64_t attempt);
  void TryStartAll();
  void Complete(int i, int inc, uint64_t attempt, uint64_t token);
  void FailRun(int i, uint64_t attempt, core::ev::Failure failure, const std::string& message);
  void Load(int i, const core::cmd::LoadWorker& c);
  void Beat(size_t i, int inc);
  void Register(size_t i);
  void Submit(size_t j);
  void Inject(const Fault& f);
  void Crash(int i, double restart_after);
  void CoordinatorCrash(double restart_after);
  std::vector<Holding> Holdings() const;

  const Schedule& s_;
  RunOptions o_;
  std::mt19937_64 rng_;
  Checker checker_;
  Outcome out_;
  double now_ = 0;
  uint64_t seq_ = 0;
  std::priority_queue<Pending, std::vector<Pending>, std::greater<>> q_;
  std::unique_ptr<core::CoordinatorCore> core_;
  std::pair<int, Micros> woken_{0, 0};  // the last wake a tick was scheduled for, by boot
  int boot_ = 0;
  std::map<std::string, core::Job> store_;  // what the coordinator persisted
  std::vector<SimWorker> workers_;
  std::map<uint64_t, Call> calls_;
  std::map<std::string, uint64_t> stores_;  // job → the fetch of its MP4 in flight (a token)
  uint64_t store_tokens_ = 0;
  std::map<size_t, std::string> submitted_;  // schedule's job → the job id its client holds
  int drop_replies_ = 0;
};

void World::Execute(std::vector<core::Command>& commands) {
  for (auto& c : commands) {
    if (auto* run = std::get_if<core::cmd::RunStage>(&c)) {
      const core::Job* job = core_->FindJob(run->job_id);
      if (const std::string v = checker_.AtDispatch(*core_, *run); !v.empty()) Violate(v);
      const int i = WorkerAt(run->address);
      calls_[run->attempt] = {i, i >= 0 ? workers_[i].incarnation : -1, false};
      Trace(fmt::format("run {} {} of {} on {}{} (attempt {:x})", StageKindName(run->kind), run->stage_index,
                        run->job_id, run->worker, run->peer.empty() ? "" : " + " + run->peer, run->attempt));
      if (i < 0) {
        const uint64_t attempt = run->attempt;
        At(now_ + Jitter(), [this, attempt] {
          EndCall(attempt, core::ev::StageFailed{attempt, core::ev::Failure::kUnavailable, "connection refused"},
                  "run refused: worker gone");
        });
        continue;
      }
      ToWorker(i, [this, i, r = *run, shape = job->shape] { RunOn(i, r, shape); });
    } else if (auto* cancel = std::get_if<core::cmd::CancelRun>(&c)) {
      const uint64_t attempt = cancel->attempt;
      auto call = calls_.find(attempt);
      if (call == calls_.end()) continue;
      At(now_ + 1e-4, [this, attempt] {
        EndCall(attempt, core::ev::StageFailed{attempt, core::ev::Failure::kOther, "cancelled"}, "run cancelled");
      });
      // The worker hears the call is cancelled and stops at its next step; a cancelled run stores nothing.
      if (call->second.worker >= 0)
        ToWorker(call->second.worker, [this, w = call->second.worker, attempt] { workers_[w].runs.erase(attempt); });
    } else if (auto* load = std::get_if<core::cmd::LoadWorker>(&c)) {
      const int i = WorkerAt(load->address);
      if (i < 0) {
        At(now_ + Jitter(), [this, l = *load] {
          if (core_) Step(core::ev::Loaded{l.worker_id, false, {}, {}, l.want, l.held, "unavailable"}, "load failed");
        });
        continue;
      }
      ToWorker(i, [this, i, l = *load] { Load(i, l); });
    } else if (auto* release = std::get_if<core::cmd::ReleaseTensors>(&c)) {
      for (const auto& address : release->addresses)
        if (const int i = WorkerAt(address); i >= 0)
          ToWorker(i, [this, i, job = release->job_id] { workers_[i].tensors.erase(job); }, kCallDeadline);
    } else if (auto* st = std::get_if<core::cmd::StoreOutput>(&c)) {
      const uint64_t token = ++store_tokens_;
      stores_[st->job_id] = token;
      const int i = WorkerAt(st->video.address);
      // A fetch that fails is the worker's (gone, hung, or restarted without the video), as in the adapter
      // (worker_calls.cc): the core runs the decoder again.
      auto answer = [this, job = st->job_id, attempt = st->attempt, token](const std::string& error, int64_t bytes) {
        auto it = stores_.find(job);
        if (it == stores_.end() || it->second != token || !core_) return;
        stores_.erase(it);
        Step(core::ev::OutputStored{job, attempt, error.empty() ? "out/" + job + ".mp4" : "", error, bytes, 9,
                                    error.empty() ? core::ev::Failure::kOther : core::ev::Failure::kUnavailable},
             "output of " + job + (error.empty() ? " stored" : ": " + error));
      };
      if (i < 0 || workers_[i].hung) {
        At(now_ + Jitter(), [answer] { answer("fetching the video: unavailable", 0); });
        continue;
      }
      const std::string key = TensorKey("video.mp4", st->video.attempt);
      auto& held = workers_[i].tensors[st->job_id];
      if (!held.count(key)) {
        At(now_ + Jitter(), [answer] { answer("fetching the video: not found", 0); });
        continue;
      }
      At(now_ + Jitter() + 0.01, [answer, bytes = held[key].bytes] { answer("", bytes); });
    } else if (auto* cs = std::get_if<core::cmd::CancelStore>(&c)) {
      stores_.erase(cs->job_id);
    } else if (auto* persist = std::get_if<core::cmd::Persist>(&c)) {
      for (const auto& j : persist->jobs) {
        if (const std::string v = checker_.AtPersist(store_, j); !v.empty()) Violate(v);
        store_[j.id] = j;
      }
    } else if (auto* replan = std::get_if<core::cmd::Replan>(&c)) {
      At(now_ + 0.01, [this, r = *replan, boot = boot_] {
        if (!core_ || boot != boot_) return;
        core::ev::Planned p;
        p.generation = r.generation;
        p.workers = SimPlan(r.workers, Models(), s_.everywhere ? -1 : boot_);
        Step(p, fmt::format("planned for {} workers", r.workers.size()));
      });
    } else if (auto* log = std::get_if<core::cmd::Log>(&c)) {
      Trace("  log: " + log->text);
    }
  }
}

void World::RunOn(int i, const core::cmd::RunStage& c, const core::JobShape& shape) {
  SimWorker& w = workers_[i];
  // A call its client cancelled (or whose client died) before it arrived never starts.
  if (auto call = calls_.find(c.attempt); call == calls_.end() || call->second.ended) return;
  if (!w.held.count({shape.model, c.kind})) {
    Violate(fmt::format("worker {} asked to run {}/{} it does not hold", w.spec.name, shape.model,
                        StageKindName(c.kind)));
    return;
  }
  WorkerRun r;
  r.job = c.job_id;
  r.kind = c.kind;
  r.shape = shape;
  r.inputs = c.inputs;
  r.peer_address = c.peer_address;
  for (const auto& rank : c.sequence) r.sequence.push_back(rank.address);
  for (const auto& rank : c.sequence_guidance) r.sequence.push_back(rank.address);
  r.degree = static_cast<int>(c.sequence.size()) + 1;
  r.waiting_since = now_;
  w.runs[c.attempt] = r;
  TryStart(i, c.attempt);
  // A fetch that never finds its tensor gives up (TryStart's deadline); look again then.
  At(now_ + 31, [this, i, inc = w.incarnation, attempt = c.attempt] {
    if (workers_[i].up && workers_[i].incarnation == inc && !workers_[i].hung) TryStart(i, attempt);
  });
}

void World::FailRun(int i, uint64_t attempt, core::ev::Failure failure, const std::string& message) {
  workers_[i].runs.erase(attempt);
  At(now_ + Jitter(), [this, attempt, failure, message] {
    EndCall(attempt, core::ev::StageFailed{attempt, failure, message}, "run failed: " + message);
  });
}

// A run waiting for its inputs starts once each is local or fetched; a producer that is gone or cut off fails it.
void World::TryStart(int i, uint64_t attempt) {
  SimWorker& w = workers_[i];
  auto it = w.runs.find(attempt);
  if (it == w.runs.end() || it->second.computing) return;
  WorkerRun& r = it->second;
  double fetch = 0;
  for (const auto& in : r.inputs) {
    const std::string key = TensorKey(in.name, in.attempt);
    if (w.tensors.count(r.job) && w.tensors[r.job].count(key)) continue;
    const int src = WorkerAt(in.address);
    if (src < 0 || Cut(i, src))
      return FailRun(i, attempt, core::ev::Failure::kUnavailable, fmt::format("fetching {} from {}", in.name, in.worker));
    SimWorker& p = workers_[src];
    if (p.hung) return;  // it answers when it resumes
    if (p.tensors.count(r.job) && p.tensors[r.job].count(key)) {
      fetch += static_cast<double>(p.tensors[r.job][key].bytes) / (p.spec.host == w.spec.host ? 10e9 : 1.25e9);
      continue;
    }
    if (!p.runs.count(in.attempt)) {
      if (now_ - r.waiting_since > 30)
        return FailRun(i, attempt, core::ev::Failure::kUnavailable, fmt::format("{} never came", in.name));
      return;  // not sent yet (the early dispatch may beat the producer's own call)
    }
    return;  // being produced
  }
  int peer = -1;
  if (!r.peer_address.empty()) {
    peer = WorkerAt(r.peer_address);
    if (peer < 0 || Cut(i, peer))
      return FailRun(i, attempt, core::ev::Failure::kUnavailable, "guidance peer unreachable");
  }
  for (const std::string& a : r.sequence)
    if (const int rank = WorkerAt(a); rank < 0 || Cut(i, rank))
      return FailRun(i, attempt, core::ev::Failure::kUnavailable, "sequence-parallel rank unreachable");
  const StageCost cost = CostOf(r.kind, r.shape);
  const double share = (peer >= 0 ? kSplitShare : 1.0) * (r.degree > 1 ? SequenceShare(r.degree) : 1.0);
  double seconds = cost.seconds / w.spec.speed * w.slow * share + fetch;
  r.activation = cost.activation;
  int64_t used = r.activation;
  for (const auto& [stage, bytes] : w.held) used += bytes;
  for (const auto& [a, other] : w.runs)
    if (other.computing) used += other.activation;
  if (used > w.spec.capacity_bytes) {
    Violate(fmt::format("worker {} over its memory: {} GiB of {} GiB running {} of {}", w.spec.name, used >> 30,
                        w.spec.capacity_bytes >> 30, StageKindName(r.kind), r.job));
    return;
  }
  if (std::exchange(w.oom_next, false)) {
    // Out of device memory: the worker reports the profile (the plan may change) and retries cheaper, or gives up.
    At(now_ + Jitter(), [this] {
      if (core_) Step(core::ev::ProfilesChanged{}, "an out-of-memory profile");
    });
    if (std::uniform_int_distribution<int>(0, 1)(rng_))
      return FailRun(i, attempt, core::ev::Failure::kOther, "out of device memory");
    seconds *= 1.5;
  }
  r.computing = true;
  r.end = now_ + seconds;
  r.token = ++seq_;
  At(r.end, [this, i, inc = w.incarnation, attempt, token = r.token] { Complete(i, inc, attempt, token); });
}

void World::TryStartAll() {
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (!workers_[i].up || workers_[i].hung) continue;
    std::vector<uint64_t> waiting;
    for (const auto& [a, r] : workers_[i].runs)
      if (!r.computing) waiting.push_back(a);
    for (uint64_t a : waiting) TryStart(static_cast<int>(i), a);
  }
}

void World::Complete(int i, int inc, uint64_t attempt, uint64_t token) {
  SimWorker& w = workers_[i];
  if (!w.up || w.incarnation != inc || w.hung) return;
  auto it = w.runs.find(attempt);
  if (it == w.runs.end() || it->second.token != token) return;
  const WorkerRun r = it->second;
  w.runs.erase(it);
  if (!r.peer_address.empty()) {
    const int peer = WorkerAt(r.peer_address);
    if (peer < 0 || Cut(i, peer))
      return FailRun(i, attempt, core::ev::Failure::kUnavailable, "guidance peer lost mid-run");
  }
  for (const std::string& a : r.sequence)
    if (const int rank = WorkerAt(a); rank < 0 || Cut(i, rank))
      return FailRun(i, attempt, core::ev::Failure::kUnavailable, "sequence-parallel rank lost mid-run");
  const StageCost cost = CostOf(r.kind, r.shape);
  w.tensors[r.job][TensorKey(OutputOf(r.kind), attempt)] = {cost.output};
  core::ev::StageResult result;
  result.attempt = attempt;
  result.outputs.push_back({OutputOf(r.kind), cost.output});
  result.frames = r.shape.frames;
  const std::string what = fmt::format("result {} of {} from {}", StageKindName(r.kind), r.job, w.spec.name);
  if (std::exchange(w.lose_next, false)) {
    At(now_ + Jitter(), [this, attempt] {
      EndCall(attempt, core::ev::StageFailed{attempt, core::ev::Failure::kUnavailable, "connection reset"},
              "result lost");
    });
  } else {
    const double late = std::exchange(w.late_next, 0.0);
    At(now_ + Jitter() + late, [this, attempt, result, what] { EndCall(attempt, result, what); });
    if (std::exchange(w.duplicate_next, false))
      At(now_ + Jitter() + late + 0.001, [this, result, what] {
        if (core_) Step(result, what + " (duplicate)");
      });
  }
  // A progress message overtaken by the result: the core must ignore it.
  At(now_ + 2 * kLatency, [this, attempt, steps = r.shape.steps] {
    if (core_) Step(core::ev::StageProgress{attempt, steps, steps}, "late progress");
  });
  TryStartAll();
}

// LoadStages keeps what the worker held and adds what is asked (as worker/worker.cc does); then the stages the
// coordinator named as held and not wanted are unloaded.
void World::Load(int i, const core::cmd::LoadWorker& c) {
  SimWorker& w = workers_[i];
  double seconds = 0.05;
  for (const auto& [model, assignment] : c.want) {
    for (const auto& choice : assignment)
      if (!w.held.count({model, choice.kind})) {
        core::JobShape shape;
        shape.model = model;
        w.held[{model, choice.kind}] = CostOf(choice.kind, shape).weights;
        seconds += 0.2;
      }
    for (const auto& [m, k] : c.held) {
      if (m != model) continue;
      if (std::none_of(assignment.begin(), assignment.end(), [&](const auto& a) { return a.kind == k; }))
        w.held.erase({m, k});
    }
  }
  core::ev::Loaded done;
  done.worker_id = c.worker_id;
  done.reported = true;
  done.applied = c.want;
  done.held = c.held;
  for (const auto& [stage, bytes] : w.held) {
    done.holds.insert(stage);
    done.described.push_back(fmt::format("{}/{}", stage.first, StageKindName(stage.second)));
  }
  const int inc = w.incarnation, boot = boot_;
  At(now_ + seconds, [this, i, inc, boot, done] {
    if (!core_ || boot != boot_) return;
    const SimWorker& w = workers_[i];
    core::ev::Loaded e = done;
    if (!w.up || w.incarnation != inc) e = {done.worker_id, false, {}, {}, done.applied, done.held, "unavailable"};
    Step(e, fmt::format("loaded {}: {}", w.spec.name, e.error.empty() ? fmt::format("{}", fmt::join(e.described, ", "))
                                                                      : e.error));
  });
}

// ---- workers' control loop ----

void World::Beat(size_t i, int inc) {
  SimWorker& w = workers_[i];
  if (!w.up || w.incarnation != inc) return;
  At(now_ + kHeartbeat, [this, i, inc] { Beat(i, inc); });
  if (w.hung || !core_) return;
  if (w.id.empty()) return Register(i);
  if (now_ < w.drop_heartbeats_until) return;
  const core::Reply r = Step(core::ev::Heartbeat{w.id, 0, 0, 0}, "heartbeat " + w.spec.name);
  if (r.code == core::Code::kNotFound) {
    w.id.clear();
    w.forgotten = true;
    Register(i);
  }
}

void World::Register(size_t i) {
  SimWorker& w = workers_[i];
  if (std::exchange(w.forgotten, false)) w.tensors.clear();  // its runs' stages run again elsewhere
  core::ev::Register e;
  e.name = w.spec.name;
  e.address = w.address;
  e.host = w.spec.host;
  e.device = "cuda:0";
  e.sequence_parallel = true;
  e.capacity_bytes = w.spec.capacity_bytes;
  if (const core::Worker* old = core_->LiveElsewhere(w.spec.name, w.address)) {
    const int at = WorkerAt(old->address);
    if (at < 0 || workers_[at].hung) e.silent_id = old->id;  // its health check does not answer
  }
  const core::Reply r = Step(e, "register " + w.spec.name + " at " + w.address);
  if (r.code == core::Code::kOk) {
    w.id = r.id;
  } else {
    Violate(fmt::format("worker {} refused registration: {}", w.spec.name, r.message));
  }
}

// ---- clients ----

void World::Submit(size_t j) {
  const JobSpec& spec = s_.jobs[j];
  if (!core_) return At(now_ + 1, [this, j] { Submit(j); });
  core::ev::Submit e;
  e.shape = {spec.model, spec.frames, 64, 64, spec.steps, spec.guidance, spec.latency};
  e.priority = spec.priority;
  e.request_id = spec.request_id;
  const core::Reply r = Step(e, fmt::format("submit #{}{}", j, spec.request_id.empty() ? "" : " " + spec.request_id));
  if (r.code != core::Code::kOk) return At(now_ + 1, [this, j] { Submit(j); });
  if (const std::string v = checker_.AtSubmitReply(j, spec.request_id, r.id); !v.empty()) Violate(v);
  if (drop_replies_ > 0 && !spec.request_id.empty()) {
    --drop_replies_;
    Trace("  the reply is lost; the client retries with its request id");
    return At(now_ + 0.5, [this, j] { Submit(j); });
  }
  submitted_[j] = r.id;
}

// ---- faults ----

void World::Inject(const Fault& f) {
  const int i = std::min<int>(f.worker, static_cast<int>(workers_.size()) - 1);
  SimWorker& w = workers_[i];
  Trace(fmt::format("FAULT {} w{} ({:.2f} s)", FaultName(f.kind), i, f.duration));
  switch (f.kind) {
    case FaultKind::kCrash: return Crash(i, f.duration);
    case FaultKind::kHang: {
      if (!w.up || w.hung) return;
      w.hung = true;
      for (auto& [a, r] : w.runs)
        if (r.computing) r.remaining = r.end - now_, r.token = ++seq_;
      At(now_ + f.duration, [this, i, inc = w.incarnation] {
        SimWorker& w = workers_[i];
        if (!w.up || w.incarnation != inc || !w.hung) return;
        Trace(fmt::format("w{} resumes", i));
        w.hung = false;
        for (auto& [a, r] : w.runs)
          if (r.computing) {
            r.end = now_ + r.remaining;
            r.token = ++seq_;
            At(r.end, [this, i, inc, attempt = a, token = r.token] { Complete(i, inc, attempt, token); });
          }
        std::vector<Frozen> frozen = std::move(w.frozen);
        w.frozen.clear();
        for (auto& fr : frozen)
          if (now_ <= fr.expires) fr.fn();
        TryStartAll();
      });
      return;
    }
    case FaultKind::kSlow: w.slow = f.factor; return;
    case FaultKind::kOom: w.oom_next = true; return;
    case FaultKind::kDropHeartbeats: w.drop_heartbeats_until = now_ + f.duration; return;
    case FaultKind::kDuplicateResult: w.duplicate_next = true; return;
    case FaultKind::kLateResult: w.late_next = f.duration; return;
    case FaultKind::kLoseResult: w.lose_next = true; return;
    case FaultKind::kPartition: {
      const int o = std::min<int>(f.other, static_cast<int>(workers_.size()) - 1);
      if (o == i) return;
      w.cut.insert(o);
      workers_[o].cut.insert(i);
      TryStartAll();
      At(now_ + f.duration, [this, i, o] {
        workers_[i].cut.erase(o);
        workers_[o].cut.erase(i);
        TryStartAll();
      });
      return;
    }
    case FaultKind::kCoordinatorCrash: return CoordinatorCrash(f.duration);
    case FaultKind::kDropReply: ++drop_replies_; return;
  }
}

void World::Crash(int i, double restart_after) {
  SimWorker& w = workers_[i];
  if (!w.up) return;
  // The coordinator's calls to it break.
  for (const auto& [attempt, r] : w.runs) {
    const uint64_t a = attempt;
    At(now_ + Jitter(), [this, a] {
      EndCall(a, core::ev::StageFailed{a, core::ev::Failure::kUnavailable, "worker died"}, "call broke");
    });
  }
  for (auto& [a, call] : calls_)
    if (call.worker == i && call.incarnation == w.incarnation && !call.ended && !w.runs.count(a)) {
      const uint64_t attempt = a;  // sent, not arrived yet: refused
      At(now_ + Jitter(), [this, attempt] {
        EndCall(attempt, core::ev::StageFailed{attempt, core::ev::Failure::kUnavailable, "worker died"},
                "call broke");
      });
    }
  const WorkerSpec spec = w.spec;
  const int inc = w.incarnation + 1;
  w = SimWorker{};
  w.spec = spec;
  w.up = false;
  w.incarnation = inc;
  w.address = fmt::format("{}:{}", spec.name, inc);
  TryStartAll();  // runs fetching from it, or lending it a guidance branch, fail
  At(now_ + restart_after, [this, i, inc] {
    SimWorker& w = workers_[i];
    if (w.incarnation != inc) return;
    w.up = true;
    Trace(fmt::format("w{} starts again at {}", i, w.address));
    Beat(static_cast<size_t>(i), inc);
  });
}

void World::CoordinatorCrash(double restart_after) {
  if (!core_) return;
  core_.reset();
  calls_.clear();
  stores_.clear();
  // The workers' stage calls end with their client: each stops its runs (a cancelled run stores nothing).
  for (auto& w : workers_) w.runs.clear();
  At(now_ + restart_after, [this] { StartCoordinator(); });
}

std::vector<Holding> World::Holdings() const {
  std::vector<Holding> out;
  for (const auto& w : workers_)
    if (w.up)
      for (const auto& [job, tensors] : w.tensors)
        if (!tensors.empty()) out.push_back({w.spec.name, job});
  return out;
}

}  // namespace

Outcome Run(const Schedule& schedule, const RunOptions& options) { return World(schedule, options).Run(); }

Schedule Shrink(const Schedule& failing, const RunOptions& options) {
  RunOptions quiet = options;
  quiet.trace = false;
  auto kind = [](const std::string& v) { return v.substr(0, v.find(':')); };
  const std::string want = kind(Run(failing, quiet).violation);
  auto still = [&](const Schedule& s) {
    const Outcome o = Run(s, quiet);
    return !o.ok() && kind(o.violation) == want;
  };
  Schedule best = failing;
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t i = 0; i < best.faults.size(); ++i) {
      Schedule t = best;
      t.faults.erase(t.faults.begin() + static_cast<long>(i));
      if (still(t)) best = t, progress = true, --i;
    }
    for (size_t i = 0; i < best.jobs.size() && best.jobs.size() > 1; ++i) {
      Schedule t = best;
      t.jobs.erase(t.jobs.begin() + static_cast<long>(i));
      if (still(t)) best = t, progress = true, --i;
    }
    for (size_t i = best.workers.size(); i-- > 1;) {
      Schedule t = best;
      t.workers.erase(t.workers.begin() + static_cast<long>(i));
      std::vector<Fault> kept;
      for (auto f : t.faults)
        if (f.worker != static_cast<int>(i) && f.other != static_cast<int>(i)) {
          f.worker -= f.worker > static_cast<int>(i);
          f.other -= f.other > static_cast<int>(i);
          kept.push_back(f);
        }
      t.faults = kept;
      if (still(t)) best = t, progress = true;
    }
  }
  return best;
}

}  // namespace reel::sim
