// Search(): the stage tree for latency (and to seed throughput), the throughput search, then the explanations;
// plus the pieces both searches share: the budget, dominance among options and interchangeable devices.
#include "planner/search.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "planner/plan_rules.h"
#include "planner/search_internal.h"

namespace reel::planner {
namespace internal {

Budget::Budget(const SearchOptions& o)
    : max_nodes_(o.max_nodes), max_seconds_(o.max_seconds), start_(std::chrono::steady_clock::now()) {}

bool Budget::Spend() {
  if (exhausted_) return false;
  ++nodes_;
  if (max_nodes_ > 0 && nodes_ > max_nodes_) exhausted_ = true;
  // The clock is read every 1024 nodes: cheap enough, and fine-grained enough for limits of milliseconds.
  if (max_seconds_ > 0 && (nodes_ & 1023) == 0 &&
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() > max_seconds_)
    exhausted_ = true;
  return !exhausted_;
}

bool Budget::OutOfTime() const {
  return max_seconds_ > 0 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() > max_seconds_;
}

bool Dominates(const Option& a, const Option& b) {
  return a.seconds <= b.seconds && a.resident_device_bytes <= b.resident_device_bytes &&
         a.peak_device_bytes <= b.peak_device_bytes && a.host_bytes <= b.host_bytes &&
         a.pinned_bytes <= b.pinned_bytes && a.run_host_bytes <= b.run_host_bytes;
}

std::vector<int> UndominatedOptions(const Rules& r, int s, int d) {
  const int n = r.NumOptions(s, d);
  std::vector<int> keep;
  for (int i = 0; i < n; ++i) {
    bool dominated = false;
    for (int j = 0; j < n && !dominated; ++j) {
      if (j == i || !Dominates(r.Opt(s, d, j), r.Opt(s, d, i))) continue;
      // Of two identical options the first stays.
      dominated = j < i || !Dominates(r.Opt(s, d, i), r.Opt(s, d, j));
    }
    if (!dominated) keep.push_back(i);
  }
  std::stable_sort(keep.begin(), keep.end(),
                   [&](int a, int b) { return r.Opt(s, d, a).seconds < r.Opt(s, d, b).seconds; });
  return keep;
}

Groups FindGroups(const Rules& r) {
  Groups g;
  std::map<std::string, int> device_ids, host_ids;
  for (int d = 0; d < r.num_devices; ++d) {
    std::ostringstream key;
    key << std::hexfloat << r.device_usable[d];
    for (int s = 0; s < r.num_stages; ++s) {
      key << '|';
      for (int o = 0; o < r.NumOptions(s, d); ++o) {
        const Option& op = r.Opt(s, d, o);
        key << op.strategy << ',' << op.dtype << ',' << op.compute_dtype << ',' << op.resident_device_bytes << ','
            << op.peak_device_bytes << ',' << op.host_bytes << ',' << op.pinned_bytes << ',' << op.run_host_bytes << ','
            << op.seconds << ';';
      }
    }
    auto [it, added] = device_ids.emplace(key.str(), static_cast<int>(device_ids.size()));
    g.device_class.push_back(it->second);
  }
  g.num_device_classes = static_cast<int>(device_ids.size());
  for (int h = 0; h < r.num_hosts; ++h) {
    std::vector<int> classes;
    for (int d = 0; d < r.num_devices; ++d)
      if (r.host_of[d] == h) classes.push_back(g.device_class[d]);
    std::sort(classes.begin(), classes.end());
    std::ostringstream key;
    key << r.host_usable[h] << ',' << r.pinned_budget[h] << ':';
    for (int c : classes) key << c << ',';
    auto [it, added] = host_ids.emplace(key.str(), static_cast<int>(host_ids.size()));
    g.host_class.push_back(it->second);
  }
  g.num_host_classes = static_cast<int>(host_ids.size());
  return g;
}

Plan MakePlan(const Rules& r, Objective objective, const std::vector<std::vector<Replica>>& replicas) {
  Plan plan;
  plan.objective = objective;
  for (int s = 0; s < r.num_stages; ++s) {
    StagePlan sp;
    sp.stage = r.problem.stages[s].stage;
    if (s < static_cast<int>(replicas.size())) sp.replicas = replicas[s];
    plan.stages.push_back(std::move(sp));
  }
  ScorePlan(r.problem, plan);
  return plan;
}

}  // namespace internal

Plan Search(const Problem& problem, Objective objective, const SearchOptions& options) {
  using namespace internal;
  const Rules rules(problem);
  Plan plan;
  plan.objective = objective;
  if (rules.num_stages == 0) {
    plan.infeasible_reason = "the pipeline has no stages";
    return plan;
  }
  const Groups groups = FindGroups(rules);
  Budget budget(options);
  const TreeResult tree = StageTree(rules, groups, objective, TreeGoal::kLatency, budget);
  if (!tree.found) {
    if (tree.complete) {
      Budget reason_budget(options);
      plan.infeasible_reason = InfeasibleReason(rules, groups, objective, reason_budget);
    } else {
      plan.infeasible_reason =
          "the search budget (" + std::to_string(budget.nodes()) + " nodes) ran out before a plan that fits was found";
    }
    return plan;
  }
  bool complete = tree.complete;
  std::vector<std::vector<Replica>> replicas;
  if (objective == Objective::kLatency) {
    for (const Replica& r : tree.choice) replicas.push_back({r});
  } else {
    ThroughputResult t = ThroughputSearch(rules, groups, tree.choice, options.local_search, budget);
    replicas = std::move(t.replicas);
    complete = t.complete;
  }
  plan = MakePlan(rules, objective, replicas);
  plan.optimal = complete;
  ExplainRejected(rules, groups, plan, options.max_rejected_per_stage);
  return plan;
}

}  // namespace reel::planner
