// The scheduler step that turns a guided prediction into the next latents, as diffusers' CogVideoXDDIMScheduler
// and CogVideoXDPMScheduler compute it: the same torch operations in the same order on the same dtypes (0-d float64
// coefficients, the sample in the latents' dtype), so equal inputs give equal bits (tests/sampler_parity_test.cc).
#pragma once

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "package/manifest.h"

namespace reel {

// The job's generator: torch.Generator("cpu").manual_seed(seed), whatever the device, as diffusers' examples seed it.
at::Generator JobGenerator(uint64_t seed);
// Noise as diffusers' randn_tensor draws it from a CPU generator: randn on the CPU in the dtype of the tensor it
// becomes (bf16 noise is not f32 noise rounded: it is another stream), then moved to `device`.
torch::Tensor DiffusersNoise(at::IntArrayRef sizes, at::ScalarType dtype, at::Generator& gen,
                             torch::Device device = torch::kCPU);

// alphas_cumprod as diffusers' CogVideoX schedulers build it: float64 for "scaled_linear", float32 for "linear",
// then the SNR shift and the zero-terminal-SNR rescale, op for op.
torch::Tensor DiffusersAlphasCumprod(const SchedulerSpec& spec);

class Sampler {
 public:
  // The sampler the checkpoint's scheduler names (SchedulerSpec::kind), for `steps` steps.
  static std::unique_ptr<Sampler> Make(const SchedulerSpec& spec, int steps);
  virtual ~Sampler() = default;

  const std::vector<int>& timesteps() const { return timesteps_; }
  // Step i: `model_output` is the guided prediction (float32), `sample` the latents in their dtype. Returns the
  // next latents in the dtype diffusers' step returns them (the caller casts them to the latents' dtype, as the
  // pipeline does). `gen` is the job's generator: the DPM sampler draws its noise term from it, as diffusers' step
  // draws from the pipeline's generator.
  virtual torch::Tensor Step(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                             at::Generator& gen) = 0;

 protected:
  Sampler(const SchedulerSpec& spec, int steps);
  // x̂0 from the prediction (v or ε) at ᾱ_t.
  torch::Tensor PredictOriginal(const torch::Tensor& alpha, const torch::Tensor& model_output,
                                const torch::Tensor& sample) const;
  // ᾱ at a timestep and at the step's previous timestep (final_alpha_cumprod past the end), as 0-d tensors.
  torch::Tensor Alpha(int t) const { return alphas_[t]; }
  torch::Tensor AlphaPrev(int t) const;
  int PrevTimestep(int t) const { return t - spec_.num_train_timesteps / steps_; }

  SchedulerSpec spec_;
  int steps_;
  std::vector<int> timesteps_;
  torch::Tensor alphas_, final_alpha_;
};

// CogVideoXDDIMScheduler with eta 0: x_prev = a·x_t + b·x̂0.
class DdimSampler : public Sampler {
 public:
  DdimSampler(const SchedulerSpec& spec, int steps) : Sampler(spec, steps) {}
  torch::Tensor Step(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                     at::Generator& gen) override;
};

// CogVideoXDPMScheduler: DPM-Solver++(2M) with an SDE noise term; from the second step on it extrapolates with the
// previous step's x̂0. Its noise is drawn from the job's generator as diffusers draws it: randn in the sample's
// shape and dtype, once on the first and last steps and twice on the others (the first draw of those steps feeds a
// first-order result diffusers discards, but it advances the generator all the same).
class DpmSampler : public Sampler {
 public:
  DpmSampler(const SchedulerSpec& spec, int steps) : Sampler(spec, steps) {}
  torch::Tensor Step(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                     at::Generator& gen) override;
  // The same step with its noise supplied: `noise` holds the step's draws in order (Draws(i) of them).
  torch::Tensor StepWithNoise(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                              const std::vector<torch::Tensor>& noise);
  int Draws(size_t i) const;

 private:
  torch::Tensor old_original_;  // the previous step's x̂0
};

}  // namespace reel
