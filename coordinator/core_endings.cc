// The core's handlers for runs ending (results, failures, the stored output) and for what ends them: suspects,
// requeues, job endings, releases, and a worker gone (coordinator/recovery.h decides which stages run again).
#include <algorithm>

#include <fmt/format.h>

#include "coordinator/coordinator_core.h"
#include "coordinator/recovery.h"

namespace reel::core {

namespace {

std::vector<StageView> ViewOf(const Job& j) {
  std::vector<StageView> view(j.stages.size());
  for (size_t i = 0; i < j.stages.size(); ++i) {
    view[i].kind = j.stages[i].kind;
    view[i].state = StageStateName(j.stages[i].state);
  }
  return view;
}

}  // namespace

// ---- runs ending ----

void CoordinatorCore::FreeWorkers(const Run& run) {
  for (const std::string& id : run.Workers()) {
    auto it = workers_.find(id);
    if (it == workers_.end()) continue;
    Worker& w = it->second;
    w.job_id.clear();
    if (id == run.worker_id) ++w.stages_run;
    if (w.state == WorkerState::kBusy) w.state = WorkerState::kIdle;
    if (w.reload_pending && !w.load_in_flight && w.state == WorkerState::kIdle) StartLoad(w);
    Reindex(w);
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
  index_.RemoveRun(run.job, attempt);
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
  } else if (e.failure == ev::Failure::kUnavailable) {
    // The decoder's worker could not hand its video over (gone, or started again without it): as when it is lost,
    // the decoder runs again elsewhere, and so does whatever else of the job it alone held. It is suspect, so the
    // decoder does not go back to it before it heartbeats again; if it is gone its lease says so later.
    const auto video = j.outputs.find("video.mp4");
    const std::string holder = video == j.outputs.end() ? decoded->worker : video->second.worker;
    Worker* w = WorkerByName(holder);
    if (w && w->state != WorkerState::kLost && (video == j.outputs.end() || w->address == video->second.address)) {
      w->suspect = true;
      Reindex(*w);
    }
    RerunWithout(now, j, w ? w->id : std::string(), holder, e.error);
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
  std::set<std::string> ids;
  for (const std::string& id : run.Workers()) ids.insert(id);
  for (uint64_t attempt : index_.RunsOf(run.job))
    for (const std::string& id : runs_.at(attempt).Workers()) ids.insert(id);
  std::set<std::string> names;
  if (auto j = jobs_.find(run.job); j != jobs_.end())
    for (const auto& [tensor, ref] : j->second.outputs) names.insert(ref.worker);
  for (auto& [id, w] : workers_)
    if (w.state != WorkerState::kLost && (ids.count(id) || names.count(w.name))) {
      w.suspect = true;
      Reindex(w);
    }
}

void CoordinatorCore::CancelRuns(const std::string& job_id) {
  for (uint64_t attempt : index_.RunsOf(job_id))
    if (Run& r = runs_.at(attempt); !r.superseded) {
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
  for (const std::string& id : run.Workers())
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
    if (j.state == JobState::kRunning) RerunWithout(now, j, worker_id, name, fmt::format("worker {} {}", name, why));
  }
}

void CoordinatorCore::RerunWithout(Micros now, Job& j, const std::string& worker_id, const std::string& name,
                                   const std::string& what) {
  const std::string& id = j.id;
  const bool i2v = Model(j).image_conditioned;
  std::vector<StageView> view = ViewOf(j);
  for (uint64_t attempt : index_.RunsOf(id))
    if (const Run& r = runs_.at(attempt);
        !r.superseded && r.Involves(worker_id))
      view[r.stage_index].runs_on_gone = true;
  for (const auto& [tensor, ref] : j.outputs)
    if (ref.worker == name)
      for (auto& v : view) v.output_on_gone = v.output_on_gone || v.kind == ProducerOf(tensor);
  const std::set<int> rerun = StagesToRerun(view, i2v);
  if (rerun.empty()) return;
  std::vector<std::string> names;
  bool kept = false;  // a stage keeps its result on a live worker
  for (size_t i = 0; i < j.stages.size(); ++i) {
    if (rerun.count(static_cast<int>(i))) names.push_back(StageKindName(view[i].kind));
    kept = kept || (!rerun.count(static_cast<int>(i)) && view[i].state == "done");
  }
  if (j.attempts >= o_.max_attempts) {
    End(now, j, JobState::kFailed, fmt::format("gave up after {} attempts; last: {}", j.attempts, what));
    return;
  }
  if (!kept) {
    Log(cmd::Level::kWarn, fmt::format("job {}: {}; running it again from its first stage", id, what));
    Requeue(j, what);
    return;
  }
  Log(cmd::Level::kWarn, fmt::format("job {}: {}; running {} again (the other stages keep their results)", id, what,
                                     fmt::join(names, ", ")));
  for (uint64_t attempt : index_.RunsOf(id))
    if (Run& r = runs_.at(attempt); !r.superseded && rerun.count(r.stage_index)) {
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

}  // namespace reel::core
