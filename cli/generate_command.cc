// `reel generate`: one job end to end in this process.
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
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/progress.h"
#include "media/video_io.h"
#include "models/synth.h"
#include "package/job_request.h"
#include "runtime/pipeline.h"

namespace reel::cli {

namespace fs = std::filesystem;

namespace {

struct GenerateFlags {
  std::string model, out, frames_dir;
  GenerateRequest request;
  std::optional<int> frames, height, width, steps, fps;  // unset: the model's defaults
  int threads = 0;
};

void RunGenerate(GenerateFlags& f) {
  const auto start = std::chrono::steady_clock::now();
  GenerateRequest& r = f.request;
  if (f.threads < 0) throw InvalidArgument(fmt::format("--threads {}: accepted 1 or more (0 = all cores)", f.threads));
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
  const fs::path dir = ResolveModel(f.model);
  const Manifest manifest = LoadManifest(dir);
  r.frames = f.frames.value_or(manifest.defaults.frames);
  r.height = f.height.value_or(manifest.defaults.height);
  r.width = f.width.value_or(manifest.defaults.width);
  r.steps = f.steps.value_or(manifest.defaults.steps);
  r.fps = f.fps.value_or(manifest.defaults.fps);
  ValidateRequest(manifest, r);
  Image image;
  if (!r.image.empty()) image = ReadImage(r.image, r.height, r.width);

  at::set_num_threads(f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency()));
  const StagePackage package = StagePackage::Load(dir);
  spdlog::info("generating {} frames {}x{} with {} ({} steps, guidance {}, seed {})", r.frames, r.width, r.height,
               manifest.name, r.steps, r.guidance, r.seed);
  Progress progress("denoise", r.steps);
  GenerateHooks hooks;
  hooks.on_step = [&](int done, int) { progress.Step(done); };
  StageTimes times;
  const Video video = Generate(package, r, image.rgb, hooks, &times);
  progress.Finish();

  WriteMp4(out, video.rgb.data(), video.frames, video.height, video.width, r.fps);
  if (!f.frames_dir.empty()) {
    fs::create_directories(f.frames_dir);
    WritePngFrames(f.frames_dir, video.rgb.data(), video.frames, video.height, video.width);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("stage seconds: text {:.2f}, image {:.2f}, denoise {:.2f}, decode {:.2f}", times.text_encode,
               times.image_encode, times.denoise, times.decode);
  std::printf("wrote %s (%d frames, %dx%d) in %.1f s\n", f.out.c_str(), video.frames, video.width, video.height,
              total);
}

}  // namespace

void AddGenerateCommand(CLI::App& app) {
  auto f = std::make_shared<GenerateFlags>();
  auto* g = app.add_subcommand("generate", "Generate a video in this process");
  auto& r = f->request;
  g->add_option("--model", f->model, "Preset name (synthesized once into the cache) or package directory")
      ->required();
  g->add_option("--prompt", r.prompt, "Text prompt")->required();
  g->add_option("--negative-prompt", r.negative_prompt, "Negative prompt (default empty)");
  g->add_option("--image", r.image, "Conditioning image (PNG/JPEG) for image-to-video models");
  g->add_option("--frames", f->frames, "Frames, 4k+1 (default: the model's)");
  g->add_option("--height", f->height, "Height in pixels, a multiple of 16");
  g->add_option("--width", f->width, "Width in pixels, a multiple of 16");
  g->add_option("--steps", f->steps, "Denoising steps");
  g->add_option("--guidance", r.guidance, "Classifier-free guidance scale (<= 1 turns it off)")->default_val(6.0);
  g->add_option("--seed", r.seed, "Noise seed")->default_val(0);
  g->add_option("--fps", f->fps, "Frames per second of the MP4 (default: the model's)");
  g->add_option("--out", f->out, "Output .mp4 file")->required();
  g->add_option("--frames-dir", f->frames_dir, "Also write PNG frames into this directory");
  g->add_option("--threads", f->threads, "Intra-op CPU threads (0 = all cores)")->default_val(0);
  g->callback([f] { RunGenerate(*f); });
}

}  // namespace reel::cli
