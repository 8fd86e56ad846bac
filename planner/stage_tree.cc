// The stage-by-stage tree: one (device, option) per stage, depth first, fastest choices first, under the memory
// rules — the latency search, the throughput search's first plan, and the closest plan when nothing fits.
#include <algorithm>
#include <limits>

#include "planner/search_internal.h"

namespace reel::planner::internal {
namespace {

class Tree {
 public:
  Tree(const Rules& r, const Groups& g, Objective host_rule, TreeGoal goal, Budget& budget)
      : r_(r), g_(g), host_rule_(host_rule), goal_(goal), budget_(budget) {
    options_.resize(r.num_stages);
    suffix_min_.assign(r.num_stages + 1, 0);
    for (int s = r.num_stages - 1; s >= 0; --s) {
      double fastest = std::numeric_limits<double>::infinity();
      for (int d = 0; d < r.num_devices; ++d) {
        options_[s].push_back(UndominatedOptions(r, s, d));
        for (int o : options_[s][d]) fastest = std::min(fastest, r.Opt(s, d, o).seconds);
      }
      suffix_min_[s] = suffix_min_[s + 1] + fastest;
    }
    dev_.resize(r.num_devices);
    dev_stages_.assign(r.num_devices, 0);
    hold_.assign(r.num_hosts, 0);
    run_max_.assign(r.num_hosts, 0);
    run_sum_.assign(r.num_hosts, 0);
    pinned_.assign(r.num_hosts, 0);
    host_stages_.assign(r.num_hosts, 0);
    choice_.resize(r.num_stages);
  }

  TreeResult Run() {
    Visit(0, 0.0, 0);
    TreeResult t;
    t.found = found_;
    t.complete = !budget_.exhausted();
    t.choice = best_;
    return t;
  }

 private:
  struct Candidate {
    int device, option;
    double transfer, seconds;
  };

  int64_t HostUse(int h) const { return hold_[h] + (host_rule_ == Objective::kLatency ? run_max_[h] : run_sum_[h]); }

  // Bytes beyond the limits of device d and its host (0 when within).
  int64_t Over(int d) const {
    const int h = r_.host_of[d];
    int64_t over = std::max<int64_t>(0, dev_[d].peak() - r_.device_usable[d]);
    if (r_.host_usable[h] != kUnlimited) over = std::max(over, HostUse(h) - r_.host_usable[h]);
    if (r_.pinned_budget[h] != kUnlimited) over = std::max(over, pinned_[h] - r_.pinned_budget[h]);
    return over;
  }

  void Place(int s, int d, int o) {
    const Option& op = r_.Opt(s, d, o);
    const int h = r_.host_of[d];
    dev_[d].Add(op);
    ++dev_stages_[d];
    hold_[h] += op.host_bytes;
    run_max_[h] = std::max(run_max_[h], op.run_host_bytes);
    run_sum_[h] += op.run_host_bytes;
    pinned_[h] += op.pinned_bytes;
    ++host_stages_[h];
    choice_[s] = {d, o};
  }

  // Undo by recomputing device d and host h from the stages before s still placed (at most a few stages).
  void Unplace(int s, int d) {
    const int h = r_.host_of[d];
    --dev_stages_[d];
    --host_stages_[h];
    dev_[d] = {};
    hold_[h] = run_max_[h] = run_sum_[h] = pinned_[h] = 0;
    for (int p = 0; p < s; ++p) {
      const Replica& c = choice_[p];
      const Option& op = r_.Opt(p, c.device, c.option);
      if (c.device == d) dev_[d].Add(op);
      if (r_.host_of[c.device] == h) {
        hold_[h] += op.host_bytes;
        run_max_[h] = std::max(run_max_[h], op.run_host_bytes);
        run_sum_[h] += op.run_host_bytes;
        pinned_[h] += op.pinned_bytes;
      }
    }
  }

  // The devices worth trying for stage s: every device already used, and of the unused ones one per group of
  // interchangeable devices (same class on the same host, or on identical hosts that hold nothing yet).
  std::vector<int> Devices(int s) const {
    std::vector<int> out;
    std::vector<std::pair<int, int>> seen;
    for (int d = 0; d < r_.num_devices; ++d) {
      if (options_[s][d].empty()) continue;
      if (dev_stages_[d] == 0) {
        const int h = r_.host_of[d];
        const std::pair<int, int> key{g_.device_class[d], host_stages_[h] > 0 ? h : -1 - g_.host_class[h]};
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
      }
      out.push_back(d);
    }
    return out;
  }

  bool Better(double cost, int64_t peaks, int64_t over) const {
    if (!found_) return true;
    if (goal_ == TreeGoal::kLeastOverflow && over != best_over_) return over < best_over_;
    return CompareCost(cost, peaks, best_cost_, best_peaks_) < 0;
  }

  void Visit(int s, double cost, int64_t over) {
    if (s == r_.num_stages) {
      int64_t peaks = 0;
      for (const DeviceUse& u : dev_) peaks += u.peak();
      if (Better(cost, peaks, over)) {
        found_ = true;
        best_cost_ = cost;
        best_peaks_ = peaks;
        best_over_ = over;
        best_ = choice_;
      }
      return;
    }
    const int prev = s > 0 ? choice_[s - 1].device : -1;
    std::vector<Candidate> cands;
    for (int d : Devices(s))
      for (int o : options_[s][d])
        cands.push_back({d, o, prev >= 0 ? r_.TransferSeconds(s - 1, prev, d) : 0.0, r_.Opt(s, d, o).seconds});
    std::stable_sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
      return a.transfer + a.seconds < b.transfer + b.seconds;
    });
    for (const Candidate& c : cands) {
      if (!budget_.Spend()) return;
      const double next = cost + c.transfer + c.seconds;  // summed in the order ScoreReplicas sums
      const double bound = next + suffix_min_[s + 1];
      Place(s, c.device, c.option);
      const int64_t next_over = std::max(over, Over(c.device));
      int64_t peaks = 0;
      bool go = true;
      if (goal_ == TreeGoal::kLatency) {
        go = next_over == 0;
        if (go && found_) {
          for (const DeviceUse& u : dev_) peaks += u.peak();
          go = CompareCost(bound, peaks, best_cost_, best_peaks_) < 0;
        }
      } else if (found_) {
        // Overflow only grows as stages are added; among equal overflows the faster plan wins.
        go = next_over < best_over_ || (next_over == best_over_ && CompareCost(bound, 0, best_cost_, 0) < 0);
      }
      if (go) Visit(s + 1, next, next_over);
      Unplace(s, c.device);
    }
  }

  const Rules& r_;
  const Groups& g_;
  Objective host_rule_;
  TreeGoal goal_;
  Budget& budget_;
  std::vector<std::vector<std::vector<int>>> options_;  // [stage][device] undominated options
  std::vector<double> suffix_min_;                      // fastest seconds of stages s.. on any device
  std::vector<DeviceUse> dev_;
  std::vector<int> dev_stages_, host_stages_;
  std::vector<int64_t> hold_, run_max_, run_sum_, pinned_;
  std::vector<Replica> choice_, best_;
  bool found_ = false;
  double best_cost_ = 0;
  int64_t best_peaks_ = 0;
  int64_t best_over_ = 0;
};

}  // namespace

TreeResult StageTree(const Rules& rules, const Groups& groups, Objective host_rule, TreeGoal goal, Budget& budget) {
  return Tree(rules, groups, host_rule, goal, budget).Run();
}

}  // namespace reel::planner::internal
