// The simulator's invariants, checked after every core step and command and once at the end: every job ends
// exactly once (a succeeded one with its output) and a client's retried submission is one job; a stage never
// runs twice at once; dispatch follows the placement and the queue's order (higher priority first, FIFO within
// one); no worker goes over its memory (checked where runs start, world.cc); no tensor outlives its job; no job
// starves; the core's indexes agree with a scan of its state.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "coordinator/coordinator_core.h"
#include "sim/schedule.h"
#include "sim/world.h"

namespace reel::sim {

struct Holding {
  std::string worker, job;  // the worker holds tensors of the job
};

class Checker {
 public:
  explicit Checker(const Schedule& s) : schedule_(s) {}

  std::string AfterStep(const core::CoordinatorCore& c);
  std::string AtDispatch(const core::CoordinatorCore& c, const core::cmd::RunStage& run);
  std::string AtPersist(const std::map<std::string, core::Job>& store, const core::Job& j);
  std::string AtSubmitReply(size_t index, const std::string& request_id, const std::string& job);
  bool AllEnded(const std::map<size_t, std::string>& submitted) const;
  std::string AtEnd(const core::CoordinatorCore* c, const std::map<size_t, std::string>& submitted,
                    const std::vector<Holding>& holdings, bool past_horizon) const;
  void Count(Outcome* out) const;

 private:
  const Schedule& schedule_;
  std::map<std::string, core::JobState> ended_;       // job → how it ended, as first seen
  std::map<std::string, std::string> requests_;       // request id → the job its client was given
};

}  // namespace reel::sim
