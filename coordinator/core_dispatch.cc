// Dispatch: which ready stage runs on which idle worker, early dispatch of stages whose inputs are still being
// produced, and guidance-parallel pairs chosen against early dispatch by the cost model.
#include <algorithm>
#include <optional>

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

bool Holds(const Worker& w, const std::string& model, StageKind k) { return w.holds.count({model, k}) > 0; }

}  // namespace

void CoordinatorCore::Dispatch(Micros now) {
  if (stopping_) return;
  // Nothing can be placed without an idle worker: the common case under load (busy workers, a growing queue).
  if (!index_.AnyIdle()) return;
  // Stages whose inputs all exist, highest priority first, then submission order: an older job's next stage goes
  // before a newer job's first.
  DispatchPass(now, false);
  // Then stages whose inputs are still being produced, on workers nothing else is waiting for: they start
  // fetching at once and compute the moment the producer stores its output, with no round trip through here.
  // Stages that become early during this pass (a consumer of one placed in it) wait for the next dispatch.
  if (!index_.AnyIdle()) return;
  index_.Promote(now);
  DispatchPass(now, true);
}

// The ready (or early) stages in dispatch order, merged across the (model, stage)s some idle worker holds: a stage
// no idle worker holds cannot be placed, so what a pass costs is what it places, not the length of the queue.
void CoordinatorCore::DispatchPass(Micros now, bool early) {
  const uint64_t pass = early ? index_.BeginEarlyPass() : 0;
  const auto& stages = early ? index_.early() : index_.ready();
  std::optional<DispatchIndex::Place> after;
  while (index_.AnyIdle()) {
    Job* job = nullptr;
    DispatchIndex::Place next;
    for (const auto& [key, entries] : stages) {
      if (!index_.Available(key)) continue;
      auto it = after ? entries.upper_bound(*after) : entries.begin();
      while (early && it != entries.end() && it->second.pass == pass) ++it;
      if (it != entries.end() && (!job || it->first < next)) {
        next = it->first;
        job = it->second.job;
      }
    }
    if (!job) return;
    after = next;
    Place(now, *job, next.index, early);
  }
}

size_t CoordinatorCore::WaitingFor(const Worker& w, const Job& j, int index, bool early) const {
  size_t n = 0;
  for (const auto& h : w.holds) n += index_.ReadyCount(h);
  // Its own stage, when ready, is among those counted.
  if (!early && Holds(w, j.shape.model, j.stages[index].kind)) --n;
  return n;
}

