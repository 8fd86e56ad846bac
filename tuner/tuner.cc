#include "tuner/tuner.h"

#include <algorithm>
#include <chrono>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "common/error.h"
#include "planner/planning.h"
#include "profiler/host_memory.h"
#include "runtime/device_memory.h"
#include "runtime/offload.h"
#include "runtime/pipeline.h"
#include "runtime/run_profile.h"
#include "runtime/stage_package.h"
#include "runtime/vae_decode.h"

namespace reel {

std::vector<TuneCandidate> TuneCandidates(const planner::CostModel& model, const planner::Device& device,
                                          const planner::Job& job, const TuneOptions& o) {
  const Manifest& m = model.manifest();
  std::vector<StageKind> stages = o.stages;
  if (stages.empty())
    for (const auto& [k, sm] : m.stages) stages.push_back(k);
  const double usable = device.capacity_bytes > 0 ? device.capacity_bytes * (1.0 - o.margin) : 0;
  std::vector<TuneCandidate> out;
  for (StageKind k : stages) {
    if (!m.has_stage(k)) continue;
    std::vector<planner::Option> opts = model.Options(k, device, job);
    const std::string own = DTypeName(m.stage(k).dtype);
    std::erase_if(opts, [&](const planner::Option& x) {
      return (!o.any_dtype && x.dtype != own && x.dtype != "int8") || (!o.allow_int8 && x.dtype == "int8");
    });
    if (opts.empty()) continue;
    // Estimates can be off either way (that is why we measure): candidates up to half again over the device are
    // still worth a run; beyond that they are not.
    std::vector<planner::Option> worth;
    for (const auto& x : opts)
      if (usable <= 0 || x.peak_device_bytes <= usable * 1.5) worth.push_back(x);
    const auto least = *std::min_element(opts.begin(), opts.end(), [](const auto& a, const auto& b) {
      return a.peak_device_bytes < b.peak_device_bytes;
    });
    std::sort(worth.begin(), worth.end(), [](const auto& a, const auto& b) { return a.seconds < b.seconds; });
    std::vector<planner::Option> chosen;
    std::set<std::pair<std::string, std::string>> seen;
    auto take = [&](const planner::Option& x) {
      if (seen.insert({x.strategy, x.dtype}).second) chosen.push_back(x);
    };
    take(least);  // always: the one most likely to fit
    for (const auto& x : worth)
      if (static_cast<int>(chosen.size()) < std::max(1, o.max_candidates)) take(x);
    std::sort(chosen.begin(), chosen.end(), [](const auto& a, const auto& b) {
      return a.peak_device_bytes < b.peak_device_bytes;
    });
    for (const auto& x : chosen) out.push_back({k, x.strategy, x.dtype, x});
  }
  return out;
}

namespace {

// The run options that place `c`'s stage as it says ("model+slicing+tiling=128", dtype "int8" → int8 weights
// computing in the option's compute dtype).
RunOptions OptionsFor(const TuneCandidate& c, ComputeDevice& device) {
  RunOptions o;
  o.device = &device;
  const planner::StrategyParts parts = planner::SplitStrategy(c.strategy);
  o.offload[c.stage] = ParseOffload(parts.offload, "strategy " + c.strategy);
  o.vae.slicing = parts.slicing;
  o.vae.tile = parts.tile;
  o.vae.tile_w = parts.tile_w;
  const std::string compute = c.dtype == "int8" ? c.estimate.compute_dtype : c.dtype;
  if (const auto d = ParseDType(compute)) o.dtype[c.stage] = *d;
  o.int8[c.stage] = c.dtype == "int8";
  ValidateVaeDecodeOptions(o.vae);
  return o;
}

void RunStage(Runtime& rt, StageKind k, const GenerateRequest& r) {
  const Manifest& m = rt.package().manifest();
  torch::NoGradGuard no_grad;
  JobShape shape = rt.ShapeOf(r);
  auto sym = shape.symbols(m.vae);
  sym["B"] = r.guidance > 1.0 ? 2 : 1;
  switch (k) {
    case StageKind::kTextEncoder:
      rt.EncodePrompt(r);
      break;
    case StageKind::kVaeEncoder: {
      const std::vector<uint8_t> gray(static_cast<size_t>(r.height) * r.width * 3, 128);
      rt.EncodeImageMoments(r, gray);
      break;
    }
    case StageKind::kDenoiser: {
      DeviceScope device;
      const TensorSpec& text_spec = m.stage(StageKind::kDenoiser).inputs.at(1);
      const torch::Tensor text = torch::randn(ResolveShape(text_spec, sym), torch::kFloat32)
                                     .to(ToTorch(text_spec.dtype))
                                     .to(rt.device().device());
      torch::Tensor moments;
      if (m.image_conditioned && m.has_stage(StageKind::kVaeEncoder))
        moments = torch::randn(ResolveShape(m.stage(StageKind::kVaeEncoder).outputs.at(0), sym), torch::kFloat32)
                      .to(rt.device().device());
      rt.DenoiseLatents(r, text, moments);
      break;
    }
    case StageKind::kVaeDecoder: {
      torch::Tensor z;
      {
        DeviceScope device;
        z = torch::randn({1, m.vae.latent_channels, sym.at("f"), sym.at("h"), sym.at("w")}, torch::kFloat32)
                .to(rt.device().device());
      }
      rt.DecodeVideo(r, z);
      break;
    }
  }
}

}  // namespace

TuneMeasurement MeasureCandidate(const std::filesystem::path& dir, ComputeDevice& device, int64_t capacity,
                                 const GenerateRequest& request, int job_steps, const TuneCandidate& c) {
  TuneMeasurement out;
  out.candidate = c;
  // Loaded afresh per candidate: a placement converts or releases weights in place.
  StagePackage package = StagePackage::Load(dir, std::set<StageKind>{c.stage});
  const Manifest manifest = package.manifest();
  ProfileContext ctx;
  ctx.manifest = &manifest;
  ctx.request = request;
  ctx.device_capacity = capacity;
  device.SetCapacity(capacity);
  device.ResetPeak();
  std::unique_ptr<Runtime> rt;
  try {
    rt = std::make_unique<Runtime>(package, OptionsFor(c, device));
    RunStage(*rt, c.stage, request);
    ctx.peak_host_rss = HostPeakRssBytes();
    ctx.strategy = rt->strategies().at(c.stage);
    ctx.weight_format = rt->weight_formats().at(c.stage);
    out.profile = ProfileOf(c.stage, rt->executor(c.stage).stats(), ctx);
    out.outcome = "ok";
    const double scale = c.stage == StageKind::kDenoiser && request.steps > 0
                             ? static_cast<double>(job_steps) / request.steps
                             : 1.0;
    out.job_seconds = out.profile.wall_seconds * scale;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kDeviceOutOfMemory) {
      out.outcome = "error";
      out.error = e.what();
      return out;
    }
    out.outcome = "oom";
    out.error = e.what();
    ctx.peak_host_rss = HostPeakRssBytes();
    const auto* soom = dynamic_cast<const StageOutOfMemory*>(&e);
    ctx.strategy = soom ? soom->strategy() : c.strategy;
    ctx.weight_format = soom ? soom->weight_format() : c.dtype;
    StageStats none;
    const auto stats = rt ? rt->stats() : std::map<StageKind, StageStats>{};
    const auto it = stats.find(c.stage);
    out.profile = ProfileOf(c.stage, it != stats.end() ? it->second : none, ctx, e.what());
  }
  return out;
}

