// CheckPlan and ScorePlan: a plan from anywhere (a search, a file, a test) held to the rules of search.h.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "planner/plan_rules.h"
#include "planner/search.h"

namespace reel::planner {
namespace {

bool Close(double a, double b) { return std::fabs(a - b) <= kTieTolerance * std::max(std::fabs(a), std::fabs(b)); }

std::string Num(double v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

std::vector<std::string> CheckPlan(const Problem& problem, const Plan& plan) {
  const Rules r(problem);
  std::vector<std::string> errors;
  const bool latency = plan.objective == Objective::kLatency;
  const int stages = static_cast<int>(plan.stages.size());
  if (stages != r.num_stages)
    errors.push_back("the plan has " + std::to_string(stages) + " stages; the problem has " +
                     std::to_string(r.num_stages));
  for (int s = 0; s < std::min(stages, r.num_stages); ++s) {
    const StagePlan& sp = plan.stages[s];
    const std::string name = StageKindName(problem.stages[s].stage);
    if (sp.stage != problem.stages[s].stage)
      errors.push_back("stage " + std::to_string(s) + " is " + StageKindName(sp.stage) + "; the problem's stage " +
                       std::to_string(s) + " is " + name);
    if (sp.replicas.empty()) errors.push_back(name + ": no replica");
    if (latency && sp.replicas.size() > 1)
      errors.push_back(name + ": " + std::to_string(sp.replicas.size()) +
                       " replicas; a latency plan has exactly one per stage");
    std::vector<bool> seen(r.num_devices, false);
    for (const Replica& rep : sp.replicas) {
      if (rep.device < 0 || rep.device >= r.num_devices) {
        errors.push_back(name + ": device " + std::to_string(rep.device) + " does not exist (the machine has " +
                         std::to_string(r.num_devices) + ")");
        continue;
      }
      if (rep.option < 0 || rep.option >= r.NumOptions(s, rep.device))
        errors.push_back(name + " on " + r.DeviceName(rep.device) + ": option " + std::to_string(rep.option) +
                         " does not exist (" + std::to_string(r.NumOptions(s, rep.device)) + " options)");
      if (seen[rep.device]) errors.push_back(name + ": " + r.DeviceName(rep.device) + " holds more than one replica");
      seen[rep.device] = true;
    }
  }
  if (!errors.empty()) return errors;  // the figures below need a well-formed plan

  const Score sc = ScoreReplicas(r, ReplicasOf(plan), plan.objective);
  for (const Overflow& o : Overflows(r, sc)) errors.push_back(DescribeOverflow(r, o));
  if (!plan.feasible) return errors;
  if (!Close(plan.latency_seconds, sc.latency_seconds))
    errors.push_back("reported latency " + Num(plan.latency_seconds) + " s; the plan's is " + Num(sc.latency_seconds) +
                     " s");
  if (!Close(plan.jobs_per_hour, sc.jobs_per_hour))
    errors.push_back("reported " + Num(plan.jobs_per_hour) + " jobs/h; the plan's is " + Num(sc.jobs_per_hour));
  auto peaks = [&](const std::vector<int64_t>& reported, const std::vector<int64_t>& actual, bool device) {
    if (reported.size() != actual.size()) {
      errors.push_back(std::string("reported ") + (device ? "device" : "host") + " peaks for " +
                       std::to_string(reported.size()) + "; the plan has " + std::to_string(actual.size()));
      return;
    }
    for (size_t i = 0; i < actual.size(); ++i)
      if (reported[i] != actual[i])
        errors.push_back((device ? r.DeviceName(static_cast<int>(i)) : r.host_names[i]) + ": reported peak " +
                         std::to_string(reported[i]) + " bytes; the plan's is " + std::to_string(actual[i]));
  };
  peaks(plan.device_peak_bytes, sc.device_peak, true);
  peaks(plan.host_peak_bytes, sc.host_peak, false);
  return errors;
}

void ScorePlan(const Problem& problem, Plan& plan) {
  const Rules r(problem);
  const Score sc = ScoreReplicas(r, ReplicasOf(plan), plan.objective);
  plan.feasible = sc.fits;
  plan.latency_seconds = sc.latency_seconds;
  plan.jobs_per_hour = sc.jobs_per_hour;
  plan.device_peak_bytes = sc.device_peak;
  plan.host_peak_bytes = sc.host_peak;
}

}  // namespace reel::planner