void CoordinatorCore::Place(Micros now, Job& j, int index, bool early) {
  const StageKind kind = j.stages[index].kind;
  const DispatchIndex::Idle* available = index_.Available({j.shape.model, kind});
  if (!available) return;
  // Prefer the worker already holding the inputs, then the one that has run least, then the lowest id. Only the
  // first two matter (a guided denoiser's pair); the workers holding inputs are at most one per input.
  auto local_bytes = [&](const Worker& w) {
    int64_t n = 0;
    for (const auto& [name, ref] : j.outputs)
      if (ref.worker == w.name) n += ref.bytes;
    return n;
  };
  auto eligible = [&](const Worker& w) { return !early || WaitingFor(w, j, index, early) == 0; };
  std::vector<Worker*> local;
  for (const auto& [name, ref] : j.outputs)
    if (Worker* w = WorkerByName(ref.worker);
        w && std::find(local.begin(), local.end(), w) == local.end() && local_bytes(*w) > 0 &&
        w->state == WorkerState::kIdle && !w->suspect && Holds(*w, j.shape.model, kind) && eligible(*w))
      local.push_back(w);
  std::sort(local.begin(), local.end(), [&](const Worker* a, const Worker* b) {
    const int64_t la = local_bytes(*a), lb = local_bytes(*b);
    if (la != lb) return la > lb;
    return a->stages_run != b->stages_run ? a->stages_run < b->stages_run : a->id < b->id;
  });
  std::vector<Worker*> best(local.begin(), local.begin() + std::min<size_t>(local.size(), 2));
  for (auto it = available->begin(); it != available->end() && best.size() < 2; ++it) {
    Worker& w = workers_.at(it->second);
    if (std::find(local.begin(), local.end(), &w) == local.end() && local_bytes(w) == 0 && eligible(w))
      best.push_back(&w);
  }
  if (best.empty()) return;
  int latency_choice = 0;  // a latency job's choice when not in sequence: 1 worker, or 2 (the guidance split)
  std::string latency_note;  // and the cost model's comparison, for its record
  if (kind == StageKind::kDenoiser && j.shape.latency && o_.estimate) {
    // A latency job's denoise may take every idle holder of the denoiser (sequence parallelism): never sent early,
    // which would take one worker only.
    if (early) {
      if (available->size() > 1) return;
    } else {
      std::vector<Worker*> all = local;
      for (const auto& [key, id] : *available)
        if (Worker& c = workers_.at(id); std::find(all.begin(), all.end(), &c) == all.end()) all.push_back(&c);
      latency_choice = PlaceSequence(now, j, index, all, &latency_note);
      if (latency_choice < 0) return;
    }
  }
  Worker* w = best[0];
  Worker* peer = nullptr;
  const bool split = kind == StageKind::kDenoiser && o_.guidance_parallel && j.shape.guided();
  if (split && best.size() > 1 && WaitingFor(*best[1], j, index, early) == 0 && latency_choice != 1) peer = best[1];
  if (early && split && !peer && WaitForSplit(now, j, index, best)) return;
  if (early) {
    // Early dispatch parks this worker until the inputs exist; it saves one handoff. Worth it only in the
    // producers' last handoff by the cost model; until then the stage is set aside (a Tick wakes it).
    const Micros from = EarlyFrom(j, index);
    const double left = static_cast<double>(from + o_.handoff_us - now) / 1e6;
    if (from > now) {
      j.stages[index].early_dispatch =
          fmt::format("waits for its inputs: {:.3f} s left by the cost model, against a {:.3f} s handoff", left,
                      o_.handoff_us / 1e6);
      index_.Defer({j.shape.model, kind}, {-j.priority, j.seq, index}, from);
      return;
    }
    j.stages[index].early_dispatch =
        from > 0 ? fmt::format("early: on {}, its inputs due in {:.3f} s by the cost model, within a {:.3f} s handoff",
                               w->name, std::max(0.0, left), o_.handoff_us / 1e6)
                 : "early: on " + w->name + " while its inputs are produced (not bounded by a cost model)";
  }
  Launch(now, j, index, w, peer, early);
  if (!latency_note.empty())
    j.denoiser_dispatch = (peer ? "guidance_split: on " + w->name + " and " + peer->name : "single: on " + w->name) +
                          "; " + latency_note;
}

