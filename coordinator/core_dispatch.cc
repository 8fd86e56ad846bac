// Dispatch: which ready stage runs on which idle worker, early dispatch of stages whose inputs are still being
// produced, and guidance-parallel pairs chosen against early dispatch by the cost model.
#include <algorithm>

#include <fmt/format.h>

#include "coordinator/coordinator_core.h"
#include "coordinator/recovery.h"

namespace reel::core {

namespace {

// What each stage reads.
const std::vector<std::string>& InputsOf(StageKind k, bool i2v) {
  static const std::vector<std::string> none, text = {"text"}, text_image = {"text", "image_moments"},
                                              latents = {"latents"};
  switch (k) {
    case StageKind::kDenoiser: return i2v ? text_image : text;
    case StageKind::kVaeDecoder: return latents;
    default: return none;
  }
}

struct Ready {
  Job* job;
  int index;
  bool early = false;
};

bool Holds(const Worker& w, const std::string& model, StageKind k) { return w.holds.count({model, k}) > 0; }

}  // namespace

void CoordinatorCore::Dispatch(Micros now) {
  if (stopping_) return;
  // Nothing can be placed without an idle worker: the common case under load (busy workers, a growing queue),
  // where every submission and result would otherwise scan the whole queue.
  if (std::none_of(workers_.begin(), workers_.end(),
                   [](const auto& w) { return w.second.state == WorkerState::kIdle && !w.second.suspect; }))
    return;
  // Stages whose inputs all exist (ready), or whose inputs are being produced now (early).
  auto collect = [&](bool early) {
    std::vector<Ready> out;
    for (const auto& id : live_) {
      Job& j = jobs_.at(id);
      if (draining_ && j.state == JobState::kQueued) continue;  // a draining coordinator starts nothing new
      const bool i2v = Model(j).image_conditioned;
      for (size_t i = 0; i < j.stages.size(); ++i) {
        if (j.stages[i].state != StageState::kPending) continue;
        bool all_done = true, all_started = true;
        for (StageKind d : StageDependencies(j.stages[i].kind, i2v))
          for (const auto& other : j.stages)
            if (other.kind == d) {
              all_done = all_done && other.state == StageState::kDone;
              all_started = all_started && (other.state == StageState::kDone || other.state == StageState::kRunning);
            }
        if (early ? (!all_done && all_started) : all_done) out.push_back({&j, static_cast<int>(i), early});
      }
    }
    // Highest priority first, then submission order: an older job's next stage goes before a newer job's first.
    std::sort(out.begin(), out.end(), [](const Ready& a, const Ready& b) {
      if (a.job->priority != b.job->priority) return a.job->priority > b.job->priority;
      return a.job->seq != b.job->seq ? a.job->seq < b.job->seq : a.index < b.index;
    });
    return out;
  };
  const std::vector<Ready> ready = collect(false);
  // Pending ready stages by (model, stage), kept as they are placed: what a worker could take is the sum over what
  // it holds, so asking costs its holdings rather than the whole queue.
  std::map<std::pair<std::string, StageKind>, int> pending;
  for (const auto& rd : ready) ++pending[{rd.job->shape.model, rd.job->stages[rd.index].kind}];
  // How many ready stages a worker could take: a guided denoise borrows a second worker (and an early dispatch
  // takes one) only when nothing else is waiting for it, so neither costs throughput.
  auto waiting_for = [&](const Worker* w, const Ready& except) {
    int n = 0;
    for (const auto& h : w->holds)
      if (auto it = pending.find(h); it != pending.end()) n += it->second;
    const StageRun& own = except.job->stages[except.index];
    if (own.state == StageState::kPending && Holds(*w, except.job->shape.model, own.kind))
      n -= pending.count({except.job->shape.model, own.kind}) > 0 && !except.early;
    return n;
  };
  // The idle workers, found once: with many workers, most are busy.
  std::vector<Worker*> free;
  for (auto& [wid, w] : workers_)
    if (w.state == WorkerState::kIdle && !w.suspect) free.push_back(&w);
  auto place = [&](const Ready& rd, bool early) {
    Job& j = *rd.job;
    if (j.stages[rd.index].state != StageState::kPending) return;
    const StageKind kind = j.stages[rd.index].kind;
    std::vector<Worker*> idle;
    for (Worker* w : free)
      if (w->state == WorkerState::kIdle && Holds(*w, j.shape.model, kind) && (!early || waiting_for(w, rd) == 0))
        idle.push_back(w);
    if (idle.empty()) return;
    // Prefer the worker already holding the inputs, then the one that has run least.
    auto local_bytes = [&](const Worker* w) {
      int64_t n = 0;
      for (const auto& [name, ref] : j.outputs)
        if (ref.worker == w->name) n += ref.bytes;
      return n;
    };
    std::stable_sort(idle.begin(), idle.end(), [&](const Worker* a, const Worker* b) {
      const int64_t la = local_bytes(a), lb = local_bytes(b);
      if (la != lb) return la > lb;
      return a->stages_run < b->stages_run;
    });
    Worker* w = idle[0];
    Worker* peer = nullptr;
    const bool split = kind == StageKind::kDenoiser && o_.guidance_parallel && j.shape.guided();
    if (split && idle.size() > 1 && waiting_for(idle[1], rd) == 0) peer = idle[1];
    if (early && split && !peer && WaitForSplit(now, j, rd.index, idle)) return;
    if (!early) --pending[{j.shape.model, kind}];
    Launch(now, j, rd.index, w, peer, early);
  };
  auto any_free = [&] {
    return std::any_of(free.begin(), free.end(), [](const Worker* w) { return w->state == WorkerState::kIdle; });
  };
  for (const auto& rd : ready) {
    if (!any_free()) return;
    place(rd, false);
  }
  // Then stages whose inputs are still being produced, on workers nothing else is waiting for: they start
  // fetching at once and compute the moment the producer stores its output, with no round trip through here.
  for (const auto& rd : collect(true)) {
    if (!any_free()) return;
    place(rd, true);
  }
}

std::pair<double, double> CoordinatorCore::SplitTimes(Micros now, const Job& j, int index) const {
  if (!o_.estimate) return {0, 0};
  const StageEstimate d = o_.estimate(j.shape, j.stages[index].kind);
  if (d.seconds <= 0 || d.split_seconds <= 0) return {0, 0};
  // The producers' time left, by the same cost model.
  double remaining = 0;
  const bool i2v = Model(j).image_conditioned;
  for (StageKind dep : StageDependencies(j.stages[index].kind, i2v))
    for (const auto& s : j.stages)
      if (s.kind == dep && s.state == StageState::kRunning)
        remaining = std::max(remaining, o_.estimate(j.shape, dep).seconds - (now - s.started) / 1e6);
  return {remaining + d.seconds, remaining + o_.handoff_us / 1e6 + d.split_seconds};
}

bool CoordinatorCore::WaitForSplit(Micros now, Job& j, int index, const std::vector<Worker*>& idle) {
  if (o_.revert_split_choice) return false;
  const auto [alone, split] = SplitTimes(now, j, index);
  if (alone <= 0) return false;  // nothing to compare: early dispatch, as without a cost model
  // The pair it would wait for: the idle holders of the denoiser and the workers running its producers (free the
  // moment their stage is done) that hold it too.
  std::set<std::string> pair;
  for (const Worker* w : idle) pair.insert(w->name);
  const bool i2v = Model(j).image_conditioned;
  for (StageKind dep : StageDependencies(j.stages[index].kind, i2v))
    for (const auto& s : j.stages)
      if (s.kind == dep && s.state == StageState::kRunning)
        if (const Worker* w = FindWorkerByName(s.worker); w && Holds(*w, j.shape.model, j.stages[index].kind))
          pair.insert(w->name);
  if (pair.size() < 2 || split >= alone) return false;
  j.denoiser_dispatch = fmt::format("guidance_split: waits for its inputs to run on two workers ({:.3f} s by the "
                                    "cost model, against {:.3f} s early on one)",
                                    split, alone);
  return true;
}

TensorRef CoordinatorCore::RefFor(const Job& j, const std::string& name) const {
  if (auto it = j.outputs.find(name); it != j.outputs.end()) return it->second;
  TensorRef ref;
  ref.name = name;
  const StageKind producer = ProducerOf(name);
  for (const auto& s : j.stages)
    if (s.kind == producer && s.state == StageState::kRunning)
      if (const Worker* w = FindWorkerByName(s.worker)) {
        ref.address = w->address;
        ref.worker = w->name;
        ref.attempt = s.attempt;
      }
  return ref;
}

void CoordinatorCore::Launch(Micros now, Job& j, int index, Worker* w, Worker* peer, bool early) {
  if (j.state == JobState::kQueued) {
    SetState(j, JobState::kRunning);
    j.started = now;
    ++j.attempts;
    Emit(cmd::Metric{cmd::MetricKind::kQueueWait, (now - j.submitted) / 1e6, {}, {}});
    Persist(j);  // its attempts count, across a restart too
  }
  StageRun& s = j.stages[index];
  s.state = StageState::kRunning;
  // This start's count in the high half, so an attempt never repeats across restarts of the coordinator (a worker
  // that outlived one may still hold the tensors of an earlier start's attempts).
  s.attempt = (static_cast<uint64_t>(boot_) << 32) | ++runs_started_;
  s.worker = w->name;
  s.guidance_peer = peer ? peer->name : "";
  s.started = now;
  s.finished = 0;
  s.step = 0;
  s.error.clear();
  if (s.kind == StageKind::kDenoiser && j.shape.guided() && o_.guidance_parallel) {
    const auto [alone, split] = SplitTimes(now, j, index);
    const std::string estimate =
        alone > 0 ? fmt::format(" ({:.3f} s split, {:.3f} s alone by the cost model)", split, alone) : "";
    j.denoiser_dispatch = peer    ? "guidance_split: on " + w->name + " and " + peer->name + estimate
                          : early ? "early: on " + w->name + " while its inputs are produced" + estimate
                                  : "single: no second idle worker holds the denoiser" + estimate;
  }
  w->state = WorkerState::kBusy;
  w->job_id = j.id;
  j.touched.insert(w->address);
  if (peer) {
    j.touched.insert(peer->address);
    peer->state = WorkerState::kBusy;
    peer->job_id = j.id;
  }
  cmd::RunStage run;
  run.job_id = j.id;
  run.stage_index = index;
  run.kind = s.kind;
  run.attempt = s.attempt;
  run.worker_id = w->id;
  run.address = w->address;
  run.worker = w->name;
  if (peer) {
    run.peer_id = peer->id;
    run.peer_address = peer->address;
    run.peer = peer->name;
  }
  for (const auto& name : InputsOf(s.kind, Model(j).image_conditioned)) run.inputs.push_back(RefFor(j, name));
  if (j.result_at > 0) {
    Emit(cmd::Metric{cmd::MetricKind::kDispatchSeconds, (now - j.result_at) / 1e6, {}, {}});
    j.result_at = 0;
  }
  runs_[s.attempt] = Run{j.id, w->id, peer ? peer->id : "", index, s.attempt, false};
  Touch(j);
  Emit(std::move(run));
}

}  // namespace reel::core
