// The core's handlers for clients, workers, leases and restarts; dispatch is core_dispatch.cc, runs ending and what
// ends them core_endings.cc.
#include "coordinator/coordinator_core.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/printable.h"

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

}  // namespace

CoordinatorCore::CoordinatorCore(CoreOptions options) : o_(std::move(options)) {}

// ---- helpers ----

void CoordinatorCore::Touch(Job& j) {
  j.version = ++version_;
  Reindex(j);
}

void CoordinatorCore::Reindex(Job& j) {
  auto m = o_.models.find(j.shape.model);
  const bool dispatchable = !Terminal(j.state) && !(draining_ && j.state == JobState::kQueued) && m != o_.models.end();
  index_.UpdateJob(j, dispatchable, m != o_.models.end() && m->second.image_conditioned);
}

void CoordinatorCore::Reindex(const Worker& w) { index_.UpdateWorker(w); }

std::string CoordinatorCore::IndexMismatch() const {
  return index_.Mismatch(jobs_, workers_, runs_, o_.models, draining_);
}

void CoordinatorCore::Persist(const Job& j) {
  cmd::Persist p;
  p.jobs.push_back(j);
  p.jobs.back().outputs.clear();
  Emit(std::move(p));
}

void CoordinatorCore::Log(cmd::Level level, std::string text) { Emit(cmd::Log{level, std::move(text)}); }

void CoordinatorCore::Count(const char* event) { Emit(cmd::Metric{cmd::MetricKind::kCount, 1, event, {}}); }

Worker* CoordinatorCore::WorkerByName(const std::string& name) {
  const std::string* id = index_.IdOf(name);
  return id ? &workers_.at(*id) : nullptr;
}

const Worker* CoordinatorCore::FindWorkerByName(const std::string& name) const {
  const std::string* id = index_.IdOf(name);
  return id ? &workers_.at(*id) : nullptr;
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

Micros CoordinatorCore::NextWake() const {
  const Micros early = index_.NextDue();
  if (replan_due_ == 0 || early == 0) return std::max(replan_due_, early);
  return std::min(replan_due_, early);
}

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
  Reindex(w);
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
    Reindex(jobs_.at(id));
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
            for (const auto& id : live_) Reindex(jobs_.at(id));  // queued jobs leave the dispatch index
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
    index_.RemoveWorker(replaced);
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
  w.sequence_parallel = e.sequence_parallel;
  w.last_heartbeat = now;
  if (!o_.planned) w.target = e.static_target;
  const std::string id = w.id;
  Worker& added = workers_[id] = std::move(w);
  Reindex(added);
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
  const bool was_suspect = std::exchange(w.suspect, false);
  Reindex(w);
  if (was_suspect) Dispatch(now);  // it is alive after all
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
  Reindex(w);
  int running = 0;
  for (const auto& [attempt, r] : runs_) running += r.Involves(id);
  const int needed = TensorsNeededOn(name);
  if (e.going) {
    Log(cmd::Level::kInfo,
        fmt::format("worker {} left{}", name,
                    running + needed > 0 ? fmt::format(" with {} stage run(s) and {} needed tensor(s) unfinished",
                                                       running, needed)
                                         : ""));
    if (running + needed > 0) WorkerGone(now, id, "left before its work was done");
    index_.RemoveWorker(id);
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
    Reindex(w);
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
  index_.UpdateWorker(w, true);
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
      Reindex(w);
      out_.reply.chosen.emplace_back(id, w.address);
    }
  if (out_.reply.chosen.empty())
    out_.reply = Refusal(Code::kFailedPrecondition, "no idle workers to tune; wait for running jobs to end");
}

void CoordinatorCore::OnTuneEnd(Micros now, const ev::TuneEnd& e) {
  for (const auto& id : e.worker_ids)
    if (auto it = workers_.find(id); it != workers_.end() && it->second.state == WorkerState::kTuning) {
      it->second.state = WorkerState::kIdle;
      Reindex(it->second);
    }
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
  // The leases run out in heartbeat order; they are acted on in id order, as a scan of the workers would.
  for (const std::string& id : index_.Expired(now - o_.worker_timeout_us)) {
    Worker& w = workers_.at(id);
    const int64_t silent_ms = (now - w.last_heartbeat) / 1000;
    Log(cmd::Level::kWarn, fmt::format("worker {} ({}) sent no heartbeat for {} ms: lost", w.name, w.address,
                                       silent_ms));
    w.state = WorkerState::kLost;
    w.job_id.clear();
    Reindex(w);
    changed = true;
    WorkerGone(now, id, fmt::format("stopped answering (no heartbeat for {} ms)", silent_ms));
  }
  if (changed) {
    ScheduleReplan(now);  // what the lost worker held goes elsewhere
    Dispatch(now);
  } else if (index_.Promote(now)) {
    Dispatch(now);  // an early dispatch fell due
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
    Reindex(j);
    requeued.jobs.push_back(j);
    requeued.jobs.back().outputs.clear();
  }
  if (!requeued.jobs.empty()) {
    Log(cmd::Level::kInfo,
        fmt::format("coordinator: {} running job(s) queued again for the next start", requeued.jobs.size()));
    Emit(std::move(requeued));
  }
}

}  // namespace reel::core
