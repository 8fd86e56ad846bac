// `reel generate`: one job end to end in this process, with memory strategies and the profiler.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "cli/commands.h"
#include "cli/job_flags.h"
#include "cli/run_profiling.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/progress.h"
#include "media/video_io.h"
#include "models/synth.h"
#include "package/job_request.h"
#include "planner/planning.h"
#include "profiler/host_memory.h"
#include "runtime/device_memory.h"
#include "runtime/pipeline.h"
#include "runtime/recovery.h"

namespace reel::cli {

namespace fs = std::filesystem;

namespace {

struct GenerateFlags {
  JobFlags job;
  std::string out, frames_dir;
  int threads = 0;
  std::string device = "cpu", device_memory, offload = "none", dtype, weights, host_memory;
  bool vae_slicing = false;
  bool no_oom_retry = false;
  std::string noise = "diffusers";
  std::optional<std::string> vae_tiling;
  std::string sequence_parallel;
  ProfilingFlags profiling;
};

RunOptions ParseRunOptions(const GenerateFlags& f, const Manifest& m) {
  RunOptions o;
  for (const auto& [kind, value] : ParsePerStage(f.offload, "--offload"))
    if (m.has_stage(kind)) o.offload[kind] = ParseOffload(value, "--offload");
  if (!f.dtype.empty())
    for (const auto& [kind, value] : ParsePerStage(f.dtype, "--dtype")) {
      auto d = ParseDType(value);
      if (!d || *d == DType::kI64)
        throw InvalidArgument(fmt::format("--dtype {}: accepted f32, bf16 or f16, for all stages or as STAGE=DTYPE",
                                          f.dtype));
      if (m.has_stage(kind)) o.dtype[kind] = *d;
    }
  if (!f.weights.empty())
    for (const auto& [kind, value] : ParsePerStage(f.weights, "--weights")) {
      if (value != "int8" && value != "float")
        throw InvalidArgument(fmt::format("--weights {}: accepted int8 or float, for all stages or as STAGE=int8",
                                          f.weights));
      if (m.has_stage(kind)) o.int8[kind] = value == "int8";
    }
  if (!f.host_memory.empty()) {
    o.host_budget = ParseSize(f.host_memory, "--host-memory");
  } else {
    // A safe share of what the machine has free now, so the run never pushes it into swap.
    o.host_budget = MachineMemory().available_bytes / 4 * 3;
  }
  o.vae.slicing = f.vae_slicing;
  if (f.noise != "diffusers" && f.noise != "f32")
    throw InvalidArgument(fmt::format("--noise {}: accepted diffusers or f32", f.noise));
  o.f32_noise = f.noise == "f32";
  if (f.vae_tiling) {
    const std::string& t = *f.vae_tiling;
    // T, HxW, or "diffusers": enable_tiling()'s default, half of CogVideoX's VAE sample size (480 × 720).
    int tile = 256, tile_w = 0;
    bool ok = true;
    if (t == "diffusers") {
      tile = 240;
      tile_w = 360;
    } else if (!t.empty()) {
      ok = planner::ParseTile(t, tile, tile_w);  // the spelling strategies use: T or HxW
    }
    if (!ok)
      throw InvalidArgument(fmt::format("--vae-tiling {}: accepted a tile size in pixels (a multiple of 8, at least "
                                        "16), HxW, or diffusers (240x360, as enable_tiling())",
                                        t));
    o.vae.tile = tile;
    o.vae.tile_w = tile_w;
    ValidateVaeDecodeOptions(o.vae);  // the decoder's own rule for tile sizes
  }
  return o;
}

void RunGenerate(GenerateFlags& f) {
  const auto start = std::chrono::steady_clock::now();
  GenerateRequest& r = f.job.request;
  if (f.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = all cores)", f.threads));
  CheckJobText(f.job);
  ComputeDevice& device = OpenComputeDevice(f.device, "--device");
  const int64_t capacity = f.device_memory.empty() ? 0 : ParseSize(f.device_memory, "--device-memory");
  // Cheap checks first: nothing heavy is loaded for a request that will be refused.
  const fs::path out(f.out);
  if (out.extension() != ".mp4")
    throw InvalidArgument(fmt::format("--out {}: accepted a file name ending in .mp4", f.out));
  RequireWritableDirectory(out.has_parent_path() ? out.parent_path() : fs::path("."), "--out");
  if (!f.frames_dir.empty()) {
    const fs::path d(f.frames_dir);
    RequireWritableDirectory(fs::exists(d) ? d : (d.has_parent_path() ? d.parent_path() : fs::path(".")),
                             "--frames-dir");
  }
  const fs::path dir = ResolveModel(f.job.model);
  const Manifest manifest = LoadManifest(dir);
  r.frames = f.job.frames.value_or(manifest.defaults.frames);
  r.height = f.job.height.value_or(manifest.defaults.height);
  r.width = f.job.width.value_or(manifest.defaults.width);
  r.steps = f.job.steps.value_or(manifest.defaults.steps);
  r.fps = f.job.fps.value_or(manifest.defaults.fps);
  ValidateRequest(manifest, r);
  RunOptions options = ParseRunOptions(f, manifest);
  options.device = &device;
  Image image;
  if (!r.image.empty()) image = ReadImage(r.image, r.height, r.width);
  RunProfiling profiling(f.profiling, manifest, r, device);  // opens the store and the metrics endpoint up front
  profiling.set_host_budget(options.host_budget);

  // Sequence parallelism: every rank runs this same command with its own RANK; rank 0 writes the video.
  std::optional<SequenceGroup> group;
  if (!f.sequence_parallel.empty()) {
    SequenceGroupSpec spec = ParseSequenceGroup(f.sequence_parallel, "--sequence-parallel");
    spec.device = device.device();
    spdlog::info("joining sequence-parallel group {} as rank {} of {}", spec.store, spec.rank, spec.size);
    group.emplace(spec);
    options.sequence_group = &*group;
  }
  const bool writes = !group || group->rank() == 0;

  at::set_num_threads(f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency()));
  device.SetCapacity(capacity);
  StagePackage package = StagePackage::Load(dir);
  spdlog::info("generating {} frames {}x{} with {} ({} steps, {}, guidance {}{}, seed {})", r.frames, r.width,
               r.height, manifest.name, r.steps, manifest.scheduler.kind == "cogvideox_dpm" ? "DPM" : "DDIM",
               r.guidance, r.dynamic_cfg ? " dynamic" : "", r.seed);
  Progress progress("denoise", r.steps);
  GenerateHooks hooks;
  hooks.on_step = [&](int done, int) { progress.Step(done); };
  Video video;
  profiling.Start();
  {
    std::unique_ptr<Runtime> runtime;
    for (;;) {
      try {
        runtime.reset();  // a failed attempt's placement leaves the device first
        runtime = std::make_unique<Runtime>(package, options, profiling.observer());
        if (writes) {
          video = runtime->Generate(r, image.rgb, hooks);
        } else {  // the other ranks share the denoise; the decoder runs on rank 0 alone
          torch::NoGradGuard no_grad;
          const torch::Tensor text = runtime->EncodePrompt(r);
          torch::Tensor moments;
          if (manifest.image_conditioned) moments = runtime->EncodeImageMoments(r, image.rgb);
          runtime->DenoiseLatents(r, text, moments, hooks);
        }
        break;
      } catch (const StageOutOfMemory& e) {
        // Retry with the next cheaper choice for the stage that ran out; the store remembers the failure.
        std::string why;
        const auto cheaper = f.no_oom_retry ? std::nullopt
                                             : CheaperAfterOom(options, manifest, e.stage(), &why,
                                                               std::max(r.height, r.width));
        if (!cheaper) {
          progress.Finish();
          profiling.Finish(runtime.get(), package, capacity, &e, 0.0, "");
          throw;
        }
        profiling.RecordOom(runtime.get(), e, capacity);
        spdlog::warn("{}; retrying with {}", e.what(), why);
        options = *cheaper;
        runtime.reset();
        package = StagePackage::Load(dir);  // the failed attempt may have converted or released weights in place
      } catch (const Error& e) {
        progress.Finish();
        profiling.Finish(runtime.get(), package, capacity, &e, 0.0, "");
        throw;
      }
    }
    progress.Finish();
    if (!writes) {
      profiling.Finish(runtime.get(), package, capacity, nullptr,
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), "");
      std::printf("denoised as rank %d of %d; rank 0 writes the video\n", group->rank(), group->size());
      return;
    }
    WriteMp4(out, video.rgb.data(), video.frames, video.height, video.width, r.fps);
    if (!f.frames_dir.empty()) {
      fs::create_directories(f.frames_dir);
      WritePngFrames(f.frames_dir, video.rgb.data(), video.frames, video.height, video.width);
    }
    const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    profiling.Finish(runtime.get(), package, capacity, nullptr, total, f.out);
    std::printf("wrote %s (%d frames, %dx%d) in %.1f s\n", f.out.c_str(), video.frames, video.width, video.height,
                total);
  }
}

}  // namespace

