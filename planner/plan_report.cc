#include "planner/plan_report.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/error.h"
#include "planner/sequence_parallel_cost.h"
#include "profiler/host_memory.h"

namespace reel::planner {

using json = nlohmann::json;

namespace {

std::string Seconds(double s) {
  if (s >= 3600) return fmt::format("{:.1f} h", s / 3600);
  if (s >= 100) return fmt::format("{:.0f} s", s);
  if (s >= 1) return fmt::format("{:.1f} s", s);
  return fmt::format("{:.0f} ms", s * 1000);
}

json OptionJson(const Option& o) {
  return {{"strategy", o.strategy},
          {"dtype", o.dtype},
          {"resident_device_bytes", o.resident_device_bytes},
          {"peak_device_bytes", o.peak_device_bytes},
          {"host_bytes", o.host_bytes},
          {"pinned_bytes", o.pinned_bytes},
          {"run_host_bytes", o.run_host_bytes},
          {"seconds", o.seconds},
          {"measured", o.measured},
          {"basis", o.basis}};
}

int64_t MaxOf(const json& items, const char* key) {
  int64_t m = 0;
  for (const auto& i : items) m = std::max(m, i.at(key).get<int64_t>());
  return m;
}

}  // namespace

const char* ObjectiveName(Objective objective) {
  return objective == Objective::kLatency ? "latency" : "throughput";
}

Objective ParseObjective(const std::string& value, const std::string& flag) {
  if (value == "latency") return Objective::kLatency;
  if (value == "throughput") return Objective::kThroughput;
  throw InvalidArgument(fmt::format("{} {}: accepted latency or throughput", flag, value));
}

json PlanReport(const Manifest& manifest, const Job& job, Objective objective, const Problem& problem,
                const Plan& plan, const std::vector<std::string>& would_fit, bool explain, const CostModel* model,
                const std::vector<LinkProfile>* links) {
  const Machine& machine = problem.machine;
  json j;
  j["model"] = manifest.name;
  j["job"] = {{"frames", job.frames}, {"height", job.height}, {"width", job.width}, {"steps", job.steps},
              {"guidance", job.guidance}};
  j["objective"] = ObjectiveName(objective);
  j["feasible"] = plan.feasible;
  j["optimal"] = plan.optimal;
  j["margin"] = machine.margin;
  if (plan.feasible) {
    j["latency_seconds"] = plan.latency_seconds;
    j["jobs_per_hour"] = plan.jobs_per_hour;
  }
  j["stages"] = json::array();
  for (size_t si = 0; si < plan.stages.size(); ++si) {
    const StagePlan& s = plan.stages[si];
    json js{{"stage", StageKindName(s.stage)}, {"replicas", json::array()}};
    for (const auto& rep : s.replicas) {
      json jr = OptionJson(problem.stages[si].per_device[rep.device][rep.option]);
      jr["device"] = machine.devices[rep.device].name;
      js["replicas"].push_back(jr);
    }
    j["stages"].push_back(js);
  }
  j["devices"] = json::array();
  for (size_t d = 0; d < machine.devices.size(); ++d)
    j["devices"].push_back({{"name", machine.devices[d].name},
                            {"host", machine.devices[d].host},
                            {"kind", machine.devices[d].kind},
                            {"capacity_bytes", machine.devices[d].capacity_bytes},
                            {"peak_bytes", d < plan.device_peak_bytes.size() ? plan.device_peak_bytes[d] : 0}});
  j["hosts"] = json::array();
  for (size_t h = 0; h < machine.hosts.size(); ++h)
    j["hosts"].push_back({{"name", machine.hosts[h].name},
                          {"ram_bytes", machine.hosts[h].ram_bytes},
                          {"peak_bytes", h < plan.host_peak_bytes.size() ? plan.host_peak_bytes[h] : 0}});
  if (explain) j["rejected"] = plan.rejected;
  if (explain && model && plan.feasible)
    for (size_t si = 0; si < plan.stages.size(); ++si) {
      if (plan.stages[si].stage != StageKind::kDenoiser || plan.stages[si].replicas.empty()) continue;
      const Replica& rep = plan.stages[si].replicas[0];
      const Device& device = machine.devices[rep.device];
      const Option& option = problem.stages[si].per_device[rep.device][rep.option];
      int like = 0;
      for (const Device& d : machine.devices) like += d.kind == device.kind;
      if (like > 1)
        j["sequence_parallel"] = ChooseSequenceDegree(
            *model, device, job, option.compute_dtype.empty() ? option.dtype : option.compute_dtype, like,
            HostLink(device.kind, links ? *links : std::vector<LinkProfile>{}), objective);
    }
  if (!plan.feasible) {
    j["infeasible_reason"] = plan.infeasible_reason;
    j["would_fit"] = would_fit;
  }
  return j;
}

std::string PlanTable(const json& r) {
  std::string out;
  const json& job = r.at("job");
  out += fmt::format("Plan for {}: {} frames {}x{}, {} steps, guidance {:.1f} (objective: {})\n",
                     r.at("model").get<std::string>(), job.at("frames").get<int>(), job.at("width").get<int>(),
                     job.at("height").get<int>(), job.at("steps").get<int>(), job.at("guidance").get<double>(),
                     r.at("objective").get<std::string>());
  // Devices listed as capacities, equal neighbours folded: "2 cuda devices (12.0 GiB, 12.0 GiB)".
  std::vector<std::string> caps;
  std::string kind;
  for (const auto& d : r.at("devices")) {
    const int64_t c = d.at("capacity_bytes").get<int64_t>();
    caps.push_back(c > 0 ? FormatBytes(c) : "unlimited");
    kind = d.at("kind").get<std::string>();
  }
  const json& hosts = r.at("hosts");
  std::vector<std::string> rams;
  for (const auto& h : hosts) rams.push_back(FormatBytes(h.at("ram_bytes").get<int64_t>()));
  const double margin = r.at("margin").get<double>();
  out += fmt::format("Machine: {} {} device{} ({}), host RAM {}; {:.0f}% of each kept free\n", caps.size(), kind,
                     caps.size() == 1 ? "" : "s", fmt::join(caps, ", "), fmt::join(rams, ", "), margin * 100);
  const double keep = 1.0 - margin;
  if (r.at("feasible").get<bool>()) {
    out += fmt::format("\n{:<13} {:<10} {:<26} {:<5} {:>12} {:>12} {:>10}  {}\n", "stage", "device", "strategy",
                       "dtype", "device peak", "host", "time", "basis");
    for (const auto& s : r.at("stages"))
      for (const auto& rep : s.at("replicas"))
        out += fmt::format("{:<13} {:<10} {:<26} {:<5} {:>12} {:>12} {:>10}  {}\n", s.at("stage").get<std::string>(),
                           rep.at("device").get<std::string>(), rep.at("strategy").get<std::string>(),
                           rep.at("dtype").get<std::string>(), FormatBytes(rep.at("peak_device_bytes").get<int64_t>()),
                           FormatBytes(rep.at("host_bytes").get<int64_t>() + rep.at("run_host_bytes").get<int64_t>()),
                           Seconds(rep.at("seconds").get<double>()), rep.at("basis").get<std::string>());
    int64_t usable_device = 0, usable_host = 0;
    for (const auto& d : r.at("devices"))
      usable_device = std::max(usable_device, static_cast<int64_t>(d.at("capacity_bytes").get<int64_t>() * keep));
    for (const auto& h : hosts)
      usable_host = std::max(usable_host, static_cast<int64_t>(h.at("ram_bytes").get<int64_t>() * keep));
    out += fmt::format("\nPredicted: {} per job, {:.1f} jobs/h; device peak {} (usable {}); host peak {} (usable {}){}\n",
                       Seconds(r.at("latency_seconds").get<double>()), r.at("jobs_per_hour").get<double>(),
                       FormatBytes(MaxOf(r.at("devices"), "peak_bytes")),
                       usable_device > 0 ? FormatBytes(usable_device) : "unlimited",
                       FormatBytes(MaxOf(hosts, "peak_bytes")),
                       usable_host > 0 ? FormatBytes(usable_host) : "unlimited",
                       r.at("optimal").get<bool>() ? "" : " (best found within the search budget)");
  } else {
    out += fmt::format("\nNothing fits: {}\n", r.at("infeasible_reason").get<std::string>());
    for (const auto& w : r.at("would_fit")) out += fmt::format("Would fit: {}\n", w.get<std::string>());
  }
  if (r.contains("sequence_parallel")) {
    const auto& sp = r.at("sequence_parallel");
    const auto& chosen = sp.at("choices").at(sp.at("chosen").get<size_t>());
    out += fmt::format("\nSequence parallelism for the denoiser ({} devices like {}, link {}, {} objective): {}, {}, "
                       "{:.2f}x one device, {:.1f} jobs/h\n",
                       sp.at("devices").get<int>(), sp.at("device").get<std::string>(),
                       sp.at("link_described").get<std::string>(), sp.at("objective").get<std::string>(),
                       chosen.at("name").get<std::string>(), Seconds(chosen.at("seconds").get<double>()),
                       chosen.at("speedup").get<double>(), chosen.at("jobs_per_hour").get<double>());
    for (const auto& x : sp.at("why")) out += fmt::format("  {}\n", x.get<std::string>());
  }
  if (r.contains("rejected") && !r.at("rejected").empty()) {
    out += "\nRejected alternatives:\n";
    for (const auto& x : r.at("rejected")) out += fmt::format("  {}\n", x.get<std::string>());
  }
  return out;
}

}  // namespace reel::planner
