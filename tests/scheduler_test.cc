// The noise schedule against values computed by hand from CogVideoX's settings (see ../shared/COGVIDEOX.md §6), and
// the timestep tables against diffusers' CogVideoXDDIMScheduler itself (the project's Python environment); the steps
// themselves are checked against diffusers by sampler_parity_test.cc.
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "runtime/scheduler.h"

namespace reel {
namespace {

SchedulerSpec Spec(double snr_shift) {
  SchedulerSpec s;
  s.snr_shift_scale = snr_shift;
  return s;
}

// Independent reference: the formulas written out step by step for one index.
double ReferenceAlpha(int i, double s) {
  auto raw = [](int k) {
    double prod = 1.0;
    for (int j = 0; j <= k; ++j) {
      const double b = std::sqrt(0.00085) + (std::sqrt(0.012) - std::sqrt(0.00085)) * j / 999.0;
      prod *= 1.0 - b * b;
    }
    return prod;
  };
  auto shifted = [&](int k) { double a = raw(k); return a / (s + (1 - s) * a); };
  const double r0 = std::sqrt(shifted(0)), rt = std::sqrt(shifted(999)), r = std::sqrt(shifted(i));
  const double x = (r - rt) * r0 / (r0 - rt);
  return x * x;
}

TEST(Scheduler, AlphasMatchTheHandComputedValues) {
  const DdimScheduler s5(Spec(1.0));
  EXPECT_NEAR(s5.alphas_cumprod()[0], 0.99915, 1e-9);  // 1 - beta_start: unchanged by the rescale
  EXPECT_NEAR(s5.alphas_cumprod()[499], 0.2424, 5e-4);
  EXPECT_EQ(s5.alphas_cumprod()[999], 0.0);  // zero terminal SNR
  const DdimScheduler s2(Spec(3.0));
  EXPECT_NEAR(s2.alphas_cumprod()[0], 0.99745, 5e-5);
  EXPECT_NEAR(s2.alphas_cumprod()[499], 0.0960, 5e-4);
  for (int i : {0, 1, 250, 499, 750, 998, 999}) {
    EXPECT_NEAR(s5.alphas_cumprod()[i], ReferenceAlpha(i, 1.0), 1e-12) << i;
    EXPECT_NEAR(s2.alphas_cumprod()[i], ReferenceAlpha(i, 3.0), 1e-12) << i;
  }
  for (int i = 1; i < 1000; ++i) EXPECT_LT(s5.alphas_cumprod()[i], s5.alphas_cumprod()[i - 1]);
}

TEST(Scheduler, TrailingTimesteps) {
  const DdimScheduler s(Spec(1.0));
  const auto t50 = s.Timesteps(50);
  ASSERT_EQ(t50.size(), 50u);
  EXPECT_EQ(t50.front(), 999);
  EXPECT_EQ(t50[1], 979);
  EXPECT_EQ(t50[48], 39);
  EXPECT_EQ(t50.back(), 19);
  EXPECT_EQ(s.Timesteps(4), (std::vector<int>{999, 749, 499, 249}));
  // 1000/3 steps: round(1000, 666.67, 333.33) - 1
  EXPECT_EQ(s.Timesteps(3), (std::vector<int>{999, 666, 332}));
  EXPECT_EQ(s.Timesteps(1), (std::vector<int>{999}));
}

// diffusers' tables for every N from 1 to 250, "trailing" (CogVideoX's) and "linspace", from diffusers itself.
std::map<std::string, std::vector<int>> DiffusersTables() {
  const std::string cmd = std::string(REEL_PYTHON) + R"( -c '
from diffusers import CogVideoXDDIMScheduler
for spacing in ("trailing", "linspace"):
    s = CogVideoXDDIMScheduler(timestep_spacing=spacing, rescale_betas_zero_snr=True, snr_shift_scale=1.0)
    for n in range(1, 251):
        s.set_timesteps(n)
        print(spacing, n, *s.timesteps.tolist())
' 2>&1)";
  std::map<std::string, std::vector<int>> tables;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return tables;
  char line[8192];
  while (fgets(line, sizeof line, p)) {
    std::istringstream in(line);
    std::string spacing;
    int n = 0, t = 0;
    if (!(in >> spacing >> n)) continue;
    std::vector<int>& v = tables[spacing + " " + std::to_string(n)];
    while (in >> t) v.push_back(t);
  }
  pclose(p);
  return tables;
}

TEST(Scheduler, TimestepTablesAreDiffusersForEveryStepCountUpTo250) {
  const auto tables = DiffusersTables();
  ASSERT_EQ(tables.size(), 500u) << "diffusers did not answer through " << REEL_PYTHON;
  std::vector<int> extra;
  for (const char* spacing : {"trailing", "linspace"}) {
    SchedulerSpec spec = Spec(1.0);
    spec.timestep_spacing = spacing;
    const DdimScheduler s(spec);
    for (int n = 1; n <= 250; ++n) {
      std::vector<int> want = tables.at(std::string(spacing) + " " + std::to_string(n));
      SCOPED_TRACE(::testing::Message() << spacing << " N=" << n);
      // Where numpy's arange runs one entry long, that entry is -1: Reel runs the N steps asked for.
      if (static_cast<int>(want.size()) == n + 1) {
        EXPECT_EQ(want.back(), -1);
        want.pop_back();
        extra.push_back(n);
      }
      EXPECT_EQ(s.Timesteps(n), want);
    }
  }
  // The step counts up to 250 where diffusers' trailing table has N + 1 entries, the last -1.
  EXPECT_EQ(extra, (std::vector<int>{61, 103, 121, 122, 201, 206, 217, 223, 227, 233, 242, 244}));
}

}  // namespace
}  // namespace reel
