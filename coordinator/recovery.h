// What a lost worker costs a job: which of its stages run again. Pure (no gRPC, no locks), so the coordinator's
// failure handling is tested in one process (tests/recovery_test.cc).
#pragma once

#include <set>
#include <string>
#include <vector>

#include "package/manifest.h"

namespace reel {

// The stages a stage reads the outputs of: the denoiser those of the text encoder (and, image-to-video, the VAE
// encoder), the decoder the denoiser's.
std::vector<StageKind> StageDependencies(StageKind k, bool image_conditioned);

// One stage of a live job as the coordinator sees it when a worker goes away.
struct StageView {
  StageKind kind = StageKind::kTextEncoder;
  std::string state;            // pending | running | done
  bool runs_on_gone = false;    // running with the gone worker as lead or guidance peer
  bool output_on_gone = false;  // done, and the gone worker holds its outputs
};

// The stage whose output a tensor is: "text", "image_moments", "latents", "video.mp4".
StageKind ProducerOf(const std::string& tensor);

// Whether stage `i`'s outputs are still to be read: by a stage that is not done, or, for the decoder's video, by
// the coordinator, which stores it before the job ends.
bool OutputNeeded(const std::vector<StageView>& stages, int i, bool image_conditioned);

// Indices of the stages to run again: those running on the gone worker; those done whose outputs it held while a
// stage not done yet still needs them (the decoder's video is needed until the job ends, so always); and then,
// transitively, running stages that read any of those (they wait for, or fetch from, a run that will not deliver)
// and done stages whose outputs the gone worker held and any of those reads again. Everything else keeps its result.
std::set<int> StagesToRerun(const std::vector<StageView>& stages, bool image_conditioned);

}  // namespace reel
