#include "sim/cost.h"

#include <algorithm>

namespace reel::sim {

StageCost CostOf(StageKind kind, const core::JobShape& shape) {
  const double frames = shape.frames > 0 ? shape.frames / 9.0 : 1.0;
  const int64_t gib = int64_t{1} << 30, mib = int64_t{1} << 20;
  switch (kind) {
    case StageKind::kTextEncoder: return {0.3, 2 * gib, 256 * mib, 1 * mib};
    case StageKind::kVaeEncoder: return {0.4 * frames, gib / 2, static_cast<int64_t>(gib * frames), 4 * mib};
    case StageKind::kDenoiser:
      return {0.25 * shape.steps * frames * (shape.guided() ? 2 : 1), 4 * gib, static_cast<int64_t>(2 * gib * frames),
              8 * mib};
    case StageKind::kVaeDecoder: return {1.0 * frames, gib, static_cast<int64_t>(3 * gib * frames), 2 * mib};
  }
  return {};
}

core::StageEstimate EstimateOf(StageKind kind, const core::JobShape& shape) {
  const StageCost c = CostOf(kind, shape);
  core::StageEstimate e{c.seconds, kind == StageKind::kDenoiser && shape.guided() ? c.seconds * kSplitShare : 0.0, {}};
  if (kind == StageKind::kDenoiser)
    for (int k = 2; k <= kMaxSequenceDegree; ++k) {
      e.sequence_seconds.push_back(c.seconds * SequenceShare(k));
      // With the guided batch split besides: k ranks and k guidance peers.
      if (shape.guided() && 2 * k <= kMaxSequenceDegree)
        e.sequence_split_seconds.push_back(c.seconds * kSplitShare * SequenceShare(k));
    }
  return e;
}

std::map<std::string, core::Assignments> SimPlan(const std::vector<core::cmd::PlanWorker>& workers,
                                                 const std::map<std::string, core::ModelInfo>& models, int variant) {
  std::map<std::string, core::Assignments> out;
  const size_t n = workers.size();
  if (n == 0) return out;
  for (size_t i = 0; i < n; ++i) {
    const std::string& name = workers[(i + static_cast<size_t>(std::max(variant, 0))) % n].name;
    for (const auto& [model, info] : models) {
      core::Assignment& a = out[name][model];
      for (StageKind k : info.stages) {
        const bool encoder = k != StageKind::kDenoiser;
        // One worker: everything. Two or three: the first encodes and decodes, the rest denoise. Four or more: the
        // second encodes and decodes too.
        const bool encodes = variant < 0 || n == 1 || i == 0 || (n >= 4 && i == 1);
        const bool denoises = variant < 0 || n == 1 || i != 0;
        if (encoder ? encodes : denoises) a.push_back({k, {}});
      }
    }
  }
  return out;
}

}  // namespace reel::sim
