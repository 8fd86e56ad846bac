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
#include "cli/service_flags.h"
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
#include "reel/v1/coordinator.pb.h"
#include "transfer/wire.h"
#include "tuner/tune_proto.h"
#include "tuner/tuner.h"

namespace reel::cli {

namespace fs = std::filesystem;
namespace v1 = reel::v1;

namespace {

struct TuneFlags {
  std::string model, device = "cpu", device_memory, profile_db, stages;
  std::optional<int> frames, height, width, steps;
  std::optional<double> guidance;
  int tune_steps = 2, max_candidates = 6, threads = 0;
  double margin = 0.10;
  bool any_dtype = false, allow_int8 = false, json = false;
  bool on_coordinator = false;
  std::string coordinator, workers;
};

std::string Seconds(double s) { return s >= 1 ? fmt::format("{:.2f} s", s) : fmt::format("{:.0f} ms", s * 1000); }

nlohmann::json MeasurementJson(const std::string& worker, const v1::TuneMeasurement& m) {
  nlohmann::json j{{"stage", StageKindName(KindOf(m.stage()).value_or(StageKind::kDenoiser))},
                   {"strategy", m.strategy()},
                   {"dtype", m.dtype()},
                   {"outcome", m.outcome()},
                   {"error", m.error()},
                   {"estimated_peak_device_bytes", m.estimated_peak_device_bytes()},
                   {"estimated_seconds", m.estimated_seconds()},
                   {"peak_device_bytes", m.peak_device_bytes()},
                   {"seconds", m.seconds()}};
  if (!worker.empty()) j["worker"] = worker;
  return j;
}

// The measurements as a table (a worker column against a cluster), then the plan.
void Print(const TuneFlags& f, const std::string& heading, const std::vector<std::pair<std::string, v1::TuneMeasurement>>& rows,
           const nlohmann::json& report) {
  if (f.json) {
    nlohmann::json j;
    j["measurements"] = nlohmann::json::array();
    for (const auto& [w, m] : rows) j["measurements"].push_back(MeasurementJson(w, m));
    j["plan"] = report;
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    const bool cluster = f.on_coordinator;
    std::printf("%s\n\n", heading.c_str());
    std::printf("%s%-13s %-26s %-5s %-8s %12s %12s %10s %10s\n", cluster ? "worker       " : "", "stage", "strategy",
                "dtype", "outcome", "est. peak", "peak", "est. time", "time");
    for (const auto& [w, m] : rows) {
      const bool ok = m.outcome() == "ok";
      std::printf("%s%-13s %-26s %-5s %-8s %12s %12s %10s %10s\n",
                  cluster ? fmt::format("{:<12} ", w).c_str() : "",
                  StageKindName(KindOf(m.stage()).value_or(StageKind::kDenoiser)), m.strategy().c_str(),
                  m.dtype().c_str(), m.outcome().c_str(), FormatBytes(m.estimated_peak_device_bytes()).c_str(),
                  ok ? FormatBytes(m.peak_device_bytes()).c_str() : "-", Seconds(m.estimated_seconds()).c_str(),
                  ok ? Seconds(m.seconds()).c_str() : "-");
    }
    std::printf("\n%s", planner::PlanTable(report).c_str());
  }
  if (!report.at("feasible").get<bool>()) CommandExitCode() = 3;
}

v1::TuneRequest RequestOf(const TuneFlags& f) {
  v1::TuneRequest q;
  q.set_model(f.model);
  q.set_frames(f.frames.value_or(0));
  q.set_height(f.height.value_or(0));
  q.set_width(f.width.value_or(0));
  q.set_steps(f.steps.value_or(0));
  if (f.guidance) q.set_guidance(*f.guidance);
  q.set_tune_steps(f.tune_steps);
  q.set_max_candidates(f.max_candidates);
  q.set_any_dtype(f.any_dtype);
  q.set_allow_int8(f.allow_int8);
  q.set_margin(f.margin);
  for (const std::string& name : f.stages.empty() ? std::vector<std::string>{} : SplitList(f.stages)) {
    const auto k = ParseStageKind(name);
    if (!k)
      throw InvalidArgument(fmt::format("--stages {}: '{}' is not a stage (text_encoder, vae_encoder, denoiser, "
                                        "vae_decoder)",
                                        f.stages, name));
    q.add_stages(StageOf(*k));
  }
  return q;
}

void CheckFlags(const TuneFlags& f) {
  if (f.tune_steps < 1 || f.tune_steps > 50)
    throw InvalidArgument(fmt::format("--tune-steps {}: accepted 1 to 50", f.tune_steps));
  if (f.max_candidates < 1 || f.max_candidates > 64)
    throw InvalidArgument(fmt::format("--max-candidates {}: accepted 1 to 64", f.max_candidates));
  if (!(f.margin >= 0 && f.margin < 0.9))
    throw InvalidArgument(fmt::format("--margin {}: accepted 0 to 0.9", f.margin));
  if (f.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = all cores)", f.threads));
}

void RunTuneOnCoordinator(const TuneFlags& f) {
  for (const auto& [flag, set] : {std::pair{"--device", f.device != "cpu"}, {"--device-memory", !f.device_memory.empty()},
                                  {"--profile-db", !f.profile_db.empty()}})
    if (set)
      throw InvalidArgument(fmt::format("{}: not accepted with --coordinator (each worker tunes its own device and "
                                        "the coordinator keeps the profiles); drop one of them",
                                        flag));
  v1::TuneClusterRequest req;
  *req.mutable_tune() = RequestOf(f);
  for (const std::string& w : f.workers.empty() ? std::vector<std::string>{} : SplitList(f.workers))
    req.add_workers(w);
  std::vector<std::pair<std::string, v1::TuneMeasurement>> rows;
  std::string report;
  TuneOnCoordinator(f.coordinator, req, [&](const v1::TuneClusterEvent& ev) {
    if (!ev.plan_report_json().empty()) {
      report = ev.plan_report_json();
      return;
    }
    if (!f.json)
      std::fprintf(stderr, "tune: %s %s %s %s: %s\n", ev.worker().c_str(),
                   StageKindName(KindOf(ev.measurement().stage()).value_or(StageKind::kDenoiser)),
                   ev.measurement().strategy().c_str(), ev.measurement().dtype().c_str(),
                   ev.measurement().outcome().c_str());
    rows.emplace_back(ev.worker(), ev.measurement());
  });
  if (report.empty()) throw Internal("the coordinator ended the tuning without a plan");
  Print(f, fmt::format("Tuned {} on the cluster's workers; measurements stored in the coordinator's profile store",
                       f.model),
        rows, nlohmann::json::parse(report));
}

void RunTune(const TuneFlags& f) {
  CheckFlags(f);
  const v1::TuneRequest q = RequestOf(f);  // checks --stages' names
  if (f.on_coordinator) return RunTuneOnCoordinator(f);
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
  for (int s : q.stages()) {
    const StageKind k = *KindOf(static_cast<v1::Stage>(s));
    if (!manifest.has_stage(k))
      throw InvalidArgument(fmt::format("--stages {}: '{}' is not a stage of {}", f.stages, StageKindName(k),
                                        manifest.name));
    o.stages.push_back(k);
  }
  at::set_num_threads(f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency()));

