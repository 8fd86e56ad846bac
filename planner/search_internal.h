// Pieces the placement searches share (not part of the planner's interface): the budget, dominance among options,
// groups of interchangeable devices and hosts, the stage-by-stage tree, and the explanations.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "planner/plan_rules.h"
#include "planner/problem.h"
#include "planner/search.h"

namespace reel::planner::internal {

class Budget {
 public:
  explicit Budget(const SearchOptions& o);
  // Counts one node; false once the node or time budget is spent (and from then on).
  bool Spend();
  // Whether the time limit has passed (the local search, which has its own move limit, watches only the clock).
  bool OutOfTime() const;
  bool exhausted() const { return exhausted_; }
  int64_t nodes() const { return nodes_; }

 private:
  int64_t max_nodes_;
  double max_seconds_;
  int64_t nodes_ = 0;
  bool exhausted_ = false;
  std::chrono::steady_clock::time_point start_;
};

// `a` is no slower than `b` and needs no more of any memory figure: swapping b for a never breaks a limit and
// never costs latency or throughput (device peaks only fall: see DeviceUse).
bool Dominates(const Option& a, const Option& b);
// The options of (stage, device) that no other option dominates (of identical ones, the first), fastest first.
std::vector<int> UndominatedOptions(const Rules& rules, int stage, int device);

// Devices with the same capacity and the same options for every stage form a class; hosts with the same limits
// and the same multiset of device classes form a class. Devices of one class on one host, or on hosts of one
// class that hold nothing yet, are interchangeable.
struct Groups {
  std::vector<int> device_class;
  std::vector<int> host_class;
  int num_device_classes = 0;
  int num_host_classes = 0;
};
Groups FindGroups(const Rules& rules);

// The stage-by-stage tree: one (device, option) per stage under the memory rules of `host_rule`. kLatency finds
// the fastest plan that fits; kLeastOverflow, when none fits, the plan whose largest overflow (bytes beyond a
// device, host RAM or pinned limit) is smallest, to say how far from fitting the problem is.
enum class TreeGoal { kLatency, kLeastOverflow };
struct TreeResult {
  bool found = false;
  bool complete = false;        // the whole tree was searched (false: the budget ran out)
  std::vector<Replica> choice;  // per stage
};
TreeResult StageTree(const Rules& rules, const Groups& groups, Objective host_rule, TreeGoal goal, Budget& budget);

// The throughput search (throughput_search.cc). `seed` (one replica per stage, fitting) starts it.
struct ThroughputResult {
  std::vector<std::vector<Replica>> replicas;
  bool complete = false;
};
ThroughputResult ThroughputSearch(const Rules& rules, const Groups& groups, const std::vector<Replica>& seed,
                                  bool local_search, Budget& budget);

// An upper bound on the jobs per hour of any plan at least as good as one of `jobs_per_hour`: that figure itself
// when the relaxation proves nothing better exists (for benchmarks: how far a plan the budget cut short may be).
double ThroughputBound(const Rules& rules, const Groups& groups, double jobs_per_hour);

// A plan from replicas per stage, scored.
Plan MakePlan(const Rules& rules, Objective objective, const std::vector<std::vector<Replica>>& replicas);

// Fills plan.rejected: per stage, up to `per_stage` alternatives to the chosen replicas, fastest first, each
// with the limit it breaks and by how much, or what it would cost.
void ExplainRejected(const Rules& rules, const Groups& groups, Plan& plan, int per_stage);
// Why nothing fits: stages no device can run, stages that fit no device alone (with the smallest deficit), or
// the closest plan and its overflows.
std::string InfeasibleReason(const Rules& rules, const Groups& groups, Objective objective, Budget& budget);

}  // namespace reel::planner::internal
