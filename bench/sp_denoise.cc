// reel_sp_denoise: one rank of a sequence-parallel denoise (or the whole denoise, without --group): loads only the
// package's denoiser, draws the text embeddings from the seed (the same on every rank; the text encoder is not what
// is measured, and four ranks holding a T5 each would not fit this machine), runs the denoising loop and writes the
// latents. tests/sequence_parallel_test.cc runs it as
// real processes on loopback and compares ranks with a single process; bench/sequence_parallel.sh times it.
//   reel_sp_denoise --package DIR [--preset NAME --layers N] [--group RANK/SIZE@HOST:PORT] [--device cpu|cuda:N]
//                   [--frames N --height H --width W --steps S --guidance G --seed N --threads T --dtype f32|bf16]
//                   [--out LATENTS.pt] [--die-after-step N]
// With --preset, a package DIR that does not exist yet is synthesized first (the GPU check has no `reel` CLI).
// Prints one JSON line: {"rank", "size", "denoise_seconds", "step_seconds": [...], "bytes_sent", "exchange_seconds",
// "backend"}.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "models/synth.h"
#include "runtime/compute_device.h"
#include "runtime/offload.h"
#include "runtime/pipeline.h"
#include "runtime/sequence_parallel.h"

int main(int argc, char** argv) {
  CLI::App app("One rank of a sequence-parallel denoise");
  std::string package_dir, group, out, dtype = "f32", offload = "none", device = "cpu";
  reel::GenerateRequest r;
  r.prompt = "a red fox running through snow";
  r.frames = 9;
  r.height = 64;
  r.width = 64;
  r.steps = 2;
  r.guidance = 6.0;
  r.seed = 42;
  r.fps = 8;
  std::string preset;
  int threads = 1, die_after_step = 0, timeout_ms = 60000, layers = 0;
  app.add_option("--package", package_dir, "Stage package directory")->required();
  app.add_option("--preset", preset, "Synthesize this preset into --package when that does not exist");
  app.add_option("--layers", layers, "With --preset: denoiser blocks (0: the preset's)");
  app.add_option("--group", group, "RANK/SIZE@HOST:PORT of the sequence-parallel group (absent: one process)");
  app.add_option("--frames", r.frames);
  app.add_option("--height", r.height);
  app.add_option("--width", r.width);
  app.add_option("--steps", r.steps);
  app.add_option("--guidance", r.guidance);
  app.add_option("--seed", r.seed);
  app.add_option("--threads", threads, "Intra-op threads");
  app.add_option("--dtype", dtype, "Denoiser dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--offload", offload, "The denoiser's memory strategy on this rank: none, model, block:K, sequential");
  app.add_option("--device", device, "cpu (the simulated device) or cuda:N (the group exchanges over NCCL where built)");
  app.add_option("--out", out, "Write the latents here (torch pickle)");
  app.add_option("--die-after-step", die_after_step, "Exit abruptly after this step (tests a lost rank)");
  app.add_option("--timeout-ms", timeout_ms, "How long the group waits for a peer");
  CLI11_PARSE(app, argc, argv);
  try {
    at::set_num_threads(threads);
    reel::ComputeDevice& dev = reel::OpenComputeDevice(device, "--device");
    std::optional<reel::SequenceGroup> g;
    if (!group.empty()) {
      reel::SequenceGroupSpec spec = reel::ParseSequenceGroup(group, "--group");
      spec.timeout = std::chrono::milliseconds(timeout_ms);
      spec.device = dev.device();
      g.emplace(spec);
    }
    if (!preset.empty() && !std::filesystem::exists(package_dir)) {
      reel::SynthOptions so;
      so.preset = preset;
      so.out = package_dir;
      so.seed = 7;
      so.text_layers = 1;  // the text encoder is not run here
      if (layers > 0) so.layers = layers;
      std::filesystem::create_directories(so.out.parent_path());
      reel::SynthesizePackage(so);
    }
    reel::StagePackage package =
        reel::StagePackage::Load(package_dir, std::set<reel::StageKind>{reel::StageKind::kDenoiser});
    reel::RunOptions options;
    options.device = &dev;
    if (dtype == "bf16") options.dtype[reel::StageKind::kDenoiser] = reel::DType::kBF16;
    options.offload[reel::StageKind::kDenoiser] = reel::ParseOffload(offload, "--offload");
    options.sequence_group = g ? &*g : nullptr;
    reel::Runtime runtime(package, options);
    torch::NoGradGuard no_grad;
    const reel::StageManifest& den = package.manifest().stage(reel::StageKind::kDenoiser);
    const auto dim = den.config.find("text_embed_dim");
    if (dim == den.config.end()) throw reel::BadPackage(package_dir + ": the denoiser's config has no text_embed_dim");
    torch::manual_seed(static_cast<uint64_t>(r.seed));
    const torch::Tensor text =
        torch::randn({r.guidance > 1.0 ? 2 : 1, package.manifest().tokenizer.max_length,
                      static_cast<int64_t>(dim->second)})
            .to(reel::ToTorch(den.inputs.at(1).dtype));
    reel::GenerateHooks hooks;
    if (die_after_step > 0)
      hooks.on_step = [&](int done, int) {
        if (done == die_after_step) _exit(3);
      };
    const auto t0 = std::chrono::steady_clock::now();
    const torch::Tensor z = runtime.DenoiseLatents(r, text, {}, hooks);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!out.empty()) {
      const std::vector<char> bytes = torch::pickle_save(z.cpu());
      reel::AtomicFile file(out, "--out");
      std::ofstream(file.temp_path(), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      file.Commit();
    }
    const auto stats = runtime.stats().at(reel::StageKind::kDenoiser);
    nlohmann::json j = {{"rank", g ? g->rank() : 0},
                        {"size", g ? g->size() : 1},
                        {"denoise_seconds", seconds},
                        {"step_seconds", stats.step_seconds},
                        {"bytes_sent", g ? g->bytes_sent() : 0},
                        {"exchange_seconds", g ? g->exchange_seconds() : 0.0},
                        {"backend", g ? g->backend() : std::string("none")},
                        {"offload", offload},
                        {"device_peak_bytes", runtime.device().Memory().peak}};
    std::cout << j.dump() << std::endl;
    return 0;
  } catch (const reel::Error& e) {
    std::fprintf(stderr, "reel_sp_denoise: %s\n", e.what());
    return e.kind() == reel::ErrorKind::kUnavailable ? 4 : 1;
  }
}
