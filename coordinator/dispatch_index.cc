// The core's indexes (dispatch_index.h): kept in step with the state by the core, and checked against a scan.
#include "coordinator/dispatch_index.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "coordinator/recovery.h"

namespace reel::core {

namespace {

template <typename Maps, typename K>
void EraseIn(Maps& maps, const K& key, const typename Maps::mapped_type::key_type& inner) {
  auto it = maps.find(key);
  if (it == maps.end()) return;
  it->second.erase(inner);
  if (it->second.empty()) maps.erase(it);  // empty sets go, so a scan and the index compare equal
}

// StageDependencies, computed once per (stage, image-conditioned): every job update asks.
const std::vector<StageKind>& Dependencies(StageKind k, bool image_conditioned) {
  static const auto table = [] {
    std::array<std::array<std::vector<StageKind>, 2>, 4> t;
    for (int kind = 0; kind < 4; ++kind)
      for (int i2v = 0; i2v < 2; ++i2v) t[kind][i2v] = StageDependencies(static_cast<StageKind>(kind), i2v == 1);
    return t;
  }();
  return table.at(static_cast<size_t>(k))[image_conditioned ? 1 : 0];
}

}  // namespace

// ---- jobs ----

std::vector<DispatchIndex::JobEntry> DispatchIndex::EntriesOf(const Job& j, bool dispatchable,
                                                              bool image_conditioned) {
  std::vector<JobEntry> out;
  if (!dispatchable) return out;
  for (size_t i = 0; i < j.stages.size(); ++i) {
    if (j.stages[i].state != StageState::kPending) continue;
    bool all_done = true, all_started = true;
    for (StageKind d : Dependencies(j.stages[i].kind, image_conditioned))
      for (const auto& other : j.stages)
        if (other.kind == d) {
          all_done = all_done && other.state == StageState::kDone;
          all_started = all_started && (other.state == StageState::kDone || other.state == StageState::kRunning);
        }
    if (!all_done && !all_started) continue;
    out.push_back({!all_done, {j.shape.model, j.stages[i].kind}, {-j.priority, j.seq, static_cast<int>(i)}});
  }
  return out;
}

void DispatchIndex::UpdateJob(Job& j, bool dispatchable, bool image_conditioned) {
  std::vector<JobEntry> now = EntriesOf(j, dispatchable, image_conditioned);
  auto found = of_job_.find(j.id);
  if (found == of_job_.end() && now.empty()) return;
  std::vector<JobEntry>& was = found != of_job_.end() ? found->second : of_job_[j.id];
  for (const JobEntry& e : was)
    if (std::find(now.begin(), now.end(), e) == now.end()) {
      EraseIn(e.early ? early_ : ready_, e.key, e.place);
      if (auto d = e.early ? deferred_.find({e.key, e.place}) : deferred_.end(); d != deferred_.end()) {
        due_.erase({d->second.first, e.key, e.place});
        deferred_.erase(d);
      }
    }
  for (const JobEntry& e : now)
    if (std::find(was.begin(), was.end(), e) == was.end()) (e.early ? early_ : ready_)[e.key][e.place] = {&j, pass_};
  if (now.empty()) {
    of_job_.erase(j.id);
  } else {
    was = std::move(now);
  }
}

void DispatchIndex::Defer(const Key& k, const Place& p, Micros from) {
  auto stages = early_.find(k);
  if (stages == early_.end()) return;
  auto it = stages->second.find(p);
  if (it == stages->second.end()) return;
  deferred_[{k, p}] = {from, it->second.job};
  due_.insert({from, k, p});
  stages->second.erase(it);
  if (stages->second.empty()) early_.erase(stages);
}

bool DispatchIndex::Promote(Micros now) {
  bool any = false;
  while (!due_.empty() && std::get<0>(*due_.begin()) <= now) {
    const auto [from, key, place] = *due_.begin();
    due_.erase(due_.begin());
    auto d = deferred_.find({key, place});
    early_[key][place] = {d->second.second, pass_};
    deferred_.erase(d);
    any = true;
  }
  return any;
}

size_t DispatchIndex::ReadyCount(const Key& k) const {
  auto it = ready_.find(k);
  return it == ready_.end() ? 0 : it->second.size();
}

// ---- workers ----

void DispatchIndex::SetAvailable(const std::string& id, WorkerEntry& e, bool available) {
  if (e.available == available) return;
  e.available = available;
  if (available) {
    idle_.insert(id);
    for (const Key& k : e.holds) available_[k].insert({e.stages_run, id});
  } else {
    idle_.erase(id);
    for (const Key& k : e.holds) EraseIn(available_, k, {e.stages_run, id});
  }
}

void DispatchIndex::RemoveWorker(const std::string& id) {
  auto it = of_worker_.find(id);
  if (it == of_worker_.end()) return;
  WorkerEntry& e = it->second;
  SetAvailable(id, e, false);
  if (e.leased) leases_.erase({e.heartbeat, id});
  if (auto n = by_name_.find(e.name); n != by_name_.end() && n->second == id) by_name_.erase(n);
  of_worker_.erase(it);
}

// In place, touching only what changed: a worker changes state on every run it starts and ends.
void DispatchIndex::UpdateWorker(const Worker& w, bool holds_changed) {
  auto [it, added] = of_worker_.try_emplace(w.id);
  WorkerEntry& e = it->second;
  if (added) {
    e.name = w.name;
    e.holds = w.holds;
    by_name_[w.name] = w.id;
  }
  const bool available = w.state == WorkerState::kIdle && !w.suspect;
  holds_changed = holds_changed && e.holds != w.holds;
  if (e.stages_run != w.stages_run || holds_changed) {
    SetAvailable(w.id, e, false);
    e.stages_run = w.stages_run;
    if (holds_changed) e.holds = w.holds;
  }
  SetAvailable(w.id, e, available);
  const bool leased = w.state != WorkerState::kLost;
  if (e.leased != leased || e.heartbeat != w.last_heartbeat) {
    if (e.leased) leases_.erase({e.heartbeat, w.id});
    e.leased = leased;
    e.heartbeat = w.last_heartbeat;
    if (e.leased) leases_.insert({e.heartbeat, w.id});
  }
}

const DispatchIndex::Idle* DispatchIndex::Available(const Key& k) const {
  auto it = available_.find(k);
  return it == available_.end() ? nullptr : &it->second;
}

const std::string* DispatchIndex::IdOf(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &it->second;
}

std::vector<std::string> DispatchIndex::Expired(Micros before) const {
  std::vector<std::string> out;
  for (auto it = leases_.begin(); it != leases_.end() && it->first < before; ++it) out.push_back(it->second);
  std::sort(out.begin(), out.end());
  return out;
}

// ---- runs ----

void DispatchIndex::RemoveRun(const std::string& job, uint64_t attempt) { EraseIn(runs_of_, job, attempt); }

const std::set<uint64_t>& DispatchIndex::RunsOf(const std::string& job) const {
  static const std::set<uint64_t> none;
  auto it = runs_of_.find(job);
  return it == runs_of_.end() ? none : it->second;
}

// ---- the check ----

std::string DispatchIndex::Mismatch(const std::map<std::string, Job>& jobs,
                                    const std::map<std::string, Worker>& workers, const std::map<uint64_t, Run>& runs,
                                    const std::map<std::string, ModelInfo>& models, bool draining) const {
  DispatchIndex scan;
  for (const auto& [id, j] : jobs) {
    const bool live = !Terminal(j.state);
    const bool dispatchable = live && !(draining && j.state == JobState::kQueued);
    auto m = models.find(j.shape.model);
    scan.UpdateJob(const_cast<Job&>(j), dispatchable && m != models.end(),
                   m != models.end() && m->second.image_conditioned);
  }
  for (const auto& [id, w] : workers) scan.UpdateWorker(w, true);
  for (const auto& [attempt, r] : runs) scan.AddRun(r.job, attempt);
  auto same_stages = [](const std::map<Key, Stages>& a, const std::map<Key, Stages>& b) {
    if (a.size() != b.size()) return false;
    for (auto x = a.begin(), y = b.begin(); x != a.end(); ++x, ++y) {
      if (x->first != y->first || x->second.size() != y->second.size()) return false;
      for (auto p = x->second.begin(), q = y->second.begin(); p != x->second.end(); ++p, ++q)
        if (p->first != q->first || p->second.job != q->second.job) return false;
    }
    return true;
  };
  if (!same_stages(ready_, scan.ready_)) return "the index of ready stages differs from the jobs' stages";
  // Early stages dispatch set aside are counted with the early index: together they are the scan's.
  std::map<Key, Stages> early = early_;
  for (const auto& [at, d] : deferred_) early[at.first][at.second] = {d.second, 0};
  if (!same_stages(early, scan.early_)) return "the index of early stages differs from the jobs' stages";
  for (const auto& [at, d] : deferred_)
    if (!due_.count({d.first, at.first, at.second})) return "a deferred early stage is missing from the due times";
  if (due_.size() != deferred_.size()) return "the due times of deferred early stages differ from them";
  if (available_ != scan.available_ || idle_ != scan.idle_) return "the index of idle workers differs from theirs";
  if (by_name_ != scan.by_name_) return "the index of workers by name differs from the workers";
  if (leases_ != scan.leases_) return "the index of leases differs from the workers' heartbeats";
  if (runs_of_ != scan.runs_of_) return "the index of runs by job differs from the runs";
  return "";
}

}  // namespace reel::core
