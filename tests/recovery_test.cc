// Which stages of a job run again when a worker goes away (coordinator/recovery.h), in one process: the running
// stage it took with it, results it held that are still needed, and running stages that wait for either.
#include "coordinator/recovery.h"

#include <gtest/gtest.h>

namespace reel {
namespace {

constexpr StageKind kText = StageKind::kTextEncoder, kImage = StageKind::kVaeEncoder, kDit = StageKind::kDenoiser,
                    kVae = StageKind::kVaeDecoder;

StageView S(StageKind k, const std::string& state, bool runs_on_gone = false, bool output_on_gone = false) {
  StageView v;
  v.kind = k;
  v.state = state;
  v.runs_on_gone = runs_on_gone;
  v.output_on_gone = output_on_gone;
  return v;
}

TEST(Recovery, TheStageRunningOnTheGoneWorkerRunsAgainAndItsWaitingConsumerWithIt) {
  // Text done elsewhere; the denoiser ran on the gone worker; the decoder was dispatched early and waits for it.
  EXPECT_EQ(StagesToRerun({S(kText, "done"), S(kDit, "running", true), S(kVae, "running")}, false),
            (std::set<int>{1, 2}));
  // A decoder not dispatched yet is simply dispatched later, to wherever the latents will be.
  EXPECT_EQ(StagesToRerun({S(kText, "done"), S(kDit, "running", true), S(kVae, "pending")}, false),
            (std::set<int>{1}));
}

TEST(Recovery, AResultOnTheGoneWorkerRunsAgainOnlyWhileItIsStillNeeded) {
  // The text is still to be read by the denoiser, which fetches it now: both run again.
  EXPECT_EQ(StagesToRerun({S(kText, "done", false, true), S(kDit, "running"), S(kVae, "pending")}, false),
            (std::set<int>{0, 1}));
  // Already read: nothing to do, the job goes on.
  EXPECT_EQ(StagesToRerun({S(kText, "done", false, true), S(kDit, "done"), S(kVae, "running")}, false),
            (std::set<int>{}));
  // The decoder's video is needed until the coordinator has stored it.
  EXPECT_EQ(StagesToRerun({S(kText, "done"), S(kDit, "done"), S(kVae, "done", false, true)}, false),
            (std::set<int>{2}));
  // Latents on the gone worker, the decoder waiting for them elsewhere.
  EXPECT_EQ(StagesToRerun({S(kText, "done"), S(kDit, "done", false, true), S(kVae, "running")}, false),
            (std::set<int>{1, 2}));
}

TEST(Recovery, ImageToVideoDenoisingReadsBothEncoders) {
  const std::vector<StageView> job = {S(kText, "done"), S(kImage, "done", false, true), S(kDit, "pending"),
                                      S(kVae, "pending")};
  EXPECT_EQ(StagesToRerun(job, true), (std::set<int>{1}));
  EXPECT_TRUE(OutputNeeded(job, 1, true));
  EXPECT_FALSE(OutputNeeded(job, 1, false));  // text-to-video models have no image input
}

TEST(Recovery, AJobTheGoneWorkerHadNoPartInIsLeftAlone) {
  EXPECT_TRUE(StagesToRerun({S(kText, "done"), S(kDit, "running"), S(kVae, "running")}, false).empty());
  EXPECT_TRUE(StagesToRerun({S(kText, "pending"), S(kDit, "pending"), S(kVae, "pending")}, false).empty());
}

TEST(Recovery, TensorNamesTellTheirProducer) {
  EXPECT_EQ(ProducerOf("text"), kText);
  EXPECT_EQ(ProducerOf("image_moments"), kImage);
  EXPECT_EQ(ProducerOf("latents"), kDit);
  EXPECT_EQ(ProducerOf("video.mp4"), kVae);
}

}  // namespace
}  // namespace reel
