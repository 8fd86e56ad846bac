// The deterministic simulator: one thread, a virtual clock that jumps to the next event, simulated workers,
// clients and network around the real coordinator core (coordinator/coordinator_core.h), with the faults of a
// schedule injected and the invariants checked after every event. Every random choice flows from the schedule's
// seed, so a run replays byte for byte.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "coordinator/cluster_state.h"
#include "sim/schedule.h"

namespace reel::sim {

struct RunOptions {
  bool trace = false;         // keep every event and command as a line
  double horizon_s = 3600;    // a job not ended by then starved
};

struct Outcome {
  std::string violation;  // empty: every invariant held
  std::vector<std::string> trace;
  int64_t events = 0;     // core steps
  double sim_seconds = 0;
  int succeeded = 0, failed = 0, cancelled = 0;
  std::map<std::string, core::Job> jobs;  // as the coordinator last persisted them
  bool ok() const { return violation.empty(); }
};

Outcome Run(const Schedule& schedule, const RunOptions& options = {});

// A smaller schedule that fails the same way (the first line of its violation): faults, then jobs, then workers
// dropped one at a time while it still fails.
Schedule Shrink(const Schedule& failing, const RunOptions& options = {});

}  // namespace reel::sim
