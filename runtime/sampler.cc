#include "runtime/sampler.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "common/error.h"
#include "runtime/scheduler.h"

namespace reel {

at::Generator JobGenerator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

torch::Tensor DiffusersNoise(at::IntArrayRef sizes, at::ScalarType dtype, at::Generator& gen, torch::Device device) {
  return torch::randn(sizes, gen, torch::TensorOptions(dtype)).to(device);
}

// The lines of CogVideoXDDIMScheduler.__init__ and rescale_zero_terminal_snr, with the same tensors: Python's
// `x ** 0.5` on floats is C's pow, `t ** 0.5` on tensors is torch's pow (a sqrt kernel), and the association of
// every product is diffusers' (they round differently otherwise).
torch::Tensor DiffusersAlphasCumprod(const SchedulerSpec& spec) {
  const int64_t n = spec.num_train_timesteps;
  torch::Tensor betas;
  if (spec.beta_schedule == "scaled_linear")
    betas = torch::linspace(std::pow(spec.beta_start, 0.5), std::pow(spec.beta_end, 0.5), n, torch::kFloat64).pow(2);
  else
    betas = torch::linspace(spec.beta_start, spec.beta_end, n, torch::kFloat32);
  torch::Tensor a = torch::cumprod(torch::rsub(betas, 1.0), 0);
  const double s = spec.snr_shift_scale;
  a = a / (s + (1 - s) * a);
  if (spec.rescale_betas_zero_snr) {
    torch::Tensor r = a.sqrt();
    const torch::Tensor r0 = r[0].clone(), rt = r[-1].clone();
    r -= rt;
    r *= r0 / (r0 - rt);
    a = r.pow(2);
  }
  return a;
}

std::unique_ptr<Sampler> Sampler::Make(const SchedulerSpec& spec, int steps) {
  if (spec.kind == "cogvideox_ddim") return std::make_unique<DdimSampler>(spec, steps);
  if (spec.kind == "cogvideox_dpm") return std::make_unique<DpmSampler>(spec, steps);
  throw BadPackage(fmt::format("scheduler kind '{}': accepted 'cogvideox_ddim' or 'cogvideox_dpm'", spec.kind));
}

Sampler::Sampler(const SchedulerSpec& spec, int steps)
    : spec_(spec), steps_(steps), timesteps_(DdimScheduler(spec).Timesteps(steps)) {
  alphas_ = DiffusersAlphasCumprod(spec);
  // diffusers: torch.tensor(1.0) (float32) or alphas_cumprod[0].
  final_alpha_ = spec.set_alpha_to_one ? torch::scalar_tensor(1.0, torch::kFloat32) : alphas_[0];
}

torch::Tensor Sampler::AlphaPrev(int t) const {
  const int prev = PrevTimestep(t);
  return prev >= 0 ? alphas_[prev] : final_alpha_;
}

torch::Tensor Sampler::PredictOriginal(const torch::Tensor& alpha, const torch::Tensor& model_output,
                                       const torch::Tensor& sample) const {
  const torch::Tensor beta = torch::rsub(alpha, 1);
  if (spec_.prediction_type == "v_prediction") return alpha.pow(0.5) * sample - beta.pow(0.5) * model_output;
  return (sample - beta.pow(0.5) * model_output) / alpha.pow(0.5);  // epsilon
}

torch::Tensor DdimSampler::Step(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                                at::Generator&) {
  const int t = timesteps_.at(i);
  const torch::Tensor at = Alpha(t), ap = AlphaPrev(t);
  const torch::Tensor x0 = PredictOriginal(at, model_output, sample);
  const torch::Tensor a = (torch::rsub(ap, 1) / torch::rsub(at, 1)).pow(0.5);
  const torch::Tensor b = ap.pow(0.5) - at.pow(0.5) * a;
  return a * sample + b * x0;
}

int DpmSampler::Draws(size_t i) const { return i == 0 || PrevTimestep(timesteps_.at(i)) < 0 ? 1 : 2; }

torch::Tensor DpmSampler::Step(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                               at::Generator& gen) {
  std::vector<torch::Tensor> noise;
  for (int k = 0; k < Draws(i); ++k)
    noise.push_back(DiffusersNoise(sample.sizes(), sample.scalar_type(), gen, sample.device()));
  return StepWithNoise(i, model_output, sample, noise);
}

// CogVideoXDPMScheduler.step with get_variables and get_mult inlined, line for line.
torch::Tensor DpmSampler::StepWithNoise(size_t i, const torch::Tensor& model_output, const torch::Tensor& sample,
                                        const std::vector<torch::Tensor>& noise) {
  if (static_cast<int>(noise.size()) != Draws(i))
    throw Internal(fmt::format("DPM step {} takes {} noise draws, given {}", i, Draws(i), noise.size()));
  const int t = timesteps_.at(i);
  const torch::Tensor at = Alpha(t), ap = AlphaPrev(t);
  const torch::Tensor x0 = PredictOriginal(at, model_output, sample);
  const torch::Tensor lamb = (at / torch::rsub(at, 1)).pow(0.5).log();
  const torch::Tensor lamb_next = (ap / torch::rsub(ap, 1)).pow(0.5).log();
  const torch::Tensor h = lamb_next - lamb;
  const torch::Tensor mult1 = (torch::rsub(ap, 1) / torch::rsub(at, 1)).pow(0.5) * (-h).exp();
  const torch::Tensor mult2 = (h * -2).expm1() * ap.pow(0.5);
  const torch::Tensor mult_noise = torch::rsub(ap, 1).pow(0.5) * torch::rsub((h * -2).exp(), 1).pow(0.5);
  torch::Tensor prev = mult1 * sample - mult2 * x0 + mult_noise * noise[0];
  if (noise.size() == 2) {
    // The second-order update with the previous step's x̂0 (diffusers' timestep_back is the previous timestep).
    const torch::Tensor ab = Alpha(timesteps_.at(i - 1));
    const torch::Tensor lamb_previous = (ab / torch::rsub(ab, 1)).pow(0.5).log();
    const torch::Tensor r = (lamb - lamb_previous) / h;
    const torch::Tensor mult3 = (r * 2).reciprocal() + 1;
    const torch::Tensor mult4 = (r * 2).reciprocal();
    const torch::Tensor denoised_d = mult3 * x0 - mult4 * old_original_;
    prev = mult1 * sample - mult2 * denoised_d + mult_noise * noise[1];
  }
  old_original_ = x0;
  return prev;
}

}  // namespace reel