  const fs::path db = f.profile_db.empty() ? ModelCacheDir() / "profiles.sqlite" : fs::path(f.profile_db);
  ProfileStore store(db.string());
  auto stored = [&] {
    std::vector<StageProfile> out;
    for (auto& row : store.All()) out.push_back(std::move(row.profile));
    return out;
  };
  std::vector<std::pair<std::string, v1::TuneMeasurement>> rows;
  RunTuning(dir, manifest, device, capacity, job, f.tune_steps, o, stored(), [&](const TuneMeasurement& m) {
    if (m.outcome == "ok" || m.outcome == "oom") store.Insert(m.profile);
    if (m.outcome == "error") spdlog::warn("{} {}: {}", StageKindName(m.candidate.stage), m.candidate.strategy, m.error);
    if (!f.json)
      std::fprintf(stderr, "tune: %s %s %s: %s\n", StageKindName(m.candidate.stage), m.candidate.strategy.c_str(),
                   m.candidate.dtype.c_str(), m.outcome.c_str());
    rows.emplace_back("", ToProto(m));
  });

  // The plan for this device with what was just measured.
  planner::Machine machine;
  machine.margin = f.margin;
  machine.devices.push_back(TuneDevice(device, capacity));
  machine.hosts.push_back({"host0", MachineMemory().total_bytes, 0});
  const planner::CostModel after(manifest, stored());
  planner::PlanningOptions po;
  po.allow_int8 = f.allow_int8;
  po.package_dtype_only = !f.any_dtype;
  const planner::Problem problem = planner::BuildProblem(after, machine, job, po);
  const planner::Plan plan = planner::Search(problem, planner::Objective::kLatency);
  const auto would_fit = plan.feasible ? std::vector<std::string>{}
                                       : planner::WhatWouldFit(after, machine, job, planner::Objective::kLatency, po);
  Print(f,
        fmt::format("Tuned {} at {} frames {}x{} ({} of {} steps run, times extrapolated) on {}; stored in {}",
                    manifest.name, job.frames, job.width, job.height, std::min(job.steps, f.tune_steps), job.steps,
                    device.Describe(), db.string()),
        rows, planner::PlanReport(manifest, job, planner::Objective::kLatency, problem, plan, would_fit, false));
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
  c->add_option("--coordinator", f->coordinator,
                "Tune a running cluster's workers instead of this machine's device (HOST:PORT)")
      ->expected(0, 1);
  AddClientSecurityFlags(*c);  // for --coordinator: --tls-cert/--tls-key/--tls-ca/--token-file
  c->add_option("--workers", f->workers, "With --coordinator: only these workers (default: every idle one)");
  c->callback([f, c] {
    f->on_coordinator = c->count("--coordinator") > 0;
    RunTune(*f);
  });
}

}  // namespace reel::cli
