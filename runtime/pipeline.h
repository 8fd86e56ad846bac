// Text/image-to-video generation in one process: tokenize, encode, denoise with CFG, decode.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "package/job_request.h"
#include "runtime/stage_package.h"

namespace reel {

struct Video {
  int frames = 0, height = 0, width = 0;
  std::vector<uint8_t> rgb;  // frames × height × width × 3
};

struct StageTimes {
  double text_encode = 0, image_encode = 0, denoise = 0, decode = 0;
};

struct GenerateHooks {
  std::function<void(int done, int total)> on_step;  // after each denoising step
};

// Runs the request (validated by the caller with ValidateRequest) on `package`. `image_rgb` is the
// conditioning image, already resized to height×width (empty for text-to-video).
Video Generate(const StagePackage& package, const GenerateRequest& request, const std::vector<uint8_t>& image_rgb,
               const GenerateHooks& hooks = {}, StageTimes* times = nullptr);

// Individual stages, for tests and for workers that run one stage of a job.
torch::Tensor EncodeText(const StagePackage& p, const torch::Tensor& ids, int batch);
torch::Tensor EncodeImage(const StagePackage& p, const torch::Tensor& image, const JobShape& shape);
torch::Tensor Denoise(const StagePackage& p, const torch::Tensor& latents, const torch::Tensor& text,
                      const torch::Tensor& timestep, const JobShape& shape);
torch::Tensor DecodeLatents(const StagePackage& p, const torch::Tensor& latents, const JobShape& shape);

}  // namespace reel
