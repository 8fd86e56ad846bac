#include "planner/planning.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "package/job_request.h"
#include "profiler/host_memory.h"

namespace reel::planner {

std::vector<StageKind> PipelineStages(const Manifest& manifest) {
  std::vector<StageKind> out;
  for (StageKind k : {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder})
    if (manifest.has_stage(k)) out.push_back(k);
  return out;
}

bool ParseTile(const std::string& text, int& tile, int& tile_w) {
  const size_t x = text.find('x');
  const auto number = [](const std::string& s, int& out) {
    if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    out = std::stoi(s);
    return true;
  };
  int h = 0, w = 0;
  if (!number(text.substr(0, x), h) || (x != std::string::npos && !number(text.substr(x + 1), w))) return false;
  tile = h;
  tile_w = w == h ? 0 : w;
  return true;
}

StrategyParts SplitStrategy(const std::string& strategy) {
  StrategyParts p;
  size_t start = 0;
  for (int i = 0; start <= strategy.size(); ++i) {
    const size_t end = std::min(strategy.find('+', start), strategy.size());
    const std::string item = strategy.substr(start, end - start);
    start = end + 1;
    if (i == 0) {
      p.offload = item;
    } else if (item == "slicing") {
      p.slicing = true;
    } else if (item.rfind("tiling=", 0) == 0) {
      ParseTile(item.substr(7), p.tile, p.tile_w);
    }
  }
  return p;
}

Job JobOf(const Manifest& m, int frames, int height, int width, int steps) {
  Job job;
  job.frames = frames > 0 ? frames : m.defaults.frames;
  job.height = height > 0 ? height : m.defaults.height;
  job.width = width > 0 ? width : m.defaults.width;
  job.steps = steps > 0 ? steps : m.defaults.steps;
  job.guidance = m.defaults.guidance;
  return job;
}

void ValidateJob(const Manifest& manifest, const Job& job) {
  GenerateRequest r;
  r.prompt = "plan";
  r.frames = job.frames;
  r.height = job.height;
  r.width = job.width;
  r.steps = job.steps;
  r.guidance = job.guidance;
  r.fps = manifest.defaults.fps;
  if (manifest.image_conditioned) r.image = "(any image: its size does not change the plan)";
  ValidateRequest(manifest, r);
}

Problem BuildProblem(const CostModel& model, const Machine& machine, const Job& job, const PlanningOptions& options) {
  Problem p;
  p.machine = machine;
  for (StageKind k : PipelineStages(model.manifest())) {
    StageOptions s;
    s.stage = k;
    for (const Device& d : machine.devices) {
      std::vector<Option> opts = model.Options(k, d, job);
      if (!options.allow_int8)
        std::erase_if(opts, [](const Option& o) { return o.dtype == "int8"; });
      if (options.package_dtype_only) {
        const std::string own = DTypeName(model.manifest().stage(k).dtype);
        std::erase_if(opts, [&](const Option& o) { return o.dtype != own; });
      }
      s.per_device.push_back(std::move(opts));
    }
    s.output_bytes = model.OutputBytes(k, job);
    p.stages.push_back(std::move(s));
  }
  return p;
}

namespace {

bool Fits(const CostModel& model, const Machine& machine, const Job& job, Objective objective,
          const PlanningOptions& options) {
  return Search(BuildProblem(model, machine, job, options), objective).feasible;
}

int RoundDown(double v, int multiple) { return std::max(multiple, static_cast<int>(v / multiple) * multiple); }

// A size as FormatBytes prints it (two decimals of its unit), rounded up so that the printed figure still fits.
std::string FormatAtLeast(int64_t bytes) {
  const int64_t unit = bytes >= (int64_t{1} << 30) ? (int64_t{1} << 30) : bytes >= (1 << 20) ? (1 << 20) : 1024;
  const double step = static_cast<double>(unit) / 100.0;
  return FormatBytes(static_cast<int64_t>(std::ceil(std::ceil(static_cast<double>(bytes) / step) * step)));
}

}  // namespace

std::vector<std::string> WhatWouldFit(const CostModel& model, const Machine& machine, const Job& job,
                                      Objective objective, const PlanningOptions& options) {
  std::vector<std::string> out;
  // Prices do not depend on the planned devices' capacities or RAM: the bisections below search this one priced
  // problem on other machines instead of pricing it again at every step.
  const Problem priced = BuildProblem(model, machine, job, options);
  const auto fits_on = [&](const Machine& m) {
    Problem p = priced;
    p.machine = m;
    return Search(p, objective).feasible;
  };
  if (fits_on(machine)) return out;
  const ShapeLimits& lim = model.manifest().limits;
  // Fewer frames, the longest clip that fits.
  for (int f = job.frames - lim.frame_step; f >= 1 + lim.frame_step; f -= lim.frame_step) {
    Job j = job;
    j.frames = f;
    if (Fits(model, machine, j, objective, options)) {
      out.push_back(fmt::format("--frames {}", f));
      break;
    }
  }
  // A lower resolution at the same aspect ratio, the largest that fits.
  for (double scale : {0.9, 0.8, 0.7, 0.6, 0.5, 0.4}) {
    Job j = job;
    j.height = RoundDown(job.height * scale, lim.size_multiple);
    j.width = RoundDown(job.width * scale, lim.size_multiple);
    if (j.height < lim.min_height || j.width < lim.min_width) break;
    if (Fits(model, machine, j, objective, options)) {
      out.push_back(fmt::format("--height {} --width {}", j.height, j.width));
      break;
    }
  }
  // More host RAM, more device memory, or both: the least that fits (to 1%), found by bisection since fitting
  // only gets easier with more of either.
  const int64_t unlimited = int64_t{1} << 50;
  const auto set_ram = [](Machine& m, int64_t v) {
    for (Host& h : m.hosts) h.ram_bytes = v;
  };
  const auto set_vram = [](Machine& m, int64_t v) {
    for (Device& d : m.devices) d.capacity_bytes = v;
  };
  const auto least = [&](const Machine& base, const auto& apply) -> int64_t {
    int64_t hi = unlimited, lo = 0;
    Machine m = base;
    apply(m, hi);
    if (!fits_on(m)) return 0;
    hi = int64_t{1} << 44;  // 16 TiB: more than any machine
    while (hi - lo > std::max<int64_t>(hi / 100, int64_t{1} << 20)) {
      const int64_t mid = lo + (hi - lo) / 2;
      Machine t = base;
      apply(t, mid);
      (fits_on(t) ? hi : lo) = mid;
    }
    return hi;
  };
  if (const int64_t ram = least(machine, set_ram)) out.push_back(fmt::format("{} of host RAM", FormatAtLeast(ram)));
  if (const int64_t vram = least(machine, set_vram))
    out.push_back(fmt::format("{} of device memory", FormatAtLeast(vram)));
  if (out.empty()) {
    Machine lifted = machine;
    set_ram(lifted, unlimited);
    if (const int64_t vram = least(lifted, set_vram)) {
      Machine with_vram = machine;
      set_vram(with_vram, vram);
      if (const int64_t ram = least(with_vram, set_ram))
        out.push_back(fmt::format("{} of device memory and {} of host RAM", FormatAtLeast(vram), FormatAtLeast(ram)));
    }
  }
  if (!options.allow_int8) {
    PlanningOptions lossy = options;
    lossy.allow_int8 = true;
    if (Fits(model, machine, job, objective, lossy)) out.push_back("--allow-int8 (weights stored as int8)");
  }
  return out;
}

}  // namespace reel::planner
