// `reel tune`: measures, on this machine's device, the candidate strategies and dtypes the planner would weigh
// for each stage at a job shape (short runs, extrapolated to the job's steps), stores every measurement in the
// profile store — out-of-memory attempts included — and prints the plan those measurements now give.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "cli/commands.h"
#include "common/error.h"
#include "common/split.h"
#include "models/synth.h"
#include "package/manifest.h"
#include "planner/plan_report.h"
#include "planner/planning.h"
#include "planner/search.h"
#include "profiler/host_memory.h"
#include "profiler/profile_store.h"
#include "runtime/compute_device.h"
#include "tuner/tuner.h"

namespace reel::cli {

namespace fs = std::filesystem;

namespace {

struct TuneFlags {
  std::string model, device = "cpu", device_memory, profile_db, stages;
  std::optional<int> frames, height, width, steps;
  std::optional<double> guidance;
  int tune_steps = 2, max_candidates = 6, threads = 0;
  double margin = 0.10;
  bool any_dtype = false, allow_int8 = false, json = false;
};

std::string Seconds(double s) { return s >= 1 ? fmt::format("{:.2f} s", s) : fmt::format("{:.0f} ms", s * 1000); }

void RunTune(const TuneFlags& f) {
  if (f.tune_steps < 1 || f.tune_steps > 50)
    throw InvalidArgument(fmt::format("--tune-steps {}: accepted 1 to 50", f.tune_steps));
  if (f.max_candidates < 1 || f.max_candidates > 64)
    throw InvalidArgument(fmt::format("--max-candidates {}: accepted 1 to 64", f.max_candidates));
  if (!(f.margin >= 0 && f.margin < 0.9))
    throw InvalidArgument(fmt::format("--margin {}: accepted 0 to 0.9", f.margin));
  if (f.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = all cores)", f.threads));
  ComputeDevice& device = OpenComputeDevice(f.device, "--device");
  const int64_t capacity = f.device_memory.empty() ? 0 : ParseSize(f.device_memory, "--device-memory");
  const fs::path dir = ResolveModel(f.model);
  const Manifest manifest = LoadManifest(dir);
  planner::Job job = planner::JobOf(manifest, f.frames.value_or(0), f.height.value_or(0), f.width.value_or(0),
                                    f.steps.value_or(0));
  if (f.guidance) job.guidance = *f.guidance;
  planner::ValidateJob(manifest, job);
  TuneOptions o;
  o.max_candidates = f.max_candidates;
  o.any_dtype = f.any_dtype;
  o.allow_int8 = f.allow_int8;
  o.margin = f.margin;
  for (const std::string& name : f.stages.empty() ? std::vector<std::string>{} : SplitList(f.stages)) {
    const auto k = ParseStageKind(name);
    if (!k || !manifest.has_stage(*k))
      throw InvalidArgument(fmt::format("--stages {}: '{}' is not a stage of {}", f.stages, name, manifest.name));
    o.stages.push_back(*k);
  }
  at::set_num_threads(f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency()));

  const fs::path db = f.profile_db.empty() ? ModelCacheDir() / "profiles.sqlite" : fs::path(f.profile_db);
  ProfileStore store(db.string());
  auto stored = [&] {
    std::vector<StageProfile> out;
    for (auto& row : store.All()) out.push_back(std::move(row.profile));
    return out;
  };
  planner::Device d;
  d.name = device.simulated() ? "cpu0" : "gpu0";
  d.host = "host0";
  d.kind = device.simulated() ? "cpu" : "cuda";
  d.capacity_bytes = capacity > 0 ? capacity : device.Memory().total;  // 0: the simulated device, unlimited
  const planner::CostModel before(manifest, stored());
  const std::vector<TuneCandidate> candidates = TuneCandidates(before, d, job, o);

  GenerateRequest r;
  r.prompt = "tune";
  r.frames = job.frames;
  r.height = job.height;
  r.width = job.width;
  r.steps = std::min(job.steps, f.tune_steps);
  r.guidance = job.guidance;
  r.fps = manifest.defaults.fps;
  std::vector<TuneMeasurement> results;
  for (const auto& c : candidates) {
    if (!f.json)
      std::fprintf(stderr, "tune: %s %s %s ...\n", StageKindName(c.stage), c.strategy.c_str(), c.dtype.c_str());
    TuneMeasurement m = MeasureCandidate(dir, device, capacity, r, job.steps, c);
    if (m.outcome == "ok" || m.outcome == "oom") store.Insert(m.profile);
    if (m.outcome == "error") spdlog::warn("{} {}: {}", StageKindName(c.stage), c.strategy, m.error);
    results.push_back(std::move(m));
  }

