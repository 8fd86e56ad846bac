// CogVideoX's noise schedule (SNR shift, zero-terminal-SNR rescale) in plain double arithmetic, its timestep tables
// (shared by the DDIM and DPM schedulers) and the guidance scale of each step; runtime/sampler.h applies the steps.
#pragma once

#include <vector>

#include "package/manifest.h"

namespace reel {

// The classifier-free guidance scale of the step at `timestep` of `steps`: `guidance` itself, or with dynamic CFG
// diffusers' CogVideoX pipelines' 1 + g·(1 − cos(π·((N − t)/N)^5))/2, where t is the step's timestep (0..999, not its
// index: that is what diffusers computes, so (N − t)/N is negative and the scale oscillates; tests check it against
// diffusers itself).
double GuidanceScale(double guidance, bool dynamic, int steps, int timestep);

class DdimScheduler {
 public:
  explicit DdimScheduler(const SchedulerSpec& spec);
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  std::vector<int> Timesteps(int steps) const;

 private:
  SchedulerSpec spec_;
  std::vector<double> alphas_cumprod_;
};

}  // namespace reel
