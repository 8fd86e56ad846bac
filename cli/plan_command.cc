// `reel plan`: the planner's choice for a package, a job shape and a machine (described on the command line, so it
// need not be running), from the profile store's measurements and estimates: a table, `--explain` for the
// alternatives it rejected and why, `--json` for scripts.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "common/split.h"
#include "models/presets.h"
#include "models/synth.h"
#include "package/job_request.h"
#include "package/manifest.h"
#include "planner/planning.h"
#include "profiler/host_memory.h"
#include "profiler/profile_store.h"

namespace reel::cli {

namespace fs = std::filesystem;
using planner::Objective;

namespace {

struct PlanFlags {
  std::string model;
  std::optional<int> frames, height, width, steps;
  std::optional<double> guidance;
  std::string objective = "latency";
  std::string device_memory, host_memory, device_kind = "cuda", profile_db;
  int devices = 1;
  double margin = 0.10;
  bool explain = false, json = false, no_profiles = false, allow_int8 = false;
};

Manifest ManifestOf(const std::string& model) {
  if (FindPreset(model)) {
    // The preset as `--model PRESET` synthesizes it (seed 0, f32), so measurements of it match; no weights made.
    SynthOptions o;
    o.preset = model;
    return PresetManifest(o);
  }
  std::error_code ec;
  if (!fs::is_directory(model, ec))
    throw NotFound(fmt::format("--model {}: not a preset ({}) nor a package directory", model,
                               fmt::join(PresetNames(), ", ")));
  return LoadManifest(model);
}

planner::Machine MachineOf(const PlanFlags& f) {
  if (f.device_kind != "cuda" && f.device_kind != "cpu")
    throw InvalidArgument(fmt::format("--device-kind {}: accepted cuda or cpu (the simulated device)", f.device_kind));
  if (f.devices < 1 || f.devices > 4096)
    throw InvalidArgument(fmt::format("--devices {}: accepted 1..4096", f.devices));
  if (!(f.margin >= 0 && f.margin < 0.9))
    throw InvalidArgument(fmt::format("--margin {}: accepted 0 to 0.9 (the fraction of every capacity kept free)",
                                      f.margin));
  if (f.device_memory.empty())
    throw InvalidArgument("--device-memory: required, e.g. 12GiB, or 24GiB,80GiB for two devices");
  planner::Machine m;
  m.margin = f.margin;
  planner::Host host;
  host.name = "host0";
  host.ram_bytes = f.host_memory.empty() ? MachineMemory().total_bytes : ParseSize(f.host_memory, "--host-memory");
  m.hosts.push_back(host);
  std::vector<int64_t> sizes;
  for (const std::string& item : SplitList(f.device_memory)) sizes.push_back(ParseSize(item, "--device-memory"));
  for (int r = 0; r < f.devices; ++r)
    for (int64_t size : sizes) {
      planner::Device d;
      d.name = fmt::format("{}{}", f.device_kind == "cuda" ? "gpu" : "cpu", m.devices.size());
      d.host = host.name;
      d.kind = f.device_kind;
      d.capacity_bytes = size;
      m.devices.push_back(d);
    }
  return m;
}

std::vector<StageProfile> ProfilesOf(const PlanFlags& f) {
  if (f.no_profiles) return {};
  const fs::path db = f.profile_db.empty() ? ModelCacheDir() / "profiles.sqlite" : fs::path(f.profile_db);
  std::error_code ec;
  if (!fs::exists(db, ec)) {
    if (!f.profile_db.empty())
      throw NotFound(fmt::format("--profile-db {}: no such file", f.profile_db));
    return {};
  }
  std::vector<StageProfile> out;
  for (auto& row : ProfileStore(db.string()).All()) out.push_back(std::move(row.profile));
  return out;
}

std::string Seconds(double s) {
  if (s >= 3600) return fmt::format("{:.1f} h", s / 3600);
  if (s >= 100) return fmt::format("{:.0f} s", s);
  if (s >= 1) return fmt::format("{:.1f} s", s);
  return fmt::format("{:.0f} ms", s * 1000);
}

nlohmann::json OptionJson(const planner::Option& o) {
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

void RunPlan(const PlanFlags& f) {
  Objective objective;
  if (f.objective == "latency") {
    objective = Objective::kLatency;
  } else if (f.objective == "throughput") {
    objective = Objective::kThroughput;
  } else {
    throw InvalidArgument(fmt::format("--objective {}: accepted latency or throughput", f.objective));
  }
  const planner::Machine machine = MachineOf(f);
  const Manifest manifest = ManifestOf(f.model);
  planner::Job job;
  job.frames = f.frames.value_or(manifest.defaults.frames);
  job.height = f.height.value_or(manifest.defaults.height);
  job.width = f.width.value_or(manifest.defaults.width);
  job.steps = f.steps.value_or(manifest.defaults.steps);
  job.guidance = f.guidance.value_or(manifest.defaults.guidance);
  GenerateRequest r;
  r.prompt = "plan";
  r.frames = job.frames;
  r.height = job.height;
  r.width = job.width;
  r.steps = job.steps;
  r.guidance = job.guidance;
  r.fps = manifest.defaults.fps;
  if (manifest.image_conditioned) r.image = "(any image: its size does not change the plan)";
  ValidateRequest(manifest, r);  // the same limits as generate and submit

  const planner::CostModel model(manifest, ProfilesOf(f));
  planner::PlanningOptions po;
  po.allow_int8 = f.allow_int8;
  const planner::Problem problem = planner::BuildProblem(model, machine, job, po);
  const planner::Plan plan = planner::Search(problem, objective);
  const std::vector<std::string> would_fit =
      plan.feasible ? std::vector<std::string>{} : planner::WhatWouldFit(model, machine, job, objective, po);

  const double keep = 1.0 - machine.margin;
  if (f.json) {
    nlohmann::json j;
    j["model"] = manifest.name;
    j["job"] = {{"frames", job.frames}, {"height", job.height}, {"width", job.width}, {"steps", job.steps},
                {"guidance", job.guidance}};
    j["objective"] = f.objective;
    j["feasible"] = plan.feasible;
    j["optimal"] = plan.optimal;
    j["margin"] = machine.margin;
    if (plan.feasible) {
      j["latency_seconds"] = plan.latency_seconds;
      j["jobs_per_hour"] = plan.jobs_per_hour;
    }
    j["stages"] = nlohmann::json::array();
    for (const auto& s : plan.stages) {
      nlohmann::json js{{"stage", StageKindName(s.stage)}, {"replicas", nlohmann::json::array()}};
      const size_t si = static_cast<size_t>(&s - plan.stages.data());
      for (const auto& rep : s.replicas) {
        nlohmann::json jr = OptionJson(problem.stages[si].per_device[rep.device][rep.option]);
        jr["device"] = machine.devices[rep.device].name;
        js["replicas"].push_back(jr);
      }
      j["stages"].push_back(js);
    }
    j["devices"] = nlohmann::json::array();
    for (size_t d = 0; d < machine.devices.size(); ++d)
      j["devices"].push_back({{"name", machine.devices[d].name},
                              {"host", machine.devices[d].host},
                              {"capacity_bytes", machine.devices[d].capacity_bytes},
                              {"peak_bytes", d < plan.device_peak_bytes.size() ? plan.device_peak_bytes[d] : 0}});
    j["hosts"] = nlohmann::json::array();
    for (size_t h = 0; h < machine.hosts.size(); ++h)
      j["hosts"].push_back({{"name", machine.hosts[h].name},
                            {"ram_bytes", machine.hosts[h].ram_bytes},
                            {"peak_bytes", h < plan.host_peak_bytes.size() ? plan.host_peak_bytes[h] : 0}});
    if (f.explain) j["rejected"] = plan.rejected;
    if (!plan.feasible) {
      j["infeasible_reason"] = plan.infeasible_reason;
      j["would_fit"] = would_fit;
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("Plan for %s: %d frames %dx%d, %d steps, guidance %.1f (objective: %s)\n", manifest.name.c_str(),
                job.frames, job.width, job.height, job.steps, job.guidance, f.objective.c_str());
    std::printf("Machine: %zu %s device%s (%s), host RAM %s; %.0f%% of each kept free\n", machine.devices.size(),
                f.device_kind.c_str(), machine.devices.size() == 1 ? "" : "s", f.device_memory.c_str(),
                FormatBytes(machine.hosts[0].ram_bytes).c_str(), machine.margin * 100);
    if (plan.feasible) {
      std::printf("\n%-13s %-7s %-26s %-5s %12s %12s %10s  %s\n", "stage", "device", "strategy", "dtype",
                  "device peak", "host", "time", "basis");
      for (size_t si = 0; si < plan.stages.size(); ++si)
        for (const auto& rep : plan.stages[si].replicas) {
          const planner::Option& o = problem.stages[si].per_device[rep.device][rep.option];
          std::printf("%-13s %-7s %-26s %-5s %12s %12s %10s  %s\n", StageKindName(plan.stages[si].stage),
                      machine.devices[rep.device].name.c_str(), o.strategy.c_str(), o.dtype.c_str(),
                      FormatBytes(o.peak_device_bytes).c_str(), FormatBytes(o.host_bytes + o.run_host_bytes).c_str(),
                      Seconds(o.seconds).c_str(), o.basis.c_str());
        }
      const auto max_of = [](const std::vector<int64_t>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); };
      std::printf("\nPredicted: %s per job, %.1f jobs/h; device peak %s (usable %s); host peak %s (usable %s)%s\n",
                  Seconds(plan.latency_seconds).c_str(), plan.jobs_per_hour,
                  FormatBytes(max_of(plan.device_peak_bytes)).c_str(),
                  FormatBytes(static_cast<int64_t>(machine.devices[0].capacity_bytes * keep)).c_str(),
                  FormatBytes(max_of(plan.host_peak_bytes)).c_str(),
                  FormatBytes(static_cast<int64_t>(machine.hosts[0].ram_bytes * keep)).c_str(),
                  plan.optimal ? "" : " (best found within the search budget)");
    } else {
      std::printf("\nNothing fits: %s\n", plan.infeasible_reason.c_str());
      for (const auto& w : would_fit) std::printf("Would fit: %s\n", w.c_str());
    }
    if (f.explain && !plan.rejected.empty()) {
      std::printf("\nRejected alternatives:\n");
      for (const auto& r : plan.rejected) std::printf("  %s\n", r.c_str());
    }
  }
  if (!plan.feasible) CommandExitCode() = 3;
}

}  // namespace

void AddPlanCommand(CLI::App& app) {
  auto f = std::make_shared<PlanFlags>();
  auto* c = app.add_subcommand("plan", "Choose placement, strategies and dtypes for a job on a machine");
  c->add_option("--model", f->model, "A preset name or a stage-package directory")->required();
  c->add_option("--frames", f->frames, "Frames (default: the model's)");
  c->add_option("--height", f->height, "Height in pixels (default: the model's)");
  c->add_option("--width", f->width, "Width in pixels (default: the model's)");
  c->add_option("--steps", f->steps, "Denoising steps (default: the model's)");
  c->add_option("--guidance", f->guidance, "Classifier-free guidance scale (default: the model's)");
  c->add_option("--objective", f->objective, "latency (one job) or throughput (a stream of jobs)")
      ->default_val("latency");
  c->add_option("--device-memory", f->device_memory,
                "Memory of each device of the described machine: 12GiB, or 24GiB,80GiB for several");
  c->add_option("--devices", f->devices, "Repeat the --device-memory list this many times")->default_val(1);
  c->add_option("--device-kind", f->device_kind, "cuda or cpu (the simulated device)")->default_val("cuda");
  c->add_option("--host-memory", f->host_memory, "Host RAM shared by the devices (default: this machine's)");
  c->add_option("--margin", f->margin, "Fraction of every capacity kept free")->default_val(0.10);
  c->add_option("--profile-db", f->profile_db,
                "Measured profiles (default: profiles.sqlite in the model cache, when present)");
  c->add_flag("--no-profiles", f->no_profiles, "Estimates only");
  c->add_flag("--allow-int8", f->allow_int8, "Also consider int8-stored weights (smaller, lower picture quality)");
  c->add_flag("--explain", f->explain, "Also list the alternatives rejected and why");
  c->add_flag("--json", f->json, "Print the plan as JSON");
  c->callback([f] { RunPlan(*f); });
}

}  // namespace reel::cli