planner::Device TuneDevice(ComputeDevice& device, int64_t capacity) {
  planner::Device d;
  d.name = device.simulated() ? "cpu0" : "gpu0";
  d.host = "host0";
  d.kind = device.simulated() ? "cpu" : "cuda";
  d.capacity_bytes = capacity > 0 ? capacity : device.Memory().total;  // 0: the simulated device, unlimited
  return d;
}

void RunTuning(const std::filesystem::path& dir, const Manifest& manifest, ComputeDevice& device, int64_t capacity,
               const planner::Job& job, int tune_steps, const TuneOptions& options,
               const std::vector<StageProfile>& profiles, const std::function<void(const TuneMeasurement&)>& each) {
  const planner::CostModel model(manifest, profiles);
  GenerateRequest r;
  r.prompt = "tune";
  r.frames = job.frames;
  r.height = job.height;
  r.width = job.width;
  r.steps = std::min(job.steps, tune_steps);
  r.guidance = job.guidance;
  r.fps = manifest.defaults.fps;
  for (const auto& c : TuneCandidates(model, TuneDevice(device, capacity), job, options)) {
    spdlog::debug("tune: {} {} {}", StageKindName(c.stage), c.strategy, c.dtype);
    each(MeasureCandidate(dir, device, capacity, r, job.steps, c));
  }
}

}  // namespace reel
