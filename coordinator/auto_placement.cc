#include "coordinator/auto_placement.h"

#include <algorithm>

#include <fmt/format.h>

#include "planner/cost_model.h"
#include "planner/plan_report.h"
#include "planner/planning.h"
#include "planner/search.h"
#include "profiler/host_memory.h"

namespace reel {

planner::Machine MachineOfWorkers(const std::vector<WorkerSlot>& workers, double margin) {
  planner::Machine m;
  m.margin = margin;
  std::map<std::string, int64_t> ram;
  for (const auto& w : workers) {
    planner::Device d;
    d.name = w.name;
    d.host = w.host.empty() ? w.name : w.host;
    d.kind = w.device == "cpu" ? "cpu" : "cuda";
    d.capacity_bytes = w.capacity_bytes;
    m.devices.push_back(d);
    ram[d.host] = std::max(ram[d.host], w.host_memory_bytes);
  }
  for (const auto& [name, bytes] : ram) m.hosts.push_back({name, bytes, 0});
  return m;
}

reel::v1::StageStrategy StrategyOf(const planner::Option& o) {
  reel::v1::StageStrategy s;
  const planner::StrategyParts parts = planner::SplitStrategy(o.strategy);
  s.set_offload(parts.offload);
  s.set_vae_slicing(parts.slicing);
  s.set_vae_tile(parts.tile);
  if (o.dtype == "int8") {
    s.set_int8_weights(true);
    s.set_dtype(o.compute_dtype);
  } else {
    s.set_dtype(o.dtype);
  }
  return s;
}

AutoPlacement PlanPlacement(const std::map<std::string, Manifest>& models, const std::vector<WorkerSlot>& workers,
                            const std::vector<StageProfile>& profiles, planner::Objective objective, double margin,
                            const planner::PlanningOptions& options) {
  AutoPlacement out;
  if (workers.empty()) return out;
  planner::Machine machine = MachineOfWorkers(workers, margin);
  for (const auto& [name, manifest] : models) {
    const planner::CostModel model(manifest, profiles);
    const planner::Job job = planner::JobOf(manifest);
    const planner::Problem problem = planner::BuildProblem(model, machine, job, options);
    const planner::Plan plan = planner::Search(problem, objective);
    if (!plan.feasible) {
      out.notes.push_back(fmt::format(
          "{}: nothing fits the workers at {} frames {}x{} ({}); every worker holds every stage with its "
          "least-memory choice",
          name, job.frames, job.width, job.height, plan.infeasible_reason));
      for (size_t si = 0; si < problem.stages.size(); ++si)
        for (size_t d = 0; d < machine.devices.size(); ++d) {
          const auto& options = problem.stages[si].per_device[d];
          if (options.empty()) continue;
          const auto least = std::min_element(options.begin(), options.end(), [](const auto& a, const auto& b) {
            return a.peak_device_bytes < b.peak_device_bytes;
          });
          out.workers[machine.devices[d].name][name].emplace_back(problem.stages[si].stage, StrategyOf(*least));
        }
      continue;
    }
    std::vector<std::string> parts;
    for (size_t si = 0; si < plan.stages.size(); ++si) {
      std::vector<std::string> where;
      for (const auto& rep : plan.stages[si].replicas) {
        const planner::Option& o = problem.stages[si].per_device[rep.device][rep.option];
        out.workers[machine.devices[rep.device].name][name].emplace_back(plan.stages[si].stage, StrategyOf(o));
        where.push_back(fmt::format("{} {} {}", machine.devices[rep.device].name, o.strategy, o.dtype));
      }
      parts.push_back(fmt::format("{} on {}", StageKindName(plan.stages[si].stage), fmt::join(where, ", ")));
    }
    out.notes.push_back(fmt::format("{} ({} at {} frames {}x{}, {} steps): {}; predicted {:.1f} s per job, {:.1f} "
                                    "jobs/h",
                                    name, planner::ObjectiveName(objective), job.frames, job.width, job.height,
                                    job.steps, fmt::join(parts, "; "), plan.latency_seconds, plan.jobs_per_hour));
    // What this model's plan uses is not there for the next model's.
    for (size_t d = 0; d < machine.devices.size() && d < plan.device_peak_bytes.size(); ++d) {
      int64_t& cap = machine.devices[d].capacity_bytes;
      if (cap > 0) cap = std::max<int64_t>(1, cap - plan.device_peak_bytes[d]);
    }
    for (size_t h = 0; h < machine.hosts.size() && h < plan.host_peak_bytes.size(); ++h) {
      int64_t& ram = machine.hosts[h].ram_bytes;
      if (ram > 0) ram = std::max<int64_t>(1, ram - plan.host_peak_bytes[h]);
    }
  }
  return out;
}

}  // namespace reel
