// CogVideoX's DDIM scheduler (v-prediction, SNR shift, zero-terminal-SNR rescale, trailing spacing) in plain
// double arithmetic; the runtime applies each step as x_prev = c_sample·x_t + c_model·model_output.
#pragma once

#include <vector>

#include "package/manifest.h"

namespace reel {

struct DdimStep {
  int timestep = 0;
  int prev_timestep = 0;      // < 0 at the last step (ᾱ_prev = final_alpha_cumprod)
  double alpha_cumprod = 0;   // ᾱ_t
  double alpha_prev = 0;      // ᾱ_prev
  double c_sample = 0;        // coefficient of x_t in x_prev
  double c_model = 0;         // coefficient of the model output in x_prev
};

class DdimScheduler {
 public:
  explicit DdimScheduler(const SchedulerSpec& spec);
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  std::vector<int> Timesteps(int steps) const;
  std::vector<DdimStep> Plan(int steps) const;

 private:
  SchedulerSpec spec_;
  std::vector<double> alphas_cumprod_;
};

}  // namespace reel
