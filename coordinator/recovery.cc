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

StageKind ProducerOf(const std::string& tensor) {
  if (tensor == "text") return StageKind::kTextEncoder;
  if (tensor == "image_moments") return StageKind::kVaeEncoder;
  if (tensor == "latents") return StageKind::kDenoiser;
  return StageKind::kVaeDecoder;
}

namespace {

bool Reads(const std::vector<StageView>& stages, int consumer, int producer, bool image_conditioned) {
  for (StageKind d : StageDependencies(stages[consumer].kind, image_conditioned))
    if (d == stages[producer].kind) return true;
  return false;
}

}  // namespace

bool OutputNeeded(const std::vector<StageView>& stages, int i, bool image_conditioned) {
  if (stages[i].kind == StageKind::kVaeDecoder) return true;
  for (int c = 0; c < static_cast<int>(stages.size()); ++c)
    if (Reads(stages, c, i, image_conditioned) && stages[c].state != "done") return true;
  return false;
}

std::set<int> StagesToRerun(const std::vector<StageView>& stages, bool image_conditioned) {
  const int n = static_cast<int>(stages.size());
  auto reads = [&](int consumer, int producer) { return Reads(stages, consumer, producer, image_conditioned); };
  std::set<int> rerun;
  for (int i = 0; i < n; ++i) {
    const StageView& s = stages[i];
    if (s.state == "running" && s.runs_on_gone) rerun.insert(i);
    if (s.state == "done" && s.output_on_gone && OutputNeeded(stages, i, image_conditioned)) rerun.insert(i);
  }
  // A running consumer of a stage that runs again waits for (or fetches from) the run that was given up; and a
  // stage that runs again reads its inputs again, so a done producer whose output was on the gone worker runs again
  // too, even if nothing needed that output before (the simulator found a job waiting forever for such a tensor).
  for (bool grew = true; grew;) {
    grew = false;
    for (int c = 0; c < n; ++c) {
      if (rerun.count(c)) continue;
      bool again = false;
      for (int x : rerun) {
        again = again || (stages[c].state == "running" && reads(c, x)) ||
                (stages[c].state == "done" && stages[c].output_on_gone && reads(x, c));
      }
      if (again) {
        rerun.insert(c);
        grew = true;
      }
    }
  }
  return rerun;
}

}  // namespace reel
