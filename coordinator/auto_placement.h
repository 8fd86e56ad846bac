// The coordinator's default placement: the planner's plan for the registered workers at each served model's
// default job shape, turned into the stages each worker holds and how (offload, dtype, VAE slicing/tiling).
// Free of gRPC services and LibTorch: the coordinator calls it, tests call it directly.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "package/manifest.h"
#include "planner/planning.h"
#include "planner/problem.h"
#include "profiler/stage_profile.h"
#include "reel/v1/types.pb.h"

namespace reel {

// A registered worker as the planner sees it.
struct WorkerSlot {
  std::string name, host;
  std::string device;  // cpu | cuda:N
  int64_t capacity_bytes = 0;  // 0: not limited
  int64_t host_memory_bytes = 0;
};

using StageAssignment = std::vector<std::pair<StageKind, reel::v1::StageStrategy>>;

struct AutoPlacement {
  std::map<std::string, std::map<std::string, StageAssignment>> workers;  // worker name → model → stages
  std::vector<std::string> notes;  // per model: the plan in one line, or why it fell back
};

// Devices (one per worker, kind cpu or cuda) on hosts (RAM: the largest any of its workers reported).
planner::Machine MachineOfWorkers(const std::vector<WorkerSlot>& workers, double margin);

// Plans each model in turn at its manifest's default job shape; a model planned later sees the device and host
// memory the earlier ones' plans use taken away. A model nothing fits for is placed on every worker with each
// stage's least-memory choice (a note says so), so its jobs run with OOM recovery rather than not at all.
AutoPlacement PlanPlacement(const std::map<std::string, Manifest>& models, const std::vector<WorkerSlot>& workers,
                            const std::vector<StageProfile>& profiles, planner::Objective objective, double margin,
                            const planner::PlanningOptions& options = {});

// A planner option ("block:2", "none+slicing+tiling=256"; dtype "bf16" or "int8") as a worker strategy.
reel::v1::StageStrategy StrategyOf(const planner::Option& option);

}  // namespace reel