void AddGenerateCommand(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  auto* g = app.add_subcommand("generate", "Generate a video in this process");
  AddJobFlags(*g, f->job);
  g->add_option("--out", f->out, "Output .mp4 file")->required();
  g->add_option("--frames-dir", f->frames_dir, "Also write PNG frames into this directory");
  g->add_option("--threads", f->threads, "Intra-op CPU threads (0 = all cores)")->default_val(0);
  g->add_option("--device", f->device, "Device: cpu (the simulated device) or cuda:N (builds with CUDA)")
      ->default_val("cpu");
  g->add_option("--device-memory", f->device_memory,
                "Capacity of the (simulated) device, e.g. 12GiB; allocations beyond it fail as on a GPU");
  g->add_option("--offload", f->offload,
                "none|model|block:K|sequential, for all stages or per stage: denoiser=block:2,text_encoder=model")
      ->default_val("none");
  g->add_option("--dtype", f->dtype, "Weight dtype f32|bf16|f16, for all stages or per stage: denoiser=bf16");
  g->add_option("--weights", f->weights,
                "Weight storage: float (the dtype) or int8 with per-channel scales, for all stages or STAGE=int8");
  g->add_option("--host-memory", f->host_memory,
                "Host RAM the weights may hold, e.g. 24GiB (default: 3/4 of the memory available at start)");
  g->add_option("--noise", f->noise,
                "Initial noise: diffusers (drawn in the denoiser's dtype, as diffusers draws it) or f32 (drawn in "
                "float32, the same for every dtype)")
      ->default_val("diffusers");
  g->add_option("--sequence-parallel", f->sequence_parallel,
                "RANK/SIZE@HOST:PORT: denoise with SIZE processes running this same command, each with its RANK; "
                "rank 0 serves the rendezvous at HOST:PORT and writes the video (docs/SEQUENCE_PARALLEL.md)");
  g->add_flag("--vae-slicing", f->vae_slicing, "Decode latent frames in slices carrying the causal cache");
  g->add_flag("--no-oom-retry", f->no_oom_retry,
              "Fail when a stage runs out of device memory instead of retrying it with the next cheaper choice");
  g->add_option("--vae-tiling", f->vae_tiling, "Decode in spatial tiles of T or HxW pixels (default 256) with blended seams; diffusers: "
                  "240x360, as diffusers' enable_tiling()")
      ->expected(0, 1);
  AddProfilingFlags(*g, f->profiling);
  g->callback([f] { RunGenerate(*f); });
}

}  // namespace reel::cli
