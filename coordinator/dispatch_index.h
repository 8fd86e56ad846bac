// The coordinator core's indexes over its own state, so that an event costs what it changes rather than the size
// of the cluster or the queue: stages ready (or ready early) by (model, stage) in dispatch order, idle workers by
// what they hold, workers by name, leases by last heartbeat, runs by job. The core updates them where it changes
// a job or a worker; Mismatch() recomputes them from the state by scanning it (the simulator checks after every
// event that both agree).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/cluster_state.h"

namespace reel::core {

class DispatchIndex {
 public:
  using Key = std::pair<std::string, StageKind>;  // (model, stage)
  // Dispatch order: higher priority first, then submission order, then pipeline order.
  struct Place {
    int64_t neg_priority = 0, seq = 0;
    int index = 0;
    auto operator<=>(const Place&) const = default;
  };
  struct Entry {
    Job* job = nullptr;
    uint64_t pass = 0;  // the early pass it was added in (Dispatch skips those it added itself)
  };
  using Stages = std::map<Place, Entry>;
  using Idle = std::set<std::pair<int64_t, std::string>>;  // (stages run, id): the order dispatch prefers

  // ---- jobs ----
  // Recomputes where the job's pending stages stand: ready (every input exists) or early (every input is being
  // produced or exists); `dispatchable` false (ended, or queued while draining) takes it out.
  void UpdateJob(Job& j, bool dispatchable, bool image_conditioned);
  const std::map<Key, Stages>& ready() const { return ready_; }
  const std::map<Key, Stages>& early() const { return early_; }
  size_t ReadyCount(const Key& k) const;
  // An early pass begins: stages that become early during it wait for the next dispatch.
  uint64_t BeginEarlyPass() { return ++pass_; }
  // An early stage leaves the early index until `from` (dispatch chose not to send it yet), so that later passes
  // do not look at it again before then.
  void Defer(const Key& k, const Place& p, Micros from);
  // Deferred stages whose time has come join the early index again; true if any did.
  bool Promote(Micros now);
  // When the next deferred stage falls due; 0: none is deferred.
  Micros NextDue() const { return due_.empty() ? 0 : std::get<0>(*due_.begin()); }

  // ---- workers ----
  // `holds_changed`: what it holds may differ from the last update (compared only then: most updates are a run
  // starting or ending).
  void UpdateWorker(const Worker& w, bool holds_changed = false);
  void RemoveWorker(const std::string& id);
  // Idle, not suspect and holding k; null: none.
  const Idle* Available(const Key& k) const;
  bool AnyIdle() const { return !idle_.empty(); }
  const std::string* IdOf(const std::string& name) const;
  // Ids of workers not lost whose last heartbeat is before `before`, in id order.
  std::vector<std::string> Expired(Micros before) const;

  // ---- runs ----
  void AddRun(const std::string& job, uint64_t attempt) { runs_of_[job].insert(attempt); }
  void RemoveRun(const std::string& job, uint64_t attempt);
  const std::set<uint64_t>& RunsOf(const std::string& job) const;

  // What differs from the indexes recomputed from scratch; empty when they agree.
  std::string Mismatch(const std::map<std::string, Job>& jobs, const std::map<std::string, Worker>& workers,
                       const std::map<uint64_t, Run>& runs, const std::map<std::string, ModelInfo>& models,
                       bool draining) const;

 private:
  struct JobEntry {
    bool early;
    Key key;
    Place place;
    bool operator==(const JobEntry&) const = default;
  };
  struct WorkerEntry {
    std::string name;
    bool available = false;
    int64_t stages_run = 0;
    std::set<Key> holds;  // as the worker's
    bool leased = false;
    Micros heartbeat = 0;
  };
  void SetAvailable(const std::string& id, WorkerEntry& e, bool available);
  static std::vector<JobEntry> EntriesOf(const Job& j, bool dispatchable, bool image_conditioned);

  std::map<Key, Stages> ready_, early_;
  std::map<std::pair<Key, Place>, std::pair<Micros, Job*>> deferred_;  // early stages set aside, until when
  std::set<std::tuple<Micros, Key, Place>> due_;                       // the same, by when
  // Looked up by id, never walked in order: hashed.
  std::unordered_map<std::string, std::vector<JobEntry>> of_job_;
  uint64_t pass_ = 0;
  std::map<Key, Idle> available_;
  std::set<std::string> idle_;  // idle and not suspect
  std::unordered_map<std::string, std::string> by_name_;
  std::set<std::pair<Micros, std::string>> leases_;  // (last heartbeat, id) of workers not lost
  std::unordered_map<std::string, WorkerEntry> of_worker_;
  std::unordered_map<std::string, std::set<uint64_t>> runs_of_;
};

}  // namespace reel::core
