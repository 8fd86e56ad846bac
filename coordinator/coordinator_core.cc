// The core's handlers for clients, workers, leases and restarts; dispatch itself is in core_dispatch.cc.
#include "coordinator/coordinator_core.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/printable.h"
#include "coordinator/recovery.h"

namespace reel::core {

const char* StageStateName(StageState s) {
  switch (s) {
    case StageState::kPending: return "pending";
    case StageState::kRunning: return "running";
    case StageState::kDone: return "done";
    case StageState::kFailed: return "failed";
    case StageState::kCancelled: return "cancelled";
    case StageState::kSkipped: return "skipped";
  }
  return "pending";
}

const char* WorkerStateName(WorkerState s) {
  switch (s) {
    case WorkerState::kLoading: return "loading";
    case WorkerState::kIdle: return "idle";
    case WorkerState::kBusy: return "busy";
    case WorkerState::kDraining: return "draining";
    case WorkerState::kFailed: return "failed";
    case WorkerState::kLost: return "lost";
    case WorkerState::kTuning: return "tuning";
  }
  return "idle";
}

std::string Strategy::Describe() const {
  std::string out = offload.empty() ? "none" : offload;
  if (!dtype.empty()) out += "," + dtype;
  if (int8_weights) out += ",int8";
  if (vae_slicing) out += ",slicing";
  if (vae_tile > 0) out += ",tiling=" + std::to_string(vae_tile);
  return out;
}

namespace {

bool SameAssignments(const Assignments& a, const Assignments& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [model, x] : a) {
    auto it = b.find(model);
    if (it == b.end() || it->second.size() != x.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (x[i].kind != it->second[i].kind || !(x[i].strategy == it->second[i].strategy)) return false;
  }
  return true;
}

bool Plannable(const Worker& w) {
  return w.state != WorkerState::kLost && w.state != WorkerState::kFailed && w.state != WorkerState::kDraining;
}

std::vector<StageView> ViewOf(const Job& j) {
  std::vector<StageView> view(j.stages.size());
  for (size_t i = 0; i < j.stages.size(); ++i) {
    view[i].kind = j.stages[i].kind;
    view[i].state = StageStateName(j.stages[i].state);
  }
  return view;
}

void ResetStage(StageRun& s) {
  s.state = StageState::kPending;
  s.worker.clear();
  s.guidance_peer.clear();
  s.step = 0;
  s.started = s.finished = s.accepted = 0;
  s.attempt = 0;
}

}  // namespace

CoordinatorCore::CoordinatorCore(CoreOptions options) : o_(std::move(options)) {}

// ---- helpers ----

void CoordinatorCore::Touch(Job& j) { j.version = ++version_; }

void CoordinatorCore::Persist(const Job& j) {
  cmd::Persist p;
  p.jobs.push_back(j);
  p.jobs.back().outputs.clear();
  Emit(std::move(p));
}

void CoordinatorCore::Log(cmd::Level level, std::string text) { Emit(cmd::Log{level, std::move(text)}); }

void CoordinatorCore::Count(const char* event) { Emit(cmd::Metric{cmd::MetricKind::kCount, 1, event, {}}); }

Worker* CoordinatorCore::WorkerByName(const std::string& name) {
  for (auto& [id, w] : workers_)
    if (w.name == name) return &w;
  return nullptr;
}

const Worker* CoordinatorCore::FindWorkerByName(const std::string& name) const {
  for (const auto& [id, w] : workers_)
    if (w.name == name) return &w;
  return nullptr;
}

const Job* CoordinatorCore::FindJob(const std::string& id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

const Job* CoordinatorCore::FindRequest(const std::string& request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : FindJob(it->second);
}

int CoordinatorCore::QueuedJobs() const { return queued_; }

int CoordinatorCore::RunningJobs() const { return running_; }

// Every change of a live job's state goes through here, so the counts admission and gauges read stay O(1).
void CoordinatorCore::SetState(Job& j, JobState s) {
  queued_ -= j.state == JobState::kQueued;
  running_ -= j.state == JobState::kRunning;
  j.state = s;
  queued_ += s == JobState::kQueued;
  running_ += s == JobState::kRunning;
}

Micros CoordinatorCore::NextWake() const { return replan_due_; }

const Worker* CoordinatorCore::LiveElsewhere(const std::string& name, const std::string& address) const {
  const Worker* old = FindWorkerByName(name);
  return old && old->state != WorkerState::kLost && old->address != address ? old : nullptr;
}

void CoordinatorCore::ScheduleReplan(Micros now) {
  ++worker_generation_;
  if (o_.planned) replan_due_ = now + o_.plan_settle_us;
}

Assignments CoordinatorCore::Want(const Worker& w) const {
  Assignments want;
  for (const auto& [model, info] : o_.models) {
    auto it = w.target.find(model);
    want[model] = it == w.target.end() ? Assignment{} : it->second;
  }
  return want;
}

void CoordinatorCore::StartLoad(Worker& w) {
  w.state = WorkerState::kLoading;
  w.load_in_flight = true;
  w.reload_pending = false;
  Emit(cmd::LoadWorker{w.id, w.address, w.name, Want(w), w.holds});
}

// ---- restore ----

StepResult CoordinatorCore::Restore(std::vector<Job> stored, int64_t boot, int64_t next_seq, Micros now) {
  out_ = {};
  boot_ = boot;
  next_seq_ = next_seq;
  int requeued = 0, queued = 0;
  cmd::Persist changed;
  for (auto& j : stored) {
    next_seq_ = std::max(next_seq_, j.seq + 1);
    if (!Terminal(j.state) && !o_.models.count(j.shape.model)) {
      j.state = JobState::kFailed;
      j.error = fmt::format("model '{}' is no longer served by this coordinator", j.shape.model);
      j.finished = now;
      changed.jobs.push_back(j);
    } else if (j.state == JobState::kRunning) {
      // Its tensors were on workers that may be gone: it runs again from its first stage.
      j.state = JobState::kQueued;
      for (auto& s : j.stages) ResetStage(s);
      changed.jobs.push_back(j);
      ++requeued;
    } else if (j.state == JobState::kQueued) {
      ++queued;
    }
    j.outputs.clear();
    const std::string id = j.id;
    if (!Terminal(j.state)) live_.insert(id);
    if (Terminal(j.state)) ended_.push_back(id);
    if (!j.request_id.empty()) requests_[j.request_id] = id;
    jobs_[id] = std::move(j);
  }
  for (const auto& id : live_) {
    queued_ += jobs_.at(id).state == JobState::kQueued;
    running_ += jobs_.at(id).state == JobState::kRunning;
  }
  // As many ended jobs as memory keeps: the store may hold older ones, which listings read when asked for more.
  if (ended_.size() >= static_cast<size_t>(std::max(1, o_.ended_jobs_kept))) evicted_ = 1;
  Emit(std::move(changed));  // one transaction: a crash here leaves the store as it was
  if (queued + requeued > 0)
    Log(cmd::Level::kInfo, fmt::format("{} queued job(s), {} interrupted job(s) queued again", queued, requeued));
  return std::move(out_);
}

// ---- the step ----

StepResult CoordinatorCore::Step(Micros now, const Event& event) {
  out_ = {};
  std::visit(
      [&](const auto& e) {
        using T = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<T, ev::Submit>) OnSubmit(now, e);
        else if constexpr (std::is_same_v<T, ev::Cancel>) OnCancel(now, e);
        else if constexpr (std::is_same_v<T, ev::Register>) OnRegister(now, e);
        else if constexpr (std::is_same_v<T, ev::Heartbeat>) OnHeartbeat(now, e);
        else if constexpr (std::is_same_v<T, ev::Leave>) OnLeave(now, e);
        else if constexpr (std::is_same_v<T, ev::Loaded>) OnLoaded(now, e);
        else if constexpr (std::is_same_v<T, ev::StageProgress>) OnProgress(e);
        else if constexpr (std::is_same_v<T, ev::StageResult>) OnResult(now, e);
        else if constexpr (std::is_same_v<T, ev::StageFailed>) OnFailed(now, e);
        else if constexpr (std::is_same_v<T, ev::ProfilesChanged>) ScheduleReplan(now);
        else if constexpr (std::is_same_v<T, ev::OutputStored>) OnOutputStored(now, e);
        else if constexpr (std::is_same_v<T, ev::Planned>) OnPlanned(now, e);
        else if constexpr (std::is_same_v<T, ev::TuneBegin>) OnTuneBegin(e);
        else if constexpr (std::is_same_v<T, ev::TuneEnd>) OnTuneEnd(now, e);
        else if constexpr (std::is_same_v<T, ev::Tick>) OnTick(now);
        else if constexpr (std::is_same_v<T, ev::Drain>) {
          if (!draining_ && !stopping_) {
            draining_ = true;
            const int queued = QueuedJobs();
            Log(cmd::Level::kInfo,
                fmt::format("coordinator draining: accepting no jobs and starting none; {} running job(s) may "
                            "finish, {} queued job(s) wait for the next start",
                            live_.size() - queued, queued));
          }
        } else if constexpr (std::is_same_v<T, ev::Shutdown>) OnShutdown();
      },
      event);
  return std::move(out_);
}

// ---- clients ----

std::optional<Reply> CoordinatorCore::Admission() const {
  if (stopping_) return Refusal(Code::kUnavailable, "the coordinator is shutting down");
  if (draining_)
    return Refusal(Code::kUnavailable,
                 "the coordinator is draining (it was told to stop): it accepts no jobs until it starts again; submit "
                 "then");
  const int queued = QueuedJobs();
  if (queued >= o_.max_queued_jobs)
    return Refusal(Code::kResourceExhausted,
                 fmt::format("queue full: {} jobs queued, the most this coordinator holds (its --max-queued-jobs {} "
                             "raises it); retry when jobs have started",
                             queued, o_.max_queued_jobs));
  return std::nullopt;
}

Job CoordinatorCore::Preview(const ev::Submit& s, Micros now) const {
  Job j;
  j.seq = next_seq_;
  j.id = fmt::format("job-{}", j.seq);
  j.request_id = s.request_id;
  j.priority = s.priority;
  j.shape = s.shape;
  j.submitted = now;
  for (StageKind k : o_.models.at(s.shape.model).stages) {
    StageRun r;
    r.kind = k;
    if (k == StageKind::kDenoiser) r.steps = s.shape.steps;
    j.stages.push_back(r);
  }
  return j;
}

void CoordinatorCore::OnSubmit(Micros now, const ev::Submit& e) {
  if (!e.request_id.empty())
    if (const Job* earlier = FindRequest(e.request_id)) {
      out_.reply.id = earlier->id;
      out_.reply.existing = true;
      return;
    }
  if (auto refusal = Admission()) {
    out_.reply = *refusal;
    return;
  }
  if (!o_.models.count(e.shape.model)) {
    out_.reply = Refusal(Code::kInvalidArgument, fmt::format("model '{}': not served here", Printable(e.shape.model)));
    return;
  }
  Job j = Preview(e, now);
  ++next_seq_;
  const std::string id = j.id;
  if (!e.stored) Persist(j);  // durable before it is acknowledged
  if (!j.request_id.empty()) requests_[j.request_id] = id;
  live_.insert(id);
  Job& r = jobs_[id] = std::move(j);
  ++queued_;
  out_.reply.id = id;
  Count("submitted");
  Touch(r);
  Log(cmd::Level::kInfo, fmt::format("job {} queued: {} {} frames {}x{}, {} steps, priority {}", id, r.shape.model,
                                     r.shape.frames, r.shape.width, r.shape.height, r.shape.steps, r.priority));
  Dispatch(now);
}

void CoordinatorCore::OnCancel(Micros now, const ev::Cancel& e) {
  auto it = jobs_.find(e.job_id);
  if (it == jobs_.end()) {
    out_.reply = Refusal(Code::kNotFound, fmt::format("job '{}': no such job", Printable(e.job_id)));
    return;
  }
  Job& j = it->second;
  if (Terminal(j.state)) {
    const char* names[] = {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"};
    out_.reply = Refusal(Code::kFailedPrecondition,
                  fmt::format("job {}: already {}", j.id, names[static_cast<int>(j.state)]));
    return;
  }
  End(now, j, JobState::kCancelled, "cancelled by a client");  // the worker stops at its next step
  out_.reply.id = j.id;
  Dispatch(now);
}

// ---- workers ----

void CoordinatorCore::OnRegister(Micros now, const ev::Register& e) {
  std::string replaced;
  if (Worker* old = WorkerByName(e.name)) {
    if (old->state != WorkerState::kLost && old->address != e.address && old->id != e.silent_id) {
      out_.reply = Refusal(Code::kAlreadyExists,
                    fmt::format("name '{}': a live worker at {} already has it; give each worker its own --name",
                                Printable(e.name), old->address));
      return;
    }
    if (old->state == WorkerState::kBusy && old->address == e.address) {
      out_.reply = Refusal(Code::kAlreadyExists, fmt::format("name '{}': this worker is already registered and running a "
                                                      "stage",
                                                      Printable(e.name)));
      return;
    }
    replaced = old->id;
    // The same process registering again (its heartbeat was refused), a new one at its address, or a new one
    // elsewhere whose predecessor no longer answers: whatever the old registration held is not there any more.
    if (old->state != WorkerState::kLost)
      WorkerGone(now, replaced, old->id == e.silent_id ? "was started again (its old process does not answer)"
                                                  : "registered again");
    workers_.erase(replaced);
  }
  Worker w;
  // Unique across restarts too: a worker still heartbeating an id from before a restart is told NOT_FOUND and
  // registers again, rather than keeping alive another worker's new entry under a reused id.
  w.id = fmt::format("w{}-{}", boot_, next_worker_++);
  w.name = e.name;
  w.address = e.address;
  w.host = e.host;
  w.device = e.device;
  w.capacity_bytes = e.capacity_bytes;
  w.host_memory_bytes = e.host_memory_bytes;
  w.last_heartbeat = now;
  if (!o_.planned) w.target = e.static_target;
  const std::string id = w.id;
  Worker& added = workers_[id] = std::move(w);
  out_.reply.id = id;
  Log(cmd::Level::kInfo,
      fmt::format("worker {} registered from {} ({}, {}){}", Printable(e.name), Printable(e.address),
                  Printable(e.device),
                  e.capacity_bytes > 0 ? fmt::format("{:.1f} GiB", e.capacity_bytes / double(int64_t{1} << 30))
                                       : "unlimited",
                  replaced.empty() ? "" : " replacing its earlier registration"));
  if (o_.planned) {
    ScheduleReplan(now);  // every worker's share may change with one more
  } else {
    StartLoad(added);
  }
  Dispatch(now);
}

void CoordinatorCore::OnHeartbeat(Micros now, const ev::Heartbeat& e) {
  auto it = workers_.find(e.worker_id);
  if (it == workers_.end()) {
    out_.reply = Refusal(Code::kNotFound, fmt::format("worker {}: not registered here", Printable(e.worker_id)));
    return;
  }
  Worker& w = it->second;
  if (w.state == WorkerState::kLost) {
    // It went silent and its work was given away; it registers again from scratch.
    out_.reply = Refusal(Code::kNotFound, fmt::format("worker {}: was declared lost", Printable(e.worker_id)));
    return;
  }
  w.last_heartbeat = now;
  w.device_used_bytes = e.device_used_bytes;
  w.device_peak_bytes = e.device_peak_bytes;
  w.host_rss_bytes = e.host_rss_bytes;
  if (std::exchange(w.suspect, false)) Dispatch(now);  // it is alive after all
}

void CoordinatorCore::OnLeave(Micros now, const ev::Leave& e) {
  auto it = workers_.find(e.worker_id);
  if (it == workers_.end() || it->second.state == WorkerState::kLost) {
    out_.reply = Refusal(Code::kNotFound,
                  fmt::format("worker {}: not registered here (its work, if any, was given to others)",
                              Printable(e.worker_id)));
    return;
  }
  Worker& w = it->second;
  const std::string id = w.id, name = w.name;
  w.last_heartbeat = now;  // a draining worker asks often: that is its heartbeat
  w.suspect = false;
  int running = 0;
  for (const auto& [attempt, r] : runs_) running += r.worker_id == id || r.peer_id == id;
  const int needed = TensorsNeededOn(name);
  if (e.going) {
    Log(cmd::Level::kInfo,
        fmt::format("worker {} left{}", name,
                    running + needed > 0 ? fmt::format(" with {} stage run(s) and {} needed tensor(s) unfinished",
                                                       running, needed)
                                         : ""));
    if (running + needed > 0) WorkerGone(now, id, "left before its work was done");
    workers_.erase(id);
    ScheduleReplan(now);
    Dispatch(now);
    return;
  }
  if (w.state != WorkerState::kDraining) {
    Log(cmd::Level::kInfo, fmt::format("worker {} is draining: nothing new is sent to it; it leaves once {} stage "
                                       "run(s) end and {} tensor(s) are fetched",
                                       name, running, needed));
    w.state = WorkerState::kDraining;
    w.reload_pending = false;
    ScheduleReplan(now);  // its stages go to the others
  }
  out_.reply.stages_running = running;
  out_.reply.tensors_needed = needed;
}

void CoordinatorCore::OnLoaded(Micros now, const ev::Loaded& e) {
  auto it = workers_.find(e.worker_id);
  if (it == workers_.end()) return;
  Worker& w = it->second;
  if (e.reported || !e.error.empty()) {
    w.holds = e.reported ? e.holds : std::set<std::pair<std::string, StageKind>>{};
    w.described = e.described;
  }
  w.applied = e.applied;
  w.error = e.error;
  w.load_in_flight = false;
  w.loaded_once = true;
  // Stages it reports holding that its assignment does not name: it kept them from before (a worker that outlived
  // a coordinator restart loads on top of what it held, and the core's record of it started empty). Loaded again
  // knowing them, so they are unloaded; a second time means unloading failed.
  std::vector<std::string> stale;
  if (!o_.revert_register_holds)
    for (const auto& [model, kind] : w.holds) {
      auto want = e.applied.find(model);
      const bool kept = want != e.applied.end() &&
                        std::any_of(want->second.begin(), want->second.end(),
                                    [&](const StageChoice& c) { return c.kind == kind; });
      if (!kept && o_.models.count(model)) stale.push_back(fmt::format("{}/{}", model, StageKindName(kind)));
    }
  bool stale_known = false;
  for (const auto& h : w.holds) stale_known = stale_known || (e.held.count(h) && !stale.empty());
  if (w.state == WorkerState::kLoading) {
    if (!e.error.empty()) {
      w.state = WorkerState::kFailed;
      Log(cmd::Level::kError, fmt::format("worker {}: {}", w.name, e.error));
      ScheduleReplan(now);  // the others take over what it was to hold
    } else if (w.reload_pending || !SameAssignments(Want(w), e.applied) || (!stale.empty() && !stale_known)) {
      // The plan changed while it loaded (what it loaded is not what it is to hold), or it holds stages from
      // before: loaded again.
      if (!stale.empty())
        Log(cmd::Level::kWarn, fmt::format("worker {} still holds {} from before; unloading", w.name,
                                           fmt::join(stale, ", ")));
      StartLoad(w);
    } else if (!stale.empty()) {
      w.state = WorkerState::kFailed;
      w.error = fmt::format("still holds {} after unloading", fmt::join(stale, ", "));
      Log(cmd::Level::kError, fmt::format("worker {}: {}", w.name, w.error));
      ScheduleReplan(now);
    } else {
      w.state = WorkerState::kIdle;
    }
  }
  if (e.error.empty())
    Log(cmd::Level::kInfo, fmt::format("worker {} holds {}", w.name,
                                       w.described.empty() ? "nothing" : fmt::format("{}", fmt::join(w.described, ", "))));
  Dispatch(now);
}

void CoordinatorCore::OnPlanned(Micros now, const ev::Planned& e) {
  if (e.generation != worker_generation_ || stopping_) return;  // the workers changed meanwhile: planned again
  size_t plannable = 0;
  for (const auto& [id, w] : workers_) plannable += Plannable(w);
  for (const auto& note : e.notes) Log(cmd::Level::kInfo, fmt::format("plan for {} worker(s): {}", plannable, note));
  for (auto& [id, w] : workers_) {
    if (!Plannable(w)) continue;
    auto it = e.workers.find(w.name);
    w.target = it == e.workers.end() ? Assignments{} : it->second;
    if (w.loaded_once && SameAssignments(Want(w), w.applied)) continue;
    if (w.load_in_flight || w.state == WorkerState::kBusy) {
      w.reload_pending = true;  // its load's end or its run's end picks it up
    } else {
      StartLoad(w);
    }
  }
  Dispatch(now);
}

void CoordinatorCore::OnTuneBegin(const ev::TuneBegin& e) {
  std::set<std::string> named(e.names.begin(), e.names.end());
  for (const auto& n : named) {
    const Worker* w = FindWorkerByName(n);
    if (!w || w->state == WorkerState::kLost) {
      out_.reply = Refusal(Code::kNotFound, fmt::format("worker '{}': not registered here", Printable(n)));
      return;
    }
    if (w->state != WorkerState::kIdle) {
      out_.reply = Refusal(Code::kFailedPrecondition,
                    fmt::format("worker '{}' is {}; tune it when it is idle", Printable(n), WorkerStateName(w->state)));
      return;
    }
  }
  for (auto& [id, w] : workers_)
    if (w.state == WorkerState::kIdle && (named.empty() || named.count(w.name))) {
      w.state = WorkerState::kTuning;  // nothing is dispatched to it until its turn is over
      out_.reply.chosen.emplace_back(id, w.address);
    }
  if (out_.reply.chosen.empty())
    out_.reply = Refusal(Code::kFailedPrecondition, "no idle workers to tune; wait for running jobs to end");
}

void CoordinatorCore::OnTuneEnd(Micros now, const ev::TuneEnd& e) {
  for (const auto& id : e.worker_ids)
    if (auto it = workers_.find(id); it != workers_.end() && it->second.state == WorkerState::kTuning)
      it->second.state = WorkerState::kIdle;
  if (e.last) ScheduleReplan(now);  // new measurements: the placement may change
  Dispatch(now);
}

void CoordinatorCore::OnTick(Micros now) {
  if (stopping_) return;
  if (replan_due_ > 0 && now >= replan_due_) {
    replan_due_ = 0;
    cmd::Replan r;
    r.generation = worker_generation_;
    for (const auto& [id, w] : workers_)
      if (Plannable(w)) r.workers.push_back({w.name, w.host, w.device, w.capacity_bytes, w.host_memory_bytes});
    std::sort(r.workers.begin(), r.workers.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    Emit(std::move(r));
  }
  bool changed = false;
  for (auto& [id, w] : workers_) {
    if (w.state == WorkerState::kLost || now - w.last_heartbeat <= o_.worker_timeout_us) continue;
    const int64_t silent_ms = (now - w.last_heartbeat) / 1000;
    Log(cmd::Level::kWarn, fmt::format("worker {} ({}) sent no heartbeat for {} ms: lost", w.name, w.address,
                                       silent_ms));
    w.state = WorkerState::kLost;
    w.job_id.clear();
    changed = true;
    WorkerGone(now, id, fmt::format("stopped answering (no heartbeat for {} ms)", silent_ms));
  }
  if (changed) {
    ScheduleReplan(now);  // what the lost worker held goes elsewhere
    Dispatch(now);
  }
}

void CoordinatorCore::OnShutdown() {
  if (stopping_) return;
  stopping_ = true;
  for (const auto& [attempt, r] : runs_) Emit(cmd::CancelRun{attempt});
  for (const auto& job : storing_) Emit(cmd::CancelStore{job});
  // Jobs still running go back to the queue in the store now (a restart would do it too).
  cmd::Persist requeued;
  for (const auto& id : live_) {
    Job& j = jobs_.at(id);
    if (j.state != JobState::kRunning) continue;
    SetState(j, JobState::kQueued);
    for (auto& s : j.stages) ResetStage(s);
    requeued.jobs.push_back(j);
    requeued.jobs.back().outputs.clear();
  }
  if (!requeued.jobs.empty()) {
    Log(cmd::Level::kInfo,
        fmt::format("coordinator: {} running job(s) queued again for the next start", requeued.jobs.size()));
    Emit(std::move(requeued));
  }
}

// ---- runs ending ----

void CoordinatorCore::FreeWorkers(const Run& run) {
  for (const std::string& id : {run.worker_id, run.peer_id}) {
    auto it = workers_.find(id);
    if (it == workers_.end()) continue;
    Worker& w = it->second;
    w.job_id.clear();
    if (id == run.worker_id) ++w.stages_run;
    if (w.state == WorkerState::kBusy) w.state = WorkerState::kIdle;
    if (w.reload_pending && !w.load_in_flight && w.state == WorkerState::kIdle) StartLoad(w);
  }
}

void CoordinatorCore::OnProgress(const ev::StageProgress& e) {
  auto run = runs_.find(e.attempt);
  if (run == runs_.end() || run->second.superseded) return;
  auto it = jobs_.find(run->second.job);
  if (it == jobs_.end()) return;
  StageRun& s = it->second.stages[run->second.stage_index];
  if (s.attempt != e.attempt) return;
  s.step = e.step;
  s.steps = e.steps;
  Touch(it->second);
}

// What every run's end has in common: its workers are free again, and it is acted on only while it is still its
// job's current run. Returns the job then (else nullptr: a duplicate, a superseded run, or a job that ended while
// it ran, all settled here).
Job* CoordinatorCore::EndRun(Micros now, uint64_t attempt, bool unavailable, const std::vector<std::string>& reloaded,
                             Run* ended) {
  auto found = runs_.find(attempt);
  if (found == runs_.end()) return nullptr;  // a duplicate: the run already ended
  const Run run = *ended = found->second;
  runs_.erase(found);
  FreeWorkers(run);
  if (!reloaded.empty())
    if (auto w = workers_.find(run.worker_id); w != workers_.end()) w->second.described = reloaded;
  if (unavailable && !stopping_) Suspect(run);
  auto it = jobs_.find(run.job);
  if (it == jobs_.end()) return nullptr;
  Job& j = it->second;
  StageRun& s = j.stages[run.stage_index];
  // Its outputs may have been stored after its job let go of them: released again, on that worker.
  if (Terminal(j.state) && (run.superseded || s.attempt != run.attempt)) ReleaseLate(j, run);
  if (run.superseded || s.attempt != run.attempt || (s.state != StageState::kRunning && !Terminal(j.state))) {
    // A run the job has moved on from: whatever it did is not the job's any more.
    if (!run.superseded)
      Log(cmd::Level::kWarn, fmt::format("job {}: the end of a superseded run of {} (attempt {}) was ignored",
                                         run.job, StageKindName(s.kind), run.attempt));
    Dispatch(now);
    return nullptr;
  }
  Emit(cmd::Metric{cmd::MetricKind::kStageSeconds, (now - s.started) / 1e6, StageKindName(s.kind), s.worker});
  if (Terminal(j.state)) {
    // Ended while it ran (cancelled): the worker is free again; its tensors go.
    s.state = StageState::kCancelled;
    Persist(j);
    Touch(j);
    ReleaseTensors(j);
    Dispatch(now);
    return nullptr;
  }
  return &j;
}

void CoordinatorCore::OnResult(Micros now, const ev::StageResult& e) {
  Run run;
  Job* found = EndRun(now, e.attempt, false, e.reloaded, &run);
  if (!found) return;
  Job& j = *found;
  StageRun& s = j.stages[run.stage_index];
  s.state = StageState::kDone;
  s.accepted = e.accepted;
  s.started = e.started;
  s.finished = e.finished;
  std::string address;
  if (auto w = workers_.find(run.worker_id); w != workers_.end()) address = w->second.address;
  for (const auto& [name, bytes] : e.outputs) j.outputs[name] = TensorRef{name, s.worker, address, bytes, run.attempt};
  Touch(j);
  if (s.kind == StageKind::kVaeDecoder) {
    Dispatch(now);
    // The output is the one thing the coordinator keeps: clients download it from here. Cancelled when the
    // decoder's worker is lost meanwhile (the decoder then runs again) or the job ends.
    storing_.insert(j.id);
    Emit(cmd::StoreOutput{j.id, run.attempt, j.outputs["video.mp4"], e.frames});
    return;
  }
  // Intermediate stage states need not be durable: a restarted coordinator runs interrupted jobs again.
  j.result_at = now;
  Dispatch(now);
}

void CoordinatorCore::OnFailed(Micros now, const ev::StageFailed& e) {
  Run run;
  Job* found = EndRun(now, e.attempt, e.failure == ev::Failure::kUnavailable, {}, &run);
  if (!found) return;
  Job& j = *found;
  StageRun& s = j.stages[run.stage_index];
  if (stopping_) return;
  const std::string what = fmt::format("stage {} on worker {}: {}", StageKindName(s.kind), s.worker, e.message);
  if (e.failure == ev::Failure::kUnavailable) {
    // The worker (or one it fetched from, or its guidance peer) went away: the job runs again from its first
    // stage elsewhere. Which worker failed is not known yet; the lease tells, and Suspect keeps the job off both.
    Log(cmd::Level::kWarn, fmt::format("job {}: {}; running it again", j.id, what));
    if (j.attempts >= o_.max_attempts) {
      End(now, j, JobState::kFailed, fmt::format("gave up after {} attempts; last: {}", j.attempts, what));
    } else {
      Requeue(j, what);
    }
    Dispatch(now);
    return;
  }
  s.state = StageState::kFailed;
  s.error = e.message;
  End(now, j, JobState::kFailed, what);
  Dispatch(now);
}

void CoordinatorCore::OnOutputStored(Micros now, const ev::OutputStored& e) {
  storing_.erase(e.job_id);
  auto it = jobs_.find(e.job_id);
  if (it == jobs_.end() || Terminal(it->second.state)) return;
  Job& j = it->second;
  const StageRun* decoded = nullptr;
  for (const auto& s : j.stages)
    if (s.kind == StageKind::kVaeDecoder) decoded = &s;
  if (!decoded || decoded->attempt != e.attempt || decoded->state != StageState::kDone) return;  // it runs again
  if (e.error.empty()) {
    j.output_path = e.path;
    j.output_bytes = e.bytes;
    End(now, j, JobState::kSucceeded, "");
    Emit(cmd::Metric{cmd::MetricKind::kFrames, static_cast<double>(e.frames), {}, {}});
  } else {
    End(now, j, JobState::kFailed, e.error);
  }
  Dispatch(now);
}

// ---- failures ----

// After a call failed as calls to a dead process do, every worker the run depended on is suspect until it
// heartbeats again: its own worker and guidance peer, the job's other running stages' workers and the holders of
// its results (a stage that failed fetching its input names a dead producer, not a dead self).
void CoordinatorCore::Suspect(const Run& run) {
  std::set<std::string> ids = {run.worker_id, run.peer_id};
  for (const auto& [attempt, r] : runs_)
    if (r.job == run.job) ids.insert({r.worker_id, r.peer_id});
  std::set<std::string> names;
  if (auto j = jobs_.find(run.job); j != jobs_.end())
    for (const auto& [tensor, ref] : j->second.outputs) names.insert(ref.worker);
  for (auto& [id, w] : workers_)
    if (w.state != WorkerState::kLost && (ids.count(id) || names.count(w.name))) w.suspect = true;
}

void CoordinatorCore::CancelRuns(const std::string& job_id) {
  for (auto& [attempt, r] : runs_)
    if (r.job == job_id && !r.superseded) {
      r.superseded = true;
      Emit(cmd::CancelRun{attempt});
    }
  CancelStoring(job_id);
}

void CoordinatorCore::CancelStoring(const std::string& job_id) {
  if (storing_.erase(job_id)) Emit(cmd::CancelStore{job_id});
}

void CoordinatorCore::ReleaseTensors(Job& j) {
  std::set<std::string> addresses = j.touched;
  for (const auto& [name, ref] : j.outputs) addresses.insert(ref.address);
  j.outputs.clear();
  j.result_at = 0;
  if (!addresses.empty()) Emit(cmd::ReleaseTensors{j.id, std::move(addresses)});
}

void CoordinatorCore::ReleaseLate(const Job& j, const Run& run) {
  cmd::ReleaseTensors r{j.id, {}};
  for (const std::string& id : {run.worker_id, run.peer_id})
    if (auto w = workers_.find(id); w != workers_.end()) r.addresses.insert(w->second.address);
  if (!r.addresses.empty()) Emit(std::move(r));
}

void CoordinatorCore::Requeue(Job& j, const std::string& why) {
  CancelRuns(j.id);
  ReleaseTensors(j);
  SetState(j, JobState::kQueued);
  j.error = why;
  for (auto& s : j.stages) ResetStage(s);
  Count("requeued");
  Persist(j);
  Touch(j);
}

void CoordinatorCore::End(Micros now, Job& j, JobState state, const std::string& error) {
  CancelRuns(j.id);
  live_.erase(j.id);  // a later stage may be waiting for an input that will not come
  SetState(j, state);
  j.error = error;
  j.finished = now;
  for (auto& s : j.stages) {
    if (s.state == StageState::kPending)
      s.state = state == JobState::kCancelled ? StageState::kCancelled : StageState::kSkipped;
    if (s.state == StageState::kRunning) s.state = StageState::kCancelled;
  }
  Count(state == JobState::kSucceeded ? "succeeded" : state == JobState::kFailed ? "failed" : "cancelled");
  if (state == JobState::kSucceeded && j.started > 0)
    Emit(cmd::Metric{cmd::MetricKind::kJobSeconds, (now - j.started) / 1e6, {}, {}});
  Persist(j);  // before it is said: a job logged as ended is ended in the store
  if (state == JobState::kFailed) Log(cmd::Level::kError, fmt::format("job {} failed: {}", j.id, error));
  else Log(cmd::Level::kInfo, fmt::format("job {} {}", j.id, state == JobState::kSucceeded ? "succeeded" : "cancelled"));
  Touch(j);
  ReleaseTensors(j);
  ended_.push_back(j.id);
  Forget();
  if (live_.empty()) Emit(cmd::QueueDrained{});
}

// Memory holds the live jobs and the newest ended ones; older ended jobs are read from the store when asked for.
// The job that just ended is the newest, so the caller's reference to it stays good.
void CoordinatorCore::Forget() {
  while (ended_.size() > static_cast<size_t>(std::max(1, o_.ended_jobs_kept))) {
    const std::string id = ended_.front();
    ended_.pop_front();
    auto it = jobs_.find(id);
    if (it == jobs_.end() || !Terminal(it->second.state)) continue;
    if (!it->second.request_id.empty()) requests_.erase(it->second.request_id);
    jobs_.erase(it);
    ++evicted_;
    Emit(cmd::Forget{id});
  }
}

int CoordinatorCore::TensorsNeededOn(const std::string& name) const {
  int n = 0;
  for (const auto& id : live_) {
    const Job& j = jobs_.at(id);
    if (j.outputs.empty()) continue;
    const std::vector<StageView> view = ViewOf(j);
    const bool i2v = Model(j).image_conditioned;
    for (const auto& [tensor, ref] : j.outputs)
      if (ref.worker == name)
        for (size_t i = 0; i < view.size(); ++i)
          n += view[i].kind == ProducerOf(tensor) && view[i].state == "done" &&
               OutputNeeded(view, static_cast<int>(i), i2v);
  }
  return n;
}

// A worker is gone: lost (silent past its lease) or left with work unfinished. Each running job that needed it
// runs again: only the stages it took with it (recovery.h) while others keep results on live workers, else from
// its first stage; a job is failed after max_attempts.
void CoordinatorCore::WorkerGone(Micros now, const std::string& worker_id, const std::string& why) {
  const std::string name = workers_.at(worker_id).name;
  for (const std::string& id : std::vector<std::string>(live_.begin(), live_.end())) {
    Job& j = jobs_.at(id);
    if (j.state != JobState::kRunning) continue;
    const bool i2v = Model(j).image_conditioned;
    std::vector<StageView> view = ViewOf(j);
    for (const auto& [attempt, r] : runs_)
      if (r.job == id && !r.superseded && (r.worker_id == worker_id || r.peer_id == worker_id))
        view[r.stage_index].runs_on_gone = true;
    for (const auto& [tensor, ref] : j.outputs)
      if (ref.worker == name)
        for (auto& v : view) v.output_on_gone = v.output_on_gone || v.kind == ProducerOf(tensor);
    const std::set<int> rerun = StagesToRerun(view, i2v);
    if (rerun.empty()) continue;
    const std::string what = fmt::format("worker {} {}", name, why);
    std::vector<std::string> names;
    bool kept = false;  // a stage keeps its result on a live worker
    for (size_t i = 0; i < j.stages.size(); ++i) {
      if (rerun.count(static_cast<int>(i))) names.push_back(StageKindName(view[i].kind));
      kept = kept || (!rerun.count(static_cast<int>(i)) && view[i].state == "done");
    }
    if (j.attempts >= o_.max_attempts) {
      End(now, j, JobState::kFailed,
          fmt::format("gave up after {} attempts; last: {}", j.attempts, what));
      continue;
    }
    if (!kept) {
      Log(cmd::Level::kWarn, fmt::format("job {}: {}; running it again from its first stage", id, what));
      Requeue(j, what);
      continue;
    }
    Log(cmd::Level::kWarn, fmt::format("job {}: {}; running {} again (the other stages keep their results)", id, what,
                                       fmt::join(names, ", ")));
    for (auto& [attempt, r] : runs_)
      if (r.job == id && !r.superseded && rerun.count(r.stage_index)) {
        r.superseded = true;
        Emit(cmd::CancelRun{attempt});
      }
    for (int i : rerun) {
      if (view[i].kind == StageKind::kVaeDecoder) CancelStoring(id);
      for (auto out = j.outputs.begin(); out != j.outputs.end();)
        out = ProducerOf(out->first) == view[i].kind ? j.outputs.erase(out) : std::next(out);
      ResetStage(j.stages[i]);
    }
    ++j.attempts;
    j.error = what;
    Count("requeued");
    Persist(j);
    Touch(j);
  }
}

}  // namespace reel::core
