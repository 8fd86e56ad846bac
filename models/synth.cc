#include "models/synth.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <torch/script.h>

#include "common/error.h"
#include "models/presets.h"
#include "models/script_builder.h"
#include "models/t5_script.h"
#include "models/transformer_script.h"
#include "models/vae_script.h"

namespace reel {
namespace fs = std::filesystem;

namespace {

torch::Dtype TorchDtype(DType d) {
  switch (d) {
    case DType::kBF16: return torch::kBFloat16;
    case DType::kF16: return torch::kFloat16;
    default: return torch::kFloat32;
  }
}

TensorSpec Spec(std::string name, DType dtype, std::vector<Dim> shape) {
  return TensorSpec{std::move(name), dtype, std::move(shape)};
}

class PackageWriter {
 public:
  PackageWriter(fs::path dir, uint64_t seed, torch::Dtype dtype,
                const std::function<void(const std::string&)>& on_part)
      : dir_(std::move(dir)), seed_(seed), dtype_(dtype), on_part_(on_part) {}

  // Builds one part with a seed derived from its file name, saves it and records it in `stage`.
  template <typename Fn>
  void Part(StageManifest& stage, const std::string& role, const std::string& file, Fn&& build) {
    ScriptBuilder b(ClassName(file), StableHash(file, seed_), dtype_);
    build(b);
    Save(stage, role, file, b.Finish());
  }

  void Save(StageManifest& stage, const std::string& role, const std::string& file, torch::jit::Module m) {
    if (!ScriptBuilder::weightless()) {
      fs::create_directories((dir_ / file).parent_path());
      // Saved to memory first, then written with checked writes: LibTorch's zip writer finishes the file in its
      // destructor, where a full disk ("unexpected pos ...") ends the process instead of throwing.
      std::ostringstream bytes;
      m.save(bytes);
      const std::string data = std::move(bytes).str();
      const fs::path path = dir_ / file;
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(data.data(), static_cast<std::streamsize>(data.size()));
      out.flush();
      if (!out) {
        const std::string why = std::strerror(errno);
        std::error_code ec;
        const auto space = fs::space(dir_, ec);
        throw IoError(fmt::format("package part {}: writing {} MiB failed: {} ({} MiB free on its file system)",
                                  path.string(), data.size() >> 20, why,
                                  ec ? -1 : static_cast<int64_t>(space.available >> 20)));
      }
    }
    int64_t params = 0, bytes = 0;
    for (const auto& p : m.parameters()) {
      params += p.numel();
      bytes += p.numel() * static_cast<int64_t>(p.element_size());
    }
    stage.parts.push_back(StagePart{role, file, params, bytes});
    if (on_part_) on_part_(file);
  }

  uint64_t seed() const { return seed_; }
  torch::Dtype dtype() const { return dtype_; }

 private:
  static std::string ClassName(const std::string& file) {
    std::string s = "Reel_";
    for (char c : file) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return s;
  }

