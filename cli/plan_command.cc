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
#include "cli/service_flags.h"
#include "common/error.h"
#include "common/split.h"
#include "models/presets.h"
#include "models/synth.h"
#include "package/job_request.h"
#include "package/manifest.h"
#include "planner/plan_report.h"
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
  std::string objective;  // empty: latency, or the coordinator's --plan-objective
  std::string device_memory, host_memory, device_kind = "cuda", profile_db;
  int devices = 1;
  double margin = 0.10;
  bool explain = false, json = false, no_profiles = false, allow_int8 = false;
  bool on_coordinator = false;
  std::string coordinator;  // empty with on_coordinator: $REEL_COORDINATOR or the default
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

// The profile store the plan reads (--profile-db, else the cache's), or none.
std::optional<fs::path> ProfileDbOf(const PlanFlags& f) {
  if (f.no_profiles) return std::nullopt;
  const fs::path db = f.profile_db.empty() ? ModelCacheDir() / "profiles.sqlite" : fs::path(f.profile_db);
  std::error_code ec;
  if (!fs::exists(db, ec)) {
    if (!f.profile_db.empty())
      throw NotFound(fmt::format("--profile-db {}: no such file", f.profile_db));
    return std::nullopt;
  }
  return db;
}

std::vector<StageProfile> ProfilesOf(const PlanFlags& f) {
  const auto db = ProfileDbOf(f);
  if (!db) return {};
  std::vector<StageProfile> out;
  for (auto& row : ProfileStore(db->string()).All()) out.push_back(std::move(row.profile));
  return out;
}

// Sequence parallelism's measured links (a coordinator's profile store has them).
std::vector<LinkProfile> LinksOf(const PlanFlags& f) {
  const auto db = ProfileDbOf(f);
  return db ? ProfileStore(db->string()).Links() : std::vector<LinkProfile>{};
}

planner::Job JobOf(const PlanFlags& f, const Manifest& manifest) {
  planner::Job job = planner::JobOf(manifest);
  job.frames = f.frames.value_or(job.frames);
  job.height = f.height.value_or(job.height);
  job.width = f.width.value_or(job.width);
  job.steps = f.steps.value_or(job.steps);
  job.guidance = f.guidance.value_or(job.guidance);
  return job;
}

void Print(const PlanFlags& f, const nlohmann::json& report) {
  if (f.json) {
    std::printf("%s\n", report.dump(2).c_str());
  } else {
    std::fputs(planner::PlanTable(report).c_str(), stdout);
  }
  if (!report.at("feasible").get<bool>()) CommandExitCode() = 3;
}

// The running cluster's plan: the coordinator prices its registered workers from its own profile store.
void RunPlanOnCoordinator(const PlanFlags& f) {
  for (const auto& [flag, set] : {std::pair{"--device-memory", !f.device_memory.empty()},
                                  {"--host-memory", !f.host_memory.empty()}, {"--profile-db", !f.profile_db.empty()},
                                  {"--no-profiles", f.no_profiles}, {"--devices", f.devices != 1}})
    if (set)
      throw InvalidArgument(fmt::format("{}: not accepted with --coordinator (the cluster's workers and profiles are "
                                        "used); drop one of them",
                                        flag));
  if (!f.objective.empty()) planner::ParseObjective(f.objective, "--objective");
  PlanQuery q;
  q.model = f.model;
  q.frames = f.frames.value_or(0);
  q.height = f.height.value_or(0);
  q.width = f.width.value_or(0);
  q.steps = f.steps.value_or(0);
  q.guidance = f.guidance;
  q.objective = f.objective;
  q.margin = f.margin;
  q.explain = f.explain;
  q.allow_int8 = f.allow_int8;
  Print(f, nlohmann::json::parse(PlanOnCoordinator(f.coordinator, q)));
}

void RunPlan(const PlanFlags& f) {
  if (f.on_coordinator) return RunPlanOnCoordinator(f);
  const Objective objective = planner::ParseObjective(f.objective.empty() ? "latency" : f.objective, "--objective");
  const planner::Machine machine = MachineOf(f);
  const Manifest manifest = ManifestOf(f.model);
  const planner::Job job = JobOf(f, manifest);
  planner::ValidateJob(manifest, job);  // the same limits as generate and submit

  const planner::CostModel model(manifest, ProfilesOf(f));
  planner::PlanningOptions po;
  po.allow_int8 = f.allow_int8;
  const planner::Problem problem = planner::BuildProblem(model, machine, job, po);
  const planner::Plan plan = planner::Search(problem, objective);
  const std::vector<std::string> would_fit =
      plan.feasible ? std::vector<std::string>{} : planner::WhatWouldFit(model, machine, job, objective, po);
  const std::vector<LinkProfile> links = LinksOf(f);
  Print(f, planner::PlanReport(manifest, job, objective, problem, plan, would_fit, f.explain, &model, &links));
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
  c->add_option("--objective", f->objective,
                "latency (one job) or throughput (a stream of jobs); default latency, with --coordinator the "
                "coordinator's --plan-objective");
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
  c->add_option("--coordinator", f->coordinator,
                "Plan for a running cluster: its registered workers and its profile store (HOST:PORT)")
      ->expected(0, 1);
  AddClientSecurityFlags(*c);  // for --coordinator: --tls-cert/--tls-key/--tls-ca/--token-file
  c->callback([f, c] {
    f->on_coordinator = c->count("--coordinator") > 0;
    RunPlan(*f);
  });
}

}  // namespace reel::cli
