#include "runtime/scheduler.h"

#include <cmath>

namespace reel {

DdimScheduler::DdimScheduler(const SchedulerSpec& spec) : spec_(spec) {
  const int n = spec.num_train_timesteps;
  std::vector<double> betas(n);
  for (int i = 0; i < n; ++i) {
    const double f = static_cast<double>(i) / (n - 1);
    if (spec.beta_schedule == "scaled_linear") {
      const double b = std::sqrt(spec.beta_start) + (std::sqrt(spec.beta_end) - std::sqrt(spec.beta_start)) * f;
      betas[i] = b * b;
    } else {
      betas[i] = spec.beta_start + (spec.beta_end - spec.beta_start) * f;
    }
  }
  alphas_cumprod_.resize(n);
  double prod = 1.0;
  for (int i = 0; i < n; ++i) {
    prod *= 1.0 - betas[i];
    alphas_cumprod_[i] = prod;
  }
  // SNR shift (divides the SNR by s), then the zero-terminal-SNR rescale, in CogVideoX's order.
  const double s = spec.snr_shift_scale;
  for (double& a : alphas_cumprod_) a = a / (s + (1.0 - s) * a);
  if (spec.rescale_betas_zero_snr) {
    const double r0 = std::sqrt(alphas_cumprod_.front());
    const double rt = std::sqrt(alphas_cumprod_.back());
    for (double& a : alphas_cumprod_) {
      const double r = (std::sqrt(a) - rt) * r0 / (r0 - rt);
      a = r * r;
    }
  }
}

// The tables diffusers' CogVideoXDDIMScheduler.set_timesteps makes with numpy, value for value: numpy's arange and
// linspace round differently from the textbook formulas (checked for every N from 1 to 250 against diffusers
// itself by tests/scheduler_test.cc).
std::vector<int> DdimScheduler::Timesteps(int steps) const {
  const int n = spec_.num_train_timesteps;
  std::vector<int> t;
  if (spec_.timestep_spacing == "trailing") {
    // np.round(np.arange(n, 0, -n/steps)) - 1. numpy's arange fills x[i] = start + i·delta with delta recomputed
    // as (start + step) - start, so some entries round the other way than n - i·n/steps would. Where its length,
    // ceil(n / (n/steps)), comes out steps + 1 (12 step counts up to 250 at n = 1000: 61, 103, 121, ...), the extra entry is
    // round(~0) - 1 = -1, not a timestep: diffusers runs it as an extra step on alphas_cumprod[-1]; Reel runs the
    // steps asked for and drops it (docs/STAGE_PACKAGE.md).
    const double start = n, step = -static_cast<double>(n) / steps;
    const double delta = (start + step) - start;
    for (int i = 0; i < steps; ++i) {
      const double x = i == 1 ? start + step : start + i * delta;
      t.push_back(static_cast<int>(std::nearbyint(x)) - 1);  // numpy rounds half to even, as nearbyint does
    }
  } else if (spec_.timestep_spacing == "leading") {
    const int ratio = n / steps;
    for (int i = steps - 1; i >= 0; --i) t.push_back(i * ratio);
  } else {  // linspace: np.linspace(0, n - 1, steps).round()[::-1]: x[i] = i·((n-1)/(steps-1)), the last exactly n-1
    const double step = steps > 1 ? static_cast<double>(n - 1) / (steps - 1) : 0.0;
    for (int i = steps - 1; i >= 0; --i)
      t.push_back(i == steps - 1 && steps > 1 ? n - 1 : static_cast<int>(std::nearbyint(i * step)));
  }
  return t;
}

double GuidanceScale(double guidance, bool dynamic, int steps, int timestep) {
  if (!dynamic) return guidance;
  // Python's float ** 5.0 and math.cos are C's pow and cos: the same libm gives the same bits.
  const double x = static_cast<double>(steps - timestep) / steps;
  return 1 + guidance * ((1 - std::cos(M_PI * std::pow(x, 5.0))) / 2);
}

}  // namespace reel
