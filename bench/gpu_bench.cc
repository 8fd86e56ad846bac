// Memory strategies of the denoiser side by side on one device (a CUDA GPU, or the simulated device for the CPU
// fallback): time per denoising step, peak device memory and bytes copied per step, at a CogVideoX job shape.
// Each strategy runs one warm-up step then the timed ones, in the order given, in one process.
// Usage: reel_gpu_bench --preset cogvideox-5b --device cuda:0 --frames 49 --height 480 --width 720 --dtype bf16
//          --steps 3 --strategies none,block:4,sequential [--json FILE] [--markdown FILE]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/split.h"
#include "models/synth.h"
#include "profiler/host_memory.h"
#include "runtime/compute_device.h"
#include "runtime/pipeline.h"

namespace fs = std::filesystem;
using reel::StageKind;

namespace {

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string strategy;
  bool ok = false;
  std::string error;
  double step_seconds = 0;
  int64_t peak_bytes = 0;
  int64_t reserved_bytes = 0;
  double copied_bytes_per_step = 0;
  double copy_seconds_per_step = 0;
  int64_t host_rss_bytes = 0;
};

double GiB(int64_t b) { return static_cast<double>(b) / (1024.0 * 1024 * 1024); }

void WriteWhole(const std::string& path, const std::string& text, const std::string& flag) {
  reel::AtomicFile f(path, flag);
  std::ofstream(f.temp_path()) << text;
  f.Commit();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Denoiser memory strategies side by side on one device"};
  std::string preset = "tiny", model, device = "cpu", dtype = "bf16", strategies = "none,block:2,sequential";
  std::string json_out, md_out, work;
  int frames = 9, height = 64, width = 64, steps = 2, threads = 0;
  std::optional<int> layers;
  app.add_option("--preset", preset, "synthetic preset to benchmark");
  app.add_option("--model", model, "an existing stage package instead of --preset");
  app.add_option("--layers", layers, "denoiser blocks of the synthesized preset (default: the preset's)");
  app.add_option("--device", device, "cpu (the simulated device) or cuda:N");
  app.add_option("--dtype", dtype, "weight dtype of the synthesized package: f32 or bf16");
  app.add_option("--frames", frames);
  app.add_option("--height", height);
  app.add_option("--width", width);
  app.add_option("--steps", steps, "timed denoising steps per strategy (after one warm-up step)")->check(CLI::Range(1, 100));
  app.add_option("--strategies", strategies, "comma-separated offload strategies of the denoiser");
  app.add_option("--threads", threads, "intra-op threads (default: LibTorch's)");
  app.add_option("--work", work, "directory for the synthesized package (default: a temporary one, removed)");
  std::string decode;
  app.add_option("--decode", decode,
                 "also decode random latents with these VAE settings (comma-separated: plain, slicing, tiling=N, "
                 "slicing+tiling=N) and report the decoder's peak device memory");
  app.add_option("--json", json_out);
  app.add_option("--markdown", md_out);
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) torch::set_num_threads(threads);
    const std::vector<std::string> names = reel::SplitList(strategies);
    for (const auto& name : names) reel::ParseOffload(name, "--strategies");  // all checked before anything runs
    reel::ComputeDevice& dev = reel::OpenComputeDevice(device);
    const bool own_work = work.empty() && model.empty();
    fs::path dir = model;
    if (model.empty()) {
      if (work.empty()) {
        char tmpl[] = "/tmp/reel-gpu-bench.XXXXXX";
        if (!mkdtemp(tmpl)) throw reel::IoError("cannot create a temporary directory under /tmp");
        work = tmpl;
      }
      dir = fs::path(work) / fmt::format("{}-{}{}", preset, dtype, layers ? fmt::format("-{}l", *layers) : "");
      if (!fs::exists(dir / "manifest.json")) {
        reel::SynthOptions so;
        so.preset = preset;
        so.out = dir;
        const auto dt = reel::ParseDType(dtype);
        if (!dt) throw reel::InvalidArgument(fmt::format("--dtype {}: accepted f32 or bf16", dtype));
        so.dtype = *dt;
        so.layers = layers;
        so.text_layers = 1;  // only the denoiser runs here
        const auto t0 = std::chrono::steady_clock::now();
        reel::SynthesizePackage(so);
        std::fprintf(stderr, "synthesized %s in %.1f s\n", dir.c_str(),
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
    }
    std::set<StageKind> stages{StageKind::kDenoiser};
    if (!decode.empty()) stages.insert(StageKind::kVaeDecoder);
    reel::StagePackage pkg = reel::StagePackage::Load(dir, stages);
    const reel::Manifest& m = pkg.manifest();
    reel::GenerateRequest r = reel::DefaultRequest(m, "benchmark");
    r.frames = frames;
    r.height = height;
    r.width = width;
    r.steps = steps + 1;
    reel::ValidateRequest(m, r);
    const auto& text_spec = m.stage(StageKind::kDenoiser).inputs.at(1);
    const int64_t text_dim = std::get<int64_t>(text_spec.shape.at(2));
    torch::NoGradGuard no_grad;
    const torch::Tensor text_host =
        torch::randn({2, m.tokenizer.max_length, text_dim}, torch::kFloat32).to(reel::ToTorch(text_spec.dtype));

    // The first runs of a TorchScript graph optimise it (and on CUDA pick kernels): two discarded steps with the
    // first strategy keep that out of every row.
    {
      reel::RunOptions o;
      o.device = &dev;
      o.offload[StageKind::kDenoiser] = reel::ParseOffload(names.front(), "--strategies");
      o.offload[StageKind::kVaeDecoder] = reel::ParseOffload("model", "");
      reel::Runtime rt(pkg, o);
      reel::GenerateRequest warm = r;
      warm.steps = 2;
      rt.DenoiseLatents(warm, dev.Upload(text_host), torch::Tensor());
    }
    std::vector<Row> rows;
    for (const auto& name : names) {
      Row row;
      row.strategy = name;
      try {
        reel::RunOptions o;
        o.device = &dev;
        o.offload[StageKind::kDenoiser] = reel::ParseOffload(row.strategy, "--strategies");
        o.offload[StageKind::kVaeDecoder] = reel::ParseOffload("model", "");  // not resident: the rows are the denoiser's
        dev.ResetPeak();
        reel::Runtime rt(pkg, o);
        const torch::Tensor text = dev.Upload(text_host);
        rt.DenoiseLatents(r, text, torch::Tensor());
        const auto stats = rt.stats();  // a copy: a reference into the returned map would dangle
        const auto& st = stats.at(StageKind::kDenoiser);
        std::vector<double> timed(st.step_seconds.begin() + 1, st.step_seconds.end());
        row.step_seconds = Median(timed);
        row.peak_bytes = st.peak_device_bytes;
        row.reserved_bytes = dev.Memory().reserved;
        row.copied_bytes_per_step = static_cast<double>(st.copied_bytes) / (steps + 1);
        row.copy_seconds_per_step = st.copy_seconds / (steps + 1);
        row.host_rss_bytes = reel::HostRssBytes();
        row.ok = true;
      } catch (const reel::Error& e) {
        row.error = e.what();
      }
      std::fprintf(stderr, "%s: %s\n", row.strategy.c_str(),
                   row.ok ? fmt::format("{:.3f} s/step, peak {:.2f} GiB", row.step_seconds, GiB(row.peak_bytes)).c_str()
                          : row.error.c_str());
      rows.push_back(row);
    }

    // The decoder under each VAE setting, on latents of the job's shape (weights resident, as `none`).
    std::vector<Row> decodes;
    for (const std::string& setting : decode.empty() ? std::vector<std::string>{} : reel::SplitList(decode)) {
      Row row;
      row.strategy = setting;
      reel::RunOptions o;
      o.device = &dev;
      o.offload[StageKind::kDenoiser] = reel::ParseOffload("model", "");  // not resident: the rows are the decoder's
      o.vae.slicing = row.strategy.find("slicing") != std::string::npos;
      try {
        if (const size_t t = row.strategy.find("tiling="); t != std::string::npos) {
          size_t used = 0;
          try {
            o.vae.tile = std::stoi(row.strategy.substr(t + 7), &used);
          } catch (const std::exception&) {
          }
          if (used == 0 || t + 7 + used != row.strategy.size())
            throw reel::InvalidArgument(fmt::format("--decode {}: accepted plain, slicing, tiling=N or slicing+tiling=N",
                                                    row.strategy));
        }
        reel::ValidateVaeDecodeOptions(o.vae);
        reel::Runtime rt(pkg, o);
        const reel::JobShape shape = rt.ShapeOf(r);
        const auto sym = shape.symbols(m.vae);
        const torch::Tensor z = dev.Upload(torch::randn({1, m.vae.latent_channels, sym.at("f"), sym.at("h"), sym.at("w")}));
        const auto t0 = std::chrono::steady_clock::now();
        rt.DecodeLatents(z, shape);
        row.step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        row.peak_bytes = rt.stats().at(StageKind::kVaeDecoder).peak_device_bytes;
        row.ok = true;
      } catch (const reel::Error& e) {
        row.error = e.what();
      }
      std::fprintf(stderr, "decode %s: %s\n", row.strategy.c_str(),
                   row.ok ? reel::FormatBytes(row.peak_bytes).c_str() : row.error.c_str());
      decodes.push_back(row);
    }

    const Row* base = nullptr;
    for (const auto& row : rows)
      if (row.strategy == "none" && row.ok) base = &row;
    std::string md = fmt::format(
        "### {} denoiser, {}×{}×{}, {}, {} on {}\n\n"
        "| strategy | step time (s) | vs none | peak device memory | vs none | copied per step | "
        "copy time per step (s) |\n|---|---|---|---|---|---|---|\n",
        m.name, frames, height, width, dtype, steps > 1 ? fmt::format("median of {} steps", steps) : "1 step",
        dev.Describe());
    nlohmann::json j;
    j["model"] = m.name;
    j["device"] = dev.Describe();
    j["shape"] = {{"frames", frames}, {"height", height}, {"width", width}, {"steps", steps}, {"dtype", dtype}};
    for (const auto& row : rows) {
      nlohmann::json jr{{"strategy", row.strategy}, {"ok", row.ok}};
      if (!row.ok) {
        jr["error"] = row.error;
        md += fmt::format("| {} | failed: {} | | | | | |\n", row.strategy, row.error);
      } else {
        jr.update({{"step_seconds", row.step_seconds},
                   {"peak_device_bytes", row.peak_bytes},
                   {"reserved_device_bytes", row.reserved_bytes},
                   {"copied_bytes_per_step", row.copied_bytes_per_step},
                   {"copy_seconds_per_step", row.copy_seconds_per_step},
                   {"host_rss_bytes", row.host_rss_bytes}});
        md += fmt::format("| {} | {:.3f} | {} | {} | {} | {} | {:.3f} |\n", row.strategy, row.step_seconds,
                          base ? fmt::format("{:.2f}×", row.step_seconds / base->step_seconds) : "–",
                          reel::FormatBytes(row.peak_bytes),
                          base ? fmt::format("{:.0f}%", 100.0 * row.peak_bytes / base->peak_bytes) : "–",
                          reel::FormatBytes(static_cast<int64_t>(row.copied_bytes_per_step)),
                          row.copy_seconds_per_step);
      }
      j["rows"].push_back(jr);
    }
    if (!decodes.empty()) {
      md += "\n| VAE decode | time (s) | peak device memory |\n|---|---|---|\n";
      for (const auto& row : decodes) {
        md += row.ok ? fmt::format("| {} | {:.2f} | {} |\n", row.strategy, row.step_seconds, reel::FormatBytes(row.peak_bytes))
                     : fmt::format("| {} | failed: {} | |\n", row.strategy, row.error);
        nlohmann::json jd{{"vae", row.strategy}, {"ok", row.ok}};
        if (row.ok) jd.update({{"seconds", row.step_seconds}, {"peak_device_bytes", row.peak_bytes}});
        else jd["error"] = row.error;
        j["decode"].push_back(jd);
      }
    }
    std::printf("%s", md.c_str());
    if (!json_out.empty()) WriteWhole(json_out, j.dump(2) + "\n", "--json");
    if (!md_out.empty()) WriteWhole(md_out, md, "--markdown");
    if (own_work) fs::remove_all(work);
    bool all_ok = true;
    for (const auto& row : rows) all_ok = all_ok && row.ok;
    for (const auto& row : decodes) all_ok = all_ok && row.ok;
    return all_ok ? 0 : 1;
  } catch (const reel::Error& e) {
    std::fprintf(stderr, "reel_gpu_bench: %s\n", e.what());
    return 2;
  }
}
