// `reel model synth|info`: write synthetic CogVideoX-shaped packages and describe packages.
#include <cstdio>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "common/error.h"
#include "models/presets.h"
#include "models/synth.h"

namespace reel::cli {

namespace {

struct SynthFlags {
  std::string preset, out, dtype = "f32", attention = "fused";
  uint64_t seed = 0;
  std::optional<int> layers;
};

void RunSynth(const SynthFlags& f) {
  SynthOptions o;
  o.preset = f.preset;
  o.out = f.out;
  o.seed = f.seed;
  auto dt = ParseDType(f.dtype);
  if (!dt || (*dt != DType::kF32 && *dt != DType::kBF16))
    throw InvalidArgument(fmt::format("--dtype {}: accepted f32 or bf16", f.dtype));
  o.dtype = *dt;
  o.layers = f.layers;
  if (f.attention != "fused" && f.attention != "chunked")
    throw InvalidArgument(fmt::format("--attention {}: accepted fused or chunked", f.attention));
  o.fused_attention = f.attention == "fused";
  const Manifest m = SynthesizePackage(o, [](const std::string& file) { spdlog::debug("wrote {}", file); });
  int64_t params = 0, bytes = 0;
  for (const auto& [k, s] : m.stages) {
    params += s.params();
    bytes += s.bytes();
  }
  std::printf("wrote %s: %s, %.1fM parameters, %.1f MiB\n", f.out.c_str(), m.name.c_str(), params / 1e6,
              bytes / 1048576.0);
}

void RunInfo(const std::string& model) {
  const Manifest m = LoadManifest(ResolveModel(model));
  std::printf("%s (%s)\n", m.name.c_str(), m.image_conditioned ? "image-to-video" : "text-to-video");
  for (const auto& [k, s] : m.stages)
    std::printf("  %-13s %-5s %6d parts %10.1fM params %10.1f MiB\n", StageKindName(k), DTypeName(s.dtype),
                static_cast<int>(s.parts.size()), s.params() / 1e6, s.bytes() / 1048576.0);
}

}  // namespace

void AddModelCommand(CLI::App& app) {
  auto* model = app.add_subcommand("model", "Create and inspect stage packages");
  model->require_subcommand(1);

  auto flags = std::make_shared<SynthFlags>();
  auto* synth = model->add_subcommand("synth", "Write a synthetic CogVideoX-shaped package with random weights");
  std::string presets;
  for (const auto& n : PresetNames()) presets += (presets.empty() ? "" : "|") + n;
  synth->add_option("--preset", flags->preset, presets)->required();
  synth->add_option("--out", flags->out, "Package directory to create")->required();
  synth->add_option("--seed", flags->seed, "Weight seed (deterministic)");
  synth->add_option("--dtype", flags->dtype, "Weight dtype: f32|bf16");
  synth->add_option("--layers", flags->layers, "Reduce text-encoder and transformer depth, keeping widths");
  synth->add_option("--attention", flags->attention,
                    "Denoiser attention: fused (scaled_dot_product_attention) or chunked (the float32 math of "
                    "packages made before LibTorch 2)");
  synth->callback([flags] { RunSynth(*flags); });

  auto model_name = std::make_shared<std::string>();
  auto* info = model->add_subcommand("info", "Describe a package or preset");
  info->add_option("--model", *model_name, "Preset name or package directory")->required();
  info->callback([model_name] { RunInfo(*model_name); });
}

}  // namespace reel::cli