  fs::path dir_;
  uint64_t seed_;
  torch::Dtype dtype_;
  const std::function<void(const std::string&)>& on_part_;
};

void WriteStages(const PresetConfig& p, DType dtype, PackageWriter& w, Manifest& m) {
  const int T = p.tokenizer.max_length;
  const auto& t5 = p.t5;
  const auto& tr = p.transformer;

  StageManifest te;
  te.kind = StageKind::kTextEncoder;
  te.dtype = dtype;
  w.Part(te, "embed", "text_encoder/embed.pt", [&](ScriptBuilder& b) { BuildT5Embed(t5, b); });
  for (int i = 0; i < t5.num_layers; ++i)
    w.Part(te, "block", fmt::format("text_encoder/block_{:03d}.pt", i),
           [&](ScriptBuilder& b) { BuildT5Block(t5, b); });
  w.Part(te, "head", "text_encoder/head.pt", [&](ScriptBuilder& b) { BuildT5Head(t5, b); });
  te.inputs = {Spec("input_ids", DType::kI64, {"B", "T"})};
  te.outputs = {Spec("embeddings", dtype, {"B", "T", int64_t{t5.d_model}})};
  te.config = {{"d_model", t5.d_model}, {"num_heads", t5.num_heads}, {"d_kv", t5.d_kv},
               {"d_ff", t5.d_ff},       {"num_layers", t5.num_layers}, {"vocab_size", t5.vocab_size}};
  m.stages[te.kind] = te;

  StageManifest dn;
  dn.kind = StageKind::kDenoiser;
  dn.dtype = dtype;
  w.Part(dn, "embed", "denoiser/embed.pt", [&](ScriptBuilder& b) { BuildTransformerEmbed(tr, T, b); });
  for (int i = 0; i < tr.num_layers; ++i)
    w.Part(dn, "block", fmt::format("denoiser/block_{:03d}.pt", i),
           [&](ScriptBuilder& b) { BuildTransformerBlock(tr, b); });
  w.Part(dn, "head", "denoiser/head.pt", [&](ScriptBuilder& b) { BuildTransformerHead(tr, b); });
  dn.inputs = {Spec("latents", DType::kF32, {"B", "f", int64_t{tr.in_channels}, "h", "w"}),
               Spec("text", dtype, {"B", "T", int64_t{tr.text_embed_dim}}),
               Spec("timestep", DType::kI64, {"B"})};
  dn.outputs = {Spec("velocity", DType::kF32, {"B", "f", int64_t{tr.out_channels}, "h", "w"})};
  dn.config = {{"num_heads", tr.num_heads},
               {"head_dim", tr.head_dim},
               {"inner_dim", tr.inner_dim()},
               {"num_layers", tr.num_layers},
               {"in_channels", tr.in_channels},
               {"out_channels", tr.out_channels},
               {"time_embed_dim", tr.time_embed_dim},
               {"text_embed_dim", tr.text_embed_dim},
               {"patch_size", tr.patch_size},
               {"ff_mult", tr.ff_mult},
               {"rotary", tr.rotary ? 1 : 0},
               {"learned_positions", tr.learned_pos ? 1 : 0},
               {"fused_attention", tr.fused_attention ? 1 : 0}};
  m.stages[dn.kind] = dn;

  const int lc = p.vae.latent_channels;
  std::map<std::string, double> vae_cfg = {{"layers_per_block", p.vae.layers_per_block},
                                           {"norm_groups", p.vae.norm_groups},
                                           {"latent_channels", lc}};
  for (size_t i = 0; i < p.vae.block_out_channels.size(); ++i)
    vae_cfg[fmt::format("block_out_channels_{}", i)] = p.vae.block_out_channels[i];
  if (p.image_conditioned) {
    StageManifest ve;
    ve.kind = StageKind::kVaeEncoder;
    ve.dtype = dtype;
    w.Save(ve, "module", "vae_encoder/module.pt",
           BuildVaeEncoder(p.vae, StableHash("vae_encoder/module.pt", w.seed()), w.dtype()));
    ve.inputs = {Spec("image", DType::kF32, {"B", 3, 1, "H", "W"})};
    ve.outputs = {Spec("moments", DType::kF32, {"B", int64_t{2 * lc}, 1, "h", "w"})};
    ve.config = vae_cfg;
    m.stages[ve.kind] = ve;
  }
  StageManifest vd;
  vd.kind = StageKind::kVaeDecoder;
  vd.dtype = dtype;
  w.Save(vd, "module", "vae_decoder/module.pt",
         BuildVaeDecoder(p.vae, StableHash("vae_decoder/module.pt", w.seed()), w.dtype()));
  vd.inputs = {Spec("latents", DType::kF32, {"B", int64_t{lc}, "f", "h", "w"})};
  vd.outputs = {Spec("video", DType::kF32, {"B", 3, "F", "H", "W"})};
  vd.config = vae_cfg;
  m.stages[vd.kind] = vd;
}

std::string PresetList() {
  std::string s;
  for (const auto& n : PresetNames()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

namespace {

// The preset `opts` names with its depth overrides; InvalidArgument/NotFound naming the flag otherwise.
PresetConfig CheckedPreset(const SynthOptions& opts) {
  if (opts.layers && (*opts.layers < 1 || *opts.layers > 64))
    throw InvalidArgument(fmt::format("--layers {}: accepted 1..64", *opts.layers));
  if (opts.dtype != DType::kF32 && opts.dtype != DType::kBF16)
    throw InvalidArgument(fmt::format("--dtype {}: accepted f32 or bf16", DTypeName(opts.dtype)));
  auto preset = FindPreset(opts.preset, opts.layers);
  if (!preset) throw NotFound(fmt::format("--preset {}: unknown preset; accepted {}", opts.preset, PresetList()));
  if (opts.text_layers) {
    if (*opts.text_layers < 1 || *opts.text_layers > preset->t5.num_layers)
      throw InvalidArgument(fmt::format("--text-layers {}: accepted 1..{}", *opts.text_layers, preset->t5.num_layers));
    preset->t5.num_layers = *opts.text_layers;
  }
  preset->transformer.fused_attention = opts.fused_attention;
  return *preset;
}

Manifest ManifestHeader(const PresetConfig& preset, const SynthOptions& opts) {
  Manifest m;
  m.name = preset.name + (opts.layers ? fmt::format("-{}l", *opts.layers) : "") +
           (opts.text_layers ? fmt::format("-t{}", *opts.text_layers) : "") +
           (opts.fused_attention ? "" : "-chunked");
  m.preset = preset.name;
  m.seed = opts.seed;
  m.image_conditioned = preset.image_conditioned;
  m.tokenizer = preset.tokenizer;
  m.vae = preset.vae_spec;
  m.vae.latent_channels = preset.vae.latent_channels;
  m.scheduler = preset.scheduler;
  m.limits = preset.limits;
  m.defaults = preset.defaults;
  return m;
}

}  // namespace

Manifest PresetManifest(const SynthOptions& opts) {
  const PresetConfig preset = CheckedPreset(opts);
  ScriptBuilder::WeightlessScope weightless;
  Manifest m = ManifestHeader(preset, opts);
  const std::function<void(const std::string&)> no_progress;
  PackageWriter writer(fs::path(), opts.seed, TorchDtype(opts.dtype), no_progress);
  WriteStages(preset, opts.dtype, writer, m);
  return m;
}

Manifest SynthesizePackage(const SynthOptions& opts, const std::function<void(const std::string&)>& on_part) {
  const PresetConfig preset_config = CheckedPreset(opts);
  const PresetConfig* preset = &preset_config;
  std::error_code ec;
  if (fs::exists(opts.out, ec) && !(fs::is_directory(opts.out, ec) && fs::is_empty(opts.out, ec)))
    throw InvalidArgument(fmt::format("--out {}: already exists and is not an empty directory", opts.out.string()));
  const fs::path parent = opts.out.has_parent_path() ? opts.out.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec))
    throw InvalidArgument(fmt::format("--out {}: parent directory {} does not exist", opts.out.string(),
                                      parent.string()));
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw InvalidArgument(fmt::format("--out {}: parent directory {} is not writable", opts.out.string(),
                                      parent.string()));

  fs::path tmp = opts.out;
  tmp += fmt::format(".partial-{}", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    Manifest m = ManifestHeader(*preset, opts);
    PackageWriter writer(tmp, opts.seed, TorchDtype(opts.dtype), on_part);
    WriteStages(*preset, opts.dtype, writer, m);
    SaveManifest(m, tmp);
    if (fs::exists(opts.out, ec)) fs::remove(opts.out, ec);  // the empty directory checked above
    fs::rename(tmp, opts.out);
    return m;
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

fs::path ModelCacheDir() {
  if (const char* d = std::getenv("REEL_CACHE_DIR"); d && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d && *d) return fs::path(d) / "reel";
  if (const char* d = std::getenv("HOME"); d && *d) return fs::path(d) / ".cache" / "reel";
  return fs::temp_directory_path() / "reel-cache";
}

fs::path ResolveModel(const std::string& model) {
  std::error_code ec;
  if (FindPreset(model)) {
    // "-r5": packages with fused attention, one `linear` per row in the timestep linears, the denoiser block's
    // attend_in/attend_out and the head's project/unpatchify methods (sequence parallelism), the VAE's per-frame
    // conv2d resamplers, and the norms and T5 GELU computed as the libraries do in bf16; a cache filled by an older
    // Reel is left alone.
    const fs::path dir = ModelCacheDir() / "models" / (model + "-seed0-f32-r5");
    if (fs::exists(dir / kManifestFileName, ec)) {
      try {
        LoadManifest(dir);
        return dir;
      } catch (const Error&) {
        // Written by an older Reel: the cache is ours, so synthesize it afresh.
        fs::remove_all(dir, ec);
      }
    }
    fs::create_directories(dir.parent_path(), ec);
    if (ec) throw IoError(fmt::format("model cache {}: {}", dir.parent_path().string(), ec.message()));
    SynthOptions o;
    o.preset = model;
    o.out = dir;
    try {
      SynthesizePackage(o);
    } catch (const std::exception&) {
      // Another process may have synthesized it at the same time; its complete package is as good.
      if (!fs::exists(dir / kManifestFileName, ec)) throw;
    }
    return dir;
  }
  if (fs::is_directory(model, ec)) return model;
  throw NotFound(fmt::format("--model {}: neither a preset ({}) nor a package directory", model, PresetList()));
}

}  // namespace reel
