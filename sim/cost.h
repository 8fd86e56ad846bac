// What simulated stages cost: seconds, weights, activations and output bytes by stage and job shape, shaped like
// the planner's cost model for CogVideoX-class stages on one GPU class (the text encoder a fixed cost, the denoiser
// per step and doubled by guidance, the VAE by frames); and the simulator's planner, which places stages the way
// the coordinator's plan does (encoders and decoder on one worker, the denoiser on the others), rotated by the
// coordinator's start so a restart brings a different placement.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "coordinator/cluster_state.h"
#include "coordinator/core_commands.h"

namespace reel::sim {

struct StageCost {
  double seconds = 0;
  int64_t weights = 0, activation = 0, output = 0;
};

// A guided denoise split across two workers takes this share of its time on one (half the compute, plus each
// step's exchange of the branch's output).
inline constexpr double kSplitShare = 0.55;

// A denoise shared by k workers with sequence parallelism takes this share of its time on one: its 1/k of the
// compute, plus the all-to-alls, which grow with k (so the best degree is neither 1 nor the most workers).
inline double SequenceShare(int k) { return 1.0 / k + 0.04 * (k - 1); }
inline constexpr int kMaxSequenceDegree = 8;

StageCost CostOf(StageKind kind, const core::JobShape& shape);
// The estimate the core is given (CoreOptions::estimate): the same table, at speed 1.
core::StageEstimate EstimateOf(StageKind kind, const core::JobShape& shape);

// variant < 0: every worker holds every stage.
std::map<std::string, core::Assignments> SimPlan(const std::vector<core::cmd::PlanWorker>& workers,
                                                 const std::map<std::string, core::ModelInfo>& models, int variant);

}  // namespace reel::sim