  // The plan for this device with what was just measured.
  planner::Machine machine;
  machine.margin = f.margin;
  machine.devices.push_back(d);
  machine.hosts.push_back({"host0", MachineMemory().total_bytes, 0});
  const planner::CostModel after(manifest, stored());
  planner::PlanningOptions po;
  po.allow_int8 = f.allow_int8;
  po.package_dtype_only = !f.any_dtype;
  const planner::Problem problem = planner::BuildProblem(after, machine, job, po);
  const planner::Plan plan = planner::Search(problem, planner::Objective::kLatency);
  const auto would_fit = plan.feasible ? std::vector<std::string>{}
                                       : planner::WhatWouldFit(after, machine, job, planner::Objective::kLatency, po);
  const nlohmann::json report =
      planner::PlanReport(manifest, job, planner::Objective::kLatency, problem, plan, would_fit, false);

  if (f.json) {
    nlohmann::json j;
    j["profile_db"] = db.string();
    j["tune_steps"] = r.steps;
    j["measurements"] = nlohmann::json::array();
    for (const auto& m : results)
      j["measurements"].push_back({{"stage", StageKindName(m.candidate.stage)},
                                   {"strategy", m.candidate.strategy},
                                   {"dtype", m.candidate.dtype},
                                   {"outcome", m.outcome},
                                   {"error", m.error},
                                   {"estimated_peak_device_bytes", m.candidate.estimate.peak_device_bytes},
                                   {"estimated_seconds", m.candidate.estimate.seconds},
                                   {"peak_device_bytes", m.outcome == "ok" ? m.profile.peak_device_bytes : 0},
                                   {"seconds", m.job_seconds}});
    j["plan"] = report;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("Tuned %s at %d frames %dx%d (%d of %d steps run, times extrapolated) on %s; stored in %s\n\n",
                manifest.name.c_str(), job.frames, job.width, job.height, r.steps, job.steps,
                device.Describe().c_str(), db.c_str());
    std::printf("%-13s %-26s %-5s %-8s %12s %12s %10s %10s\n", "stage", "strategy", "dtype", "outcome", "est. peak",
                "peak", "est. time", "time");
    for (const auto& m : results)
      std::printf("%-13s %-26s %-5s %-8s %12s %12s %10s %10s\n", StageKindName(m.candidate.stage),
                  m.candidate.strategy.c_str(), m.candidate.dtype.c_str(), m.outcome.c_str(),
                  FormatBytes(m.candidate.estimate.peak_device_bytes).c_str(),
                  m.outcome == "ok" ? FormatBytes(m.profile.peak_device_bytes).c_str() : "-",
                  Seconds(m.candidate.estimate.seconds).c_str(),
                  m.outcome == "ok" ? Seconds(m.job_seconds).c_str() : "-");
    std::printf("\n%s", planner::PlanTable(report).c_str());
  }
  if (!plan.feasible) CommandExitCode() = 3;
}

}  // namespace

void AddTuneCommand(CLI::App& app) {
  auto f = std::make_shared<TuneFlags>();
  auto* c = app.add_subcommand("tune", "Measure each stage's candidate strategies on this device; plan from them");
  c->add_option("--model", f->model, "A preset name or a stage-package directory")->required();
  c->add_option("--frames", f->frames, "Frames (default: the model's)");
  c->add_option("--height", f->height, "Height in pixels (default: the model's)");
  c->add_option("--width", f->width, "Width in pixels (default: the model's)");
  c->add_option("--steps", f->steps, "Denoising steps of the job (times are extrapolated to them)");
  c->add_option("--guidance", f->guidance, "Classifier-free guidance scale (default: the model's)");
  c->add_option("--device", f->device, "cpu (the simulated device) or cuda:N")->default_val("cpu");
  c->add_option("--device-memory", f->device_memory, "Capacity of the device, e.g. 12GiB (default: all of it)");
  c->add_option("--tune-steps", f->tune_steps, "Denoising steps each candidate runs")->default_val(2);
  c->add_option("--stages", f->stages, "Only these stages, e.g. denoiser,vae_decoder (default: all)");
  c->add_option("--max-candidates", f->max_candidates,
                "Per stage: the fastest candidates that may fit, plus the least-memory one")
      ->default_val(6);
  c->add_option("--margin", f->margin, "Fraction of the device and host memory the plan keeps free")
      ->default_val(0.10);
  c->add_flag("--any-dtype", f->any_dtype, "Also measure dtypes other than each stage's package dtype");
  c->add_flag("--allow-int8", f->allow_int8, "Also measure int8-stored weights");
  c->add_option("--profile-db", f->profile_db, "Where measurements go (default: profiles.sqlite in the model cache)");
  c->add_option("--threads", f->threads, "Intra-op CPU threads (0 = all cores)")->default_val(0);
  c->add_flag("--json", f->json, "Print the measurements and the plan as JSON");
  c->callback([f] { RunTune(*f); });
}

}  // namespace reel::cli
