// A plan as one JSON document: the job, the machine, each stage's replicas with their predicted memory, time and
// basis (measured or estimate), the totals, and for --explain the rejected alternatives. `reel plan` prints it
// (or a table made from it) and the coordinator's PlanJob call returns it, so a described machine and a running
// cluster are reported the same way.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "package/manifest.h"
#include "planner/cost_model.h"
#include "planner/problem.h"
#include "profiler/profile_store.h"

namespace reel::planner {

const char* ObjectiveName(Objective objective);
// "latency" or "throughput"; throws InvalidArgument naming `flag` otherwise.
Objective ParseObjective(const std::string& value, const std::string& flag);

// With `explain` and `model`, also "sequence_parallel": the degree the objective chooses for the plan's denoiser on
// the machine's devices of its kind, and what lost (ChooseSequenceDegree; the link: HostLink, measured where `links`
// has it, else the PCIe estimate between CUDA devices and the loopback Gloo one between CPU ones).
nlohmann::json PlanReport(const Manifest& manifest, const Job& job, Objective objective, const Problem& problem,
                          const Plan& plan, const std::vector<std::string>& would_fit, bool explain,
                          const CostModel* model = nullptr, const std::vector<LinkProfile>* links = nullptr);

// The report as the table `reel plan` prints.
std::string PlanTable(const nlohmann::json& report);

}  // namespace reel::planner
