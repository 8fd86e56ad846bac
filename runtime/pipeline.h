// Text/image-to-video generation in one process: tokenize, encode, denoise with CFG, decode; each stage placed
// on the device by its memory strategy and accounted by the device's memory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "common/error.h"
#include "package/job_request.h"
#include "runtime/offload.h"
#include "runtime/sequence_parallel.h"
#include "runtime/stage_executor.h"
#include "runtime/stage_package.h"
#include "runtime/vae_decode.h"

namespace reel {

struct Video {
  int frames = 0, height = 0, width = 0;
  std::vector<uint8_t> rgb;  // frames × height × width × 3
};

// A stage ran out of device memory (ErrorKind::kDeviceOutOfMemory): which one, with which strategy and weights.
class StageOutOfMemory : public Error {
 public:
  StageOutOfMemory(StageKind stage, std::string strategy, std::string weight_format, const std::string& message)
      : Error(ErrorKind::kDeviceOutOfMemory, message),
        stage_(stage),
        strategy_(std::move(strategy)),
        weight_format_(std::move(weight_format)) {}
  StageKind stage() const { return stage_; }
  const std::string& strategy() const { return strategy_; }
  const std::string& weight_format() const { return weight_format_; }

 private:
  StageKind stage_;
  std::string strategy_, weight_format_;
};

struct GenerateHooks {
  std::function<void(int done, int total)> on_step;  // after each denoising step
  std::function<bool()> cancelled;                    // checked before each step: true stops with Cancelled
};

// Guidance-parallel denoising: the unconditional branch of each step runs elsewhere. Called with the step's
// input latents [1, f, C, h, w] and timestep as the step starts; returns a function that waits for that branch's
// prediction, so both branches compute at once.
using GuidanceBranch =
    std::function<std::function<torch::Tensor()>(const torch::Tensor& input, int64_t timestep)>;

struct RunOptions {
  std::map<StageKind, Offload> offload;  // absent: none
  std::map<StageKind, DType> dtype;      // absent: the package's dtype
  std::map<StageKind, bool> int8;        // weights stored as int8 with per-channel scales
  VaeDecodeOptions vae;
  // The device the stages compute on (null: the simulated device).
  ComputeDevice* device = nullptr;
  // Initial noise drawn in float32 and cast to the latents' dtype (`reel generate --noise f32`): one seed gives the
  // same starting noise in every dtype, for comparing dtypes. Default: diffusers' draw in the latents' dtype (bf16
  // noise is another random stream), so one seed gives diffusers' video (docs/STAGE_PACKAGE.md, Sampling).
  bool f32_noise = false;
  // Sequence-parallel denoising (Ulysses): this process computes its share of the video tokens of every denoiser
  // block with the group's other ranks, which run the same request (null or size 1: the whole sequence here).
  SequenceGroup* sequence_group = nullptr;
  // Host bytes the weights may hold (0 = no limit). Over it, the text encoder's host weights are released after
  // it runs when that brings the rest under; otherwise the run is refused before it starts.
  int64_t host_budget = 0;
};

class Runtime {
 public:
  // Converts dtypes and places resident weights; throws DeviceOutOfMemory when they do not fit.
  Runtime(StagePackage& package, const RunOptions& options, RunObserver* observer = nullptr);
  ~Runtime();

  // Runs a request validated by ValidateRequest. `image_rgb` is the conditioning image resized to height×width
  // (empty for text-to-video).
  Video Generate(const GenerateRequest& request, const std::vector<uint8_t>& image_rgb,
                 const GenerateHooks& hooks = {});

  // The pipeline in the pieces a coordinator places on different workers; Generate is their composition.
  // Token ids [B, T]: [negative, positive] with guidance (> 1), [positive] without.
  torch::Tensor TextIds(const GenerateRequest& r) const;
  // Text embeddings [B, T, D] in the denoiser's input dtype, on the device.
  torch::Tensor EncodePrompt(const GenerateRequest& r);
  // The image encoder's moments [1, 2C, 1, h, w] for an image-to-video request.
  torch::Tensor EncodeImageMoments(const GenerateRequest& r, const std::vector<uint8_t>& image_rgb);
  // The denoising loop from the request's seed: returns the latents scaled for the decoder, [1, C, f, h, w].
  // `moments` is undefined for text-to-video. With `branch`, the unconditional half of each guided step runs
  // there and this runtime computes the conditional half (the result equals the batched step's).
  torch::Tensor DenoiseLatents(const GenerateRequest& r, const torch::Tensor& text, const torch::Tensor& moments,
                               const GenerateHooks& hooks = {}, const GuidanceBranch& branch = nullptr);
  // Decodes latents into RGB frames.
  Video DecodeVideo(const GenerateRequest& r, const torch::Tensor& z);
  // The job shape of a request (batch 1).
  JobShape ShapeOf(const GenerateRequest& r) const;

  // The sequence-parallel group the next denoising calls share their work with (null: none), as
  // RunOptions::sequence_group; the caller keeps it alive while they run.
  void SetSequenceGroup(SequenceGroup* group) { options_.sequence_group = group; }

  // Keeps a stage placed across several calls on this thread (a guidance branch serving step after step).
  void BeginStage(StageKind k);
  void EndStage(StageKind k);

  // Individual stages, each placed and released per its strategy around the call.
  torch::Tensor EncodeText(const torch::Tensor& ids, int batch);
  torch::Tensor EncodeImage(const torch::Tensor& image, const JobShape& shape);
  // `last_step`: no step follows in this stage use (a guidance branch's last), so block:K copies nothing in
  // behind the last block; a call that begins and ends the stage itself never does.
  torch::Tensor Denoise(const torch::Tensor& latents, const torch::Tensor& text, const torch::Tensor& timestep,
                        const JobShape& shape, bool last_step = false);
  torch::Tensor DecodeLatents(const torch::Tensor& latents, const JobShape& shape);

  const StagePackage& package() const { return package_; }
  ComputeDevice& device() { return device_; }
  StageExecutor& executor(StageKind k);
  std::map<StageKind, StageStats> stats() const;
  std::map<StageKind, std::string> strategies() const;
  std::map<StageKind, std::string> weight_formats() const;  // "f32", "bf16", "int8"
  int64_t host_weight_bytes() const;
  // The stage whose device memory ran out, if one did.
  std::optional<StageKind> failed_stage() const { return failed_stage_; }

 private:
  // `another_step`: the loop calls it again before the stage ends (block:K then copies block 0 in behind the last).
  torch::Tensor DenoiseStep(const torch::Tensor& latents, const torch::Tensor& text, const torch::Tensor& timestep,
                            const JobShape& shape, bool another_step);
  // The blocks and head of one step on this rank's share of the tokens (options_.sequence_group).
  torch::Tensor DenoiseShare(StageExecutor& e, torch::Tensor video, torch::Tensor txt, const torch::Tensor& emb,
                             torch::Tensor cos, torch::Tensor sin, int64_t f, int64_t h, int64_t w,
                             bool another_step);
  template <typename Fn>
  auto OnDevice(StageKind k, Fn&& fn);

  StagePackage& package_;
  RunOptions options_;
  ComputeDevice& device_;
  RunObserver* observer_;
  std::map<StageKind, std::unique_ptr<StageExecutor>> executors_;
  bool release_text_encoder_ = false;
  std::optional<StageKind> failed_stage_;
};

}  // namespace reel
