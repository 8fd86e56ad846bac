// The reference search: every assignment in index order, judged by the shared rules (plan_rules.h), no pruning
// beyond memory limits. Exponential — the tests hold the real search to it on small instances.
#include <functional>

#include "planner/plan_rules.h"
#include "planner/search.h"
#include "planner/search_internal.h"

namespace reel::planner {

Plan ExhaustiveSearch(const Problem& problem, Objective objective) {
  const Rules r(problem);
  const int S = r.num_stages, D = r.num_devices;
  std::vector<std::vector<Replica>> cur(S), best;
  double best_cost = 0;
  int64_t best_peaks = 0;
  bool found = false;
  auto leaf = [&] {
    for (const auto& reps : cur)
      if (reps.empty()) return;
    const Score sc = ScoreReplicas(r, cur, objective);
    if (!sc.fits) return;
    const double cost = CostOf(sc, objective);
    if (!found || CompareCost(cost, sc.sum_device_peaks, best_cost, best_peaks) < 0) {
      found = true;
      best = cur;
      best_cost = cost;
      best_peaks = sc.sum_device_peaks;
    }
  };

  if (S > 0 && objective == Objective::kLatency) {
    // One (device, option) per stage.
    std::function<void(int)> stage = [&](int s) {
      if (s == S) return leaf();
      for (int d = 0; d < D; ++d)
        for (int o = 0; o < r.NumOptions(s, d); ++o) {
          cur[s] = {{d, o}};
          stage(s + 1);
        }
      cur[s].clear();
    };
    stage(0);
  } else if (S > 0) {
    // Each device holds, per stage, nothing or one of its options; a device's own memory is checked as it is
    // chosen (a limit of that device alone), everything else at the leaf.
    std::vector<std::vector<std::vector<int>>> configs(D);  // [device][config] -> option per stage or -1
    for (int d = 0; d < D; ++d) {
      std::vector<int> c(S, -1);
      std::function<void(int)> each = [&](int s) {
        if (s == S) {
          DeviceUse use;
          for (int t = 0; t < S; ++t)
            if (c[t] >= 0) use.Add(r.Opt(t, d, c[t]));
          if (use.peak() <= r.device_usable[d]) configs[d].push_back(c);
          return;
        }
        for (int o = -1; o < r.NumOptions(s, d); ++o) {
          c[s] = o;
          each(s + 1);
        }
      };
      each(0);
    }
    std::function<void(int)> device = [&](int d) {
      if (d == D) return leaf();
      for (const std::vector<int>& c : configs[d]) {
        for (int s = 0; s < S; ++s)
          if (c[s] >= 0) cur[s].push_back({d, c[s]});
        device(d + 1);
        for (int s = 0; s < S; ++s)
          if (c[s] >= 0) cur[s].pop_back();
      }
    };
    device(0);
  }

  if (!found) {
    Plan plan;
    plan.objective = objective;
    plan.infeasible_reason = S == 0 ? "the pipeline has no stages" : "no assignment fits (exhaustive search)";
    return plan;
  }
  Plan plan = internal::MakePlan(r, objective, best);
  plan.optimal = true;
  return plan;
}

}  // namespace reel::planner