int CoordinatorCore::PlaceSequence(Micros now, Job& j, int index, const std::vector<Worker*>& idle,
                                   std::string* note) {
  const StageEstimate d = o_.estimate(j.shape, StageKind::kDenoiser);
  if (d.seconds <= 0) return 0;
  // The choices the idle workers allow, by the cost model: one worker, the guidance split, k workers in sequence.
  struct Choice {
    std::string name;
    int workers = 1;
    double seconds = 0;
    bool split = false;  // in sequence, with the guided batch split besides: workers / 2 ranks
  };
  std::vector<Choice> choices = {{"one worker", 1, d.seconds}};
  if (o_.guidance_parallel && j.shape.guided() && idle.size() > 1 && d.split_seconds > 0)
    choices.push_back({"guidance split", 2, d.split_seconds});
  std::vector<Worker*> able;  // the sequence's ranks: workers built with sequence parallelism
  for (Worker* w : idle)
    if (w->sequence_parallel) able.push_back(w);
  for (size_t k = 2; k <= able.size() && k - 2 < d.sequence_seconds.size(); ++k)
    if (d.sequence_seconds[k - 2] > 0)
      choices.push_back({fmt::format("{} workers in sequence", k), static_cast<int>(k), d.sequence_seconds[k - 2]});
  // With the guided batch split besides: k ranks for the conditional halves, k more for the unconditional ones.
  if (o_.guidance_parallel && j.shape.guided())
    for (size_t k = 2; 2 * k <= able.size() && k - 2 < d.sequence_split_seconds.size(); ++k)
      if (d.sequence_split_seconds[k - 2] > 0)
        choices.push_back({fmt::format("{} workers in sequence with the guidance split", 2 * k),
                           static_cast<int>(2 * k), d.sequence_split_seconds[k - 2], true});
  const Choice* best = &choices[0];
  for (const Choice& c : choices)
    if (c.seconds < best->seconds) best = &c;  // ties: the fewer workers, listed first
  std::string others;
  for (const Choice& c : choices)
    if (&c != best) others += fmt::format("{}{} {:.3f} s", others.empty() ? "" : ", ", c.name, c.seconds);
  const bool priced = choices.size() > 1 && !d.sequence_link.empty() && able.size() > 1;
  const std::string why = fmt::format(" by the cost model{}{}", priced ? " (link " + d.sequence_link + ")" : "",
                                      others.empty() ? "" : "; " + others);
  if (best->name.find("in sequence") == std::string::npos) {
    // Today's dispatch (one worker, or the guidance split), which says what it did; the latency choice is noted.
    *note = fmt::format("latency objective: {} {:.3f} s{}", best->name, best->seconds, why);
    return best->workers;
  }
  const int k = best->split ? best->workers / 2 : best->workers;
  std::vector<Worker*> ranks(able.begin(), able.begin() + k);
  std::vector<Worker*> uncond;  // the split: rank r's unconditional half on uncond[r]
  if (best->split) uncond.assign(able.begin() + k, able.begin() + 2 * k);
  std::string names;
  for (const Worker* w : ranks) names += (names.empty() ? "" : ", ") + w->name;
  std::string split_names;
  for (const Worker* w : uncond) split_names += (split_names.empty() ? "" : ", ") + w->name;
  Launch(now, j, index, ranks[0], uncond.empty() ? nullptr : uncond[0], false, {ranks.begin() + 1, ranks.end()},
         uncond.empty() ? std::vector<Worker*>{} : std::vector<Worker*>(uncond.begin() + 1, uncond.end()));
  j.denoiser_dispatch =
      uncond.empty()
          ? fmt::format("sequence_parallel: {} workers ({}), {:.3f} s{}", best->workers, names, best->seconds, why)
          : fmt::format("sequence_parallel: {} workers ({}) with the guidance split ({}), {:.3f} s{}", best->workers,
                        names, split_names, best->seconds, why);
  return -1;
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

Micros CoordinatorCore::EarlyFrom(const Job& j, int index) const {
  // Unbounded without a cost model, when asked, and with (b)'s fix reverted (early dispatch as it was then).
  if (!o_.estimate || !o_.bound_early_dispatch || o_.revert_split_choice) return 0;
  Micros from = 0;
  const bool i2v = Model(j).image_conditioned;
  for (StageKind dep : StageDependencies(j.stages[index].kind, i2v))
    for (const auto& s : j.stages)
      if (s.kind == dep && s.state == StageState::kRunning) {
        const double seconds = o_.estimate(j.shape, dep).seconds;
        if (seconds <= 0) return 0;  // no estimate: early at once, as without a cost model
        from = std::max(from, s.started + static_cast<Micros>(seconds * 1e6) - o_.handoff_us);
      }
  return from;
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

void CoordinatorCore::Launch(Micros now, Job& j, int index, Worker* w, Worker* peer, bool early,
                             const std::vector<Worker*>& sequence, const std::vector<Worker*>& sequence_guidance) {
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
  s.sequence_peers.clear();
  for (const Worker* r : sequence) s.sequence_peers.push_back(r->name);
  s.sequence_guidance_peers.clear();
  for (const Worker* r : sequence_guidance) s.sequence_guidance_peers.push_back(r->name);
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
  Reindex(*w);
  j.touched.insert(w->address);
  std::vector<Worker*> others = sequence;
  others.insert(others.end(), sequence_guidance.begin(), sequence_guidance.end());
  if (peer) others.push_back(peer);
  for (Worker* o : others) {
    j.touched.insert(o->address);
    o->state = WorkerState::kBusy;
    o->job_id = j.id;
    Reindex(*o);
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
  for (const Worker* r : sequence) run.sequence.push_back({r->id, r->address, r->name});
  for (const Worker* r : sequence_guidance) run.sequence_guidance.push_back({r->id, r->address, r->name});
  for (const auto& name : InputsOf(s.kind, Model(j).image_conditioned)) run.inputs.push_back(RefFor(j, name));
  if (j.result_at > 0) {
    Emit(cmd::Metric{cmd::MetricKind::kDispatchSeconds, (now - j.result_at) / 1e6, {}, {}});
    j.result_at = 0;
  }
  Run& r = runs_[s.attempt] = Run{j.id, w->id, peer ? peer->id : "", index, s.attempt, false, {}};
  for (const Worker* o : sequence) r.sequence_ids.push_back(o->id);
  for (const Worker* o : sequence_guidance) r.sequence_ids.push_back(o->id);
  index_.AddRun(j.id, s.attempt);
  Touch(j);
  Emit(std::move(run));
}

}  // namespace reel::core
