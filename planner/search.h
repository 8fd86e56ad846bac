// The placement search: picks, for each stage, the devices and options (cost_model.h priced them) that minimise
// latency or maximise throughput under device and host memory limits, and says why the alternatives lost.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "planner/problem.h"

namespace reel::planner {

// What a plan is and how it is judged (the exhaustive reference, the search and CheckPlan share these rules;
// planner/plan_rules.h implements them):
//
// Shape. For each stage in pipeline order a plan picks replicas (device, option). A latency plan has exactly one
// replica per stage; a throughput plan any non-empty set of distinct devices per stage, one option per
// (stage, device). Stages may share a device.
//
// Device memory. For each device: resident = the sum of resident_device_bytes of the (stage, option)s placed on it;
// peak = resident + the largest (peak_device_bytes − resident_device_bytes) among them — a worker runs one stage at
// a time, so stages sharing a device (model offload included) need their run-time extra one at a time. The peak
// must stay within capacity × (1 − margin); capacity 0 means not limited.
//
// Host memory, per host (devices name their host; a host no Host describes is not limited). Latency: the worst
// phase (phase p = stage p running) of [the host_bytes of everything placed on the host's devices + the
// run_host_bytes of stage p's replica if it is on the host]. Throughput: the host_bytes plus the run_host_bytes of
// everything placed on the host, since in a stream all stages run at once. Either must stay within
// RAM × (1 − margin) (RAM 0: not limited). The pinned_bytes on a host must stay within its pinned_budget_bytes when
// that is > 0.
//
// Latency. The sum of the stages' seconds plus, for consecutive stages on different devices, the earlier stage's
// output_bytes over link_bytes_per_second (same host) or network_bytes_per_second (across hosts). A throughput
// plan's latency is that of its fastest path through one replica per stage.
//
// Throughput. A stage's jobs split over its replicas in proportion to 1 / seconds, so each replica of stage s
// spends 1 / Σ(1 / seconds of s's replicas) seconds per job on it; a device's load is the sum of that over the
// stages it holds, and jobs_per_hour = 3600 / the largest load. Transfers are ignored here (they overlap compute
// in a stream; the seconds of tensors of a few MiB are small beside a stage's). A latency plan's throughput is
// this with one replica per stage.
//
// Ties. Costs (latency seconds, or the largest load) within a relative 1e-9 are equal; of equal plans the one
// with the smaller sum of device peaks wins, then the first found. The exhaustive reference visits plans in index
// order, so among exact ties it keeps the lowest device and option indices. The latency search applies the same
// order over every plan (it visits options fastest first and interchangeable devices through the lowest index, so
// of equal plans it may keep other indices). The throughput search applies it among the plans it visits and then
// gives each device the lowest-peak configuration that holds the same stages no slower; it does not prove that no
// plan of equal cost has lower peaks.

struct SearchOptions {
  // Nodes (partial plans extended by one choice) the search may visit before it returns the best plan found
  // with optimal = false. Deterministic, unlike a clock; 0 = no limit. 100 000 nodes take ~30 ms on clusters of 16
  // to 256 workers (bench/plan_bench.cc) and prove optimality on small ones.
  int64_t max_nodes = 100'000;
  // Wall-clock limit in seconds, checked as the node budget is; 0 = none.
  double max_seconds = 0;
  // How many rejected alternatives to explain per stage.
  int max_rejected_per_stage = 4;
  // Throughput: improve the first plan by local search before branching. Off, the branching starts from a plan
  // with one replica per stage (tests hold the branching alone to the reference this way).
  bool local_search = true;
};

// Branch and bound.
// Latency: over stages, each choosing a (device, option): options dominated on their device dropped (no faster and
// no smaller in any memory figure than another), devices interchangeable so far (identical capacity and options,
// on the same host or on identical hosts that hold nothing yet) tried through one representative, fastest first,
// bounded by the cost so far plus the fastest option of every remaining stage.
// Throughput: each device takes a configuration (an option or nothing per stage, fitting the device alone;
// configurations holding the same stages no faster and needing no less host memory where a host could run short
// are dropped). A local search (move one or all devices of a class from one configuration to another) from the
// latency search's plan gives the first plan; then over devices, interchangeable devices and identical hosts in
// non-decreasing order, bounded by: each stage's most reachable rate, the busiest decided device at those rates,
// and an LP relaxation (devices time-share stages at their fastest options) at the root's stage prices — with
// configurations that would already be busier than the best plan ruled out for open devices, repeatedly.
// Returns feasible = false with infeasible_reason when no plan fits; optimal = false when the budget ran out
// first (the plan is then the best found). Throws InvalidArgument on a malformed problem (plan_rules.h).
Plan Search(const Problem& problem, Objective objective, const SearchOptions& options = {});

// The reference: every assignment in index order, no pruning beyond memory limits; figures filled, no
// explanations. Exponential — for tests and small instances only.
Plan ExhaustiveSearch(const Problem& problem, Objective objective);

// Every rule `plan` breaks: its shape against the problem (stage count and order, replica counts, indices,
// a device twice in one stage), each device, host RAM and pinned limit it exceeds, and for a plan marked
// feasible, reported figures (latency, jobs per hour, peaks) that differ from its own. Empty when valid.
std::vector<std::string> CheckPlan(const Problem& problem, const Plan& plan);

// Fills latency_seconds, jobs_per_hour, device_peak_bytes, host_peak_bytes and feasible (memory limits only)
// of a plan whose shape is valid (CheckPlan); the host rule follows plan.objective. host_peak_bytes has one entry
// per Machine::hosts entry (first of each name), then one per host name that only devices mention.
void ScorePlan(const Problem& problem, Plan& plan);

}  // namespace reel::planner
