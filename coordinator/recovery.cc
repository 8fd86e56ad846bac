#include "coordinator/recovery.h"

namespace reel {

std::vector<StageKind> StageDependencies(StageKind k, bool image_conditioned) {
  switch (k) {
    case StageKind::kDenoiser:
      return image_conditioned ? std::vector<StageKind>{StageKind::kTextEncoder, StageKind::kVaeEncoder}
                               : std::vector<StageKind>{StageKind::kTextEncoder};
    case StageKind::kVaeDecoder: return {StageKind::kDenoiser};
    default: return {};
  }
}

std::set<int> StagesToRerun(const std::vector<StageView>& stages, bool image_conditioned) {
  const int n = static_cast<int>(stages.size());
  auto reads = [&](int consumer, int producer) {
    for (StageKind d : StageDependencies(stages[consumer].kind, image_conditioned))
      if (d == stages[producer].kind) return true;
    return false;
  };
  std::set<int> rerun;
  for (int i = 0; i < n; ++i) {
    const StageView& s = stages[i];
    if (s.state == "running" && s.runs_on_gone) rerun.insert(i);
    if (s.state != "done" || !s.output_on_gone) continue;
    bool needed = s.kind == StageKind::kVaeDecoder;  // the coordinator has yet to store the video
    for (int c = 0; c < n; ++c) needed = needed || (reads(c, i) && stages[c].state != "done");
    if (needed) rerun.insert(i);
  }
  // A running consumer of a stage that runs again waits for (or fetches from) the run that was given up.
  for (bool grew = true; grew;) {
    grew = false;
    for (int c = 0; c < n; ++c) {
      if (rerun.count(c) || stages[c].state != "running") continue;
      for (int p : std::set<int>(rerun))
        if (reads(c, p)) {
          rerun.insert(c);
          grew = true;
          break;
        }
    }
  }
  return rerun;
}

}  // namespace reel
