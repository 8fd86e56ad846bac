// Memory strategies of the denoiser side by side on one device (a CUDA GPU, or the simulated device for the CPU
// fallback): time per denoising step, peak device memory and bytes copied per step, at a CogVideoX job shape.
// Each strategy runs one warm-up step then the timed ones, in the order given, in one process.
// Usage: reel_gpu_bench --preset cogvideox-5b --device cuda:0 --frames 49 --height 480 --width 720 --dtype bf16
//          --steps 3 --strategies none,block:4,sequential [--json FILE] [--markdown FILE]
// One denoiser call on given inputs instead (tests/gpu/diffusers_compare.py runs it against diffusers):
//        reel_gpu_bench --model PACKAGE --device cuda:0 --denoise-inputs in.pt --denoise-output out.pt
//          --warmup 1 --steps 3 [--strategies none] [--json FILE]
// where in.pt is torch.save({"latents": [B,f,C,h,w] f32, "text": [B,T,D], "timestep": [B] i64}) and out.pt is the
// velocity [B,f,C,h,w] f32 of the last timed call, for torch.load.
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
  std::ofstream(f.temp_path(), std::ios::binary) << text;
  f.Commit();
}

// --denoise-inputs: the denoiser called on the tensors of a torch.save'd dict, `warmup` untimed calls then `steps`
// timed ones (device synchronised around each), the peak device memory over the timed calls (weights included, as
// torch.cuda.max_memory_allocated counts them), and the last call's velocity written for torch.load.
int RunDenoiseCall(reel::ComputeDevice& dev, const fs::path& dir, const std::string& strategy,
                   const std::string& inputs_path, const std::string& output_path, int warmup, int steps,
                   const std::string& json_out) {
  std::ifstream in(inputs_path, std::ios::binary);
  if (!in) throw reel::InvalidArgument(fmt::format("--denoise-inputs {}: cannot be read", inputs_path));
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  torch::IValue loaded;
  try {
    loaded = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    why = why.substr(0, std::min(why.find(". "), why.find('\n')));  // its first sentence
    throw reel::InvalidArgument(fmt::format("--denoise-inputs {}: not a torch.save file ({})", inputs_path, why));
  }
  if (!loaded.isGenericDict())
    throw reel::InvalidArgument(fmt::format("--denoise-inputs {}: accepted a dict of latents, text and timestep",
                                            inputs_path));
  const auto dict = loaded.toGenericDict();
  auto tensor = [&](const char* key) {
    for (const auto& e : dict)
      if (e.key().isString() && e.key().toStringRef() == key && e.value().isTensor()) return e.value().toTensor();
    throw reel::InvalidArgument(fmt::format("--denoise-inputs {}: no tensor '{}' (accepted a dict of latents, text "
                                            "and timestep)", inputs_path, key));
  };
  const torch::Tensor latents_host = tensor("latents"), text_host = tensor("text"), timestep_host = tensor("timestep");
  if (latents_host.dim() != 5 || text_host.dim() != 3 || timestep_host.dim() != 1)
    throw reel::InvalidArgument(fmt::format("--denoise-inputs {}: latents {}, text {}, timestep {}: accepted "
                                            "[B,f,C,h,w], [B,T,D] and [B]", inputs_path,
                                            reel::FormatShape(latents_host.sizes().vec()),
                                            reel::FormatShape(text_host.sizes().vec()),
                                            reel::FormatShape(timestep_host.sizes().vec())));

  reel::StagePackage pkg = reel::StagePackage::Load(dir, std::set<StageKind>{StageKind::kDenoiser});
  const reel::Manifest& m = pkg.manifest();
  reel::JobShape shape;
  shape.batch = static_cast<int>(latents_host.size(0));
  shape.frames = static_cast<int>((latents_host.size(1) - 1) * m.vae.temporal_compression + 1);
  shape.height = static_cast<int>(latents_host.size(3) * m.vae.spatial_compression);
  shape.width = static_cast<int>(latents_host.size(4) * m.vae.spatial_compression);
  shape.text_tokens = static_cast<int>(text_host.size(1));
  const auto& text_spec = m.stage(StageKind::kDenoiser).inputs.at(1);

  torch::NoGradGuard no_grad;
  reel::RunOptions o;
  o.device = &dev;
  o.offload[StageKind::kDenoiser] = reel::ParseOffload(strategy, "--strategies");
  const auto t_load = std::chrono::steady_clock::now();
  reel::Runtime rt(pkg, o);
  dev.Synchronize();
  const double place_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const torch::Tensor latents = dev.Upload(latents_host.to(torch::kFloat32));
  const torch::Tensor text = dev.Upload(text_host.to(reel::ToTorch(text_spec.dtype)));
  const torch::Tensor timestep = dev.Upload(timestep_host.to(torch::kInt64));
  torch::Tensor v;
  for (int i = 0; i < warmup; ++i) v = rt.Denoise(latents, text, timestep, shape);
  dev.Synchronize();
  dev.ResetPeak();
  std::vector<double> times;
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    v = rt.Denoise(latents, text, timestep, shape);
    dev.Synchronize();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const reel::DeviceMemoryStats mem = dev.Memory();
  const torch::Tensor out = dev.Download(v).to(torch::kFloat32).contiguous();
  if (!output_path.empty()) {
    const std::vector<char> data = torch::pickle_save(out);
    WriteWhole(output_path, std::string(data.begin(), data.end()), "--denoise-output");
  }
  const double median = Median(times);
  std::fprintf(stderr, "denoise %s on %s, %s: %.3f s/call (median of %d), peak %s, placed in %.1f s\n",
               m.name.c_str(), dev.Describe().c_str(), strategy.c_str(), median, steps,
               reel::FormatBytes(mem.peak).c_str(), place_seconds);
  nlohmann::json j{{"model", m.name},
                   {"device", dev.Describe()},
                   {"strategy", strategy},
                   {"shape", {{"batch", shape.batch}, {"frames", shape.frames}, {"height", shape.height},
                              {"width", shape.width}, {"text_tokens", shape.text_tokens}}},
                   {"dtype", reel::DTypeName(m.stage(StageKind::kDenoiser).dtype)},
                   {"warmup", warmup},
                   {"call_seconds", times},
                   {"median_seconds", median},
                   {"peak_device_bytes", mem.peak},
                   {"reserved_device_bytes", mem.reserved},
                   {"weight_bytes", m.stage(StageKind::kDenoiser).bytes()},
                   {"place_seconds", place_seconds},
                   {"host_rss_bytes", reel::HostRssBytes()}};
  if (!json_out.empty()) WriteWhole(json_out, j.dump(2) + "\n", "--json");
  std::printf("%s\n", j.dump().c_str());
  return 0;
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
  std::string denoise_inputs, denoise_output;
  int warmup = 1;
  app.add_option("--denoise-inputs", denoise_inputs,
                 "instead of the strategy table: call the denoiser of --model on these inputs (torch.save of a dict "
                 "with latents [B,f,C,h,w] f32, text [B,T,D], timestep [B] i64), with the first of --strategies");
  app.add_option("--denoise-output", denoise_output, "with --denoise-inputs: the last call's velocity, for torch.load");
  app.add_option("--warmup", warmup, "with --denoise-inputs: untimed calls before the --steps timed ones")
      ->check(CLI::Range(0, 100));
  CLI11_PARSE(app, argc, argv);

  try {
    if (threads > 0) torch::set_num_threads(threads);
    const std::vector<std::string> names = reel::SplitList(strategies);
    for (const auto& name : names) reel::ParseOffload(name, "--strategies");  // all checked before anything runs
    reel::ComputeDevice& dev = reel::OpenComputeDevice(device);
    if (names.empty()) throw reel::InvalidArgument("--strategies: empty; accepted a comma-separated list");
    if (!denoise_inputs.empty()) {
      if (model.empty()) throw reel::InvalidArgument("--denoise-inputs needs --model PACKAGE");
      return RunDenoiseCall(dev, model, names.front(), denoise_inputs, denoise_output, warmup, steps, json_out);
    }
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
    if (!model.empty()) dtype = reel::DTypeName(m.stage(StageKind::kDenoiser).dtype);  // the package's, for the table
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
  } catch (const std::exception& e) {  // LibTorch's own (a TorchScript error, a bad tensor file): one line, not an abort
    const std::string what = e.what();
    std::fprintf(stderr, "reel_gpu_bench: %s\n", what.substr(0, what.find('\n')).c_str());
    return 2;
  }
}
