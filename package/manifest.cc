#include "package/manifest.h"

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/printable.h"
#include "common/stable_hash.h"

namespace reel {
namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace {

const char* const kStageNames[] = {"text_encoder", "vae_encoder", "denoiser", "vae_decoder"};
const std::set<std::string> kSymbols = {"B", "T", "F", "H", "W", "f", "h", "w"};

// A JSON value as an error shows it: scalars as written (strings cut to a printable line), containers by kind only
// (a field holding the whole rest of the file must not end up in the message).
std::string Shown(const ordered_json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  if (v.is_string()) return "\"" + Printable(v.get_ref<const std::string&>(), 64) + "\"";
  return v.dump();
}

// Reads fields of one JSON object and names the file and the field path in every error.
class Reader {
 public:
  Reader(const ordered_json& j, std::string source, std::string path)
      : j_(j), source_(std::move(source)), path_(std::move(path)) {
    if (!j_.is_object()) Fail("", "must be an object");
  }

  [[noreturn]] void Fail(const std::string& key, const std::string& what) const {
    throw BadPackage(source_ + ": field '" + Field(key) + "' " + what);
  }
  std::string Field(const std::string& key) const {
    if (key.empty()) return path_.empty() ? "(top level)" : path_;
    // Stage and config names are the file's own keys.
    return path_.empty() ? Printable(key, 64) : path_ + "." + Printable(key, 64);
  }
  bool Has(const std::string& key) const { return j_.contains(key); }
  const ordered_json& At(const std::string& key) const {
    if (!j_.contains(key)) Fail(key, "is missing");
    return j_.at(key);
  }
  Reader Object(const std::string& key) const { return Reader(At(key), source_, Field(key)); }
  std::string String(const std::string& key) const {
    const auto& v = At(key);
    if (!v.is_string()) Fail(key, "must be a string, got " + Shown(v));
    return v.get<std::string>();
  }
  std::string String(const std::string& key, const std::string& dflt) const { return Has(key) ? String(key) : dflt; }
  int64_t Int(const std::string& key, int64_t lo, int64_t hi) const {
    const auto& v = At(key);
    if (!v.is_number_integer()) Fail(key, "must be an integer, got " + Shown(v));
    // Above INT64_MAX JSON integers are unsigned: compared as such, not wrapped to a negative value.
    const bool above = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX);
    const int64_t x = above ? INT64_MAX : v.get<int64_t>();
    if (above || x < lo || x > hi)
      Fail(key, "is " + v.dump() + ", accepted " + std::to_string(lo) + ".." + std::to_string(hi));
    return x;
  }
  double Number(const std::string& key, double lo, double hi) const {
    const auto& v = At(key);
    if (!v.is_number()) Fail(key, "must be a number, got " + Shown(v));
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) {
      std::ostringstream s;
      s << "is " << x << ", accepted " << lo << ".." << hi;
      Fail(key, s.str());
    }
    return x;
  }
  bool Bool(const std::string& key) const {
    const auto& v = At(key);
    if (!v.is_boolean()) Fail(key, "must be true or false, got " + Shown(v));
    return v.get<bool>();
  }
  const ordered_json& Array(const std::string& key) const {
    const auto& v = At(key);
    if (!v.is_array()) Fail(key, "must be an array, got " + Shown(v));
    return v;
  }
  const std::string& source() const { return source_; }
  const ordered_json& json() const { return j_; }

 private:
  const ordered_json& j_;
  std::string source_;
  std::string path_;
};

ordered_json DimsToJson(const std::vector<Dim>& dims) {
  ordered_json a = ordered_json::array();
  for (const auto& d : dims) {
    if (std::holds_alternative<int64_t>(d))
      a.push_back(std::get<int64_t>(d));
    else
      a.push_back(std::get<std::string>(d));
  }
  return a;
}

ordered_json TensorsToJson(const std::vector<TensorSpec>& specs) {
  ordered_json a = ordered_json::array();
  for (const auto& t : specs)
    a.push_back({{"name", t.name}, {"dtype", DTypeName(t.dtype)}, {"shape", DimsToJson(t.shape)}});
  return a;
}

std::vector<TensorSpec> TensorsFromJson(const Reader& r, const std::string& key) {
  std::vector<TensorSpec> out;
  const auto& arr = r.Array(key);
  if (arr.empty()) r.Fail(key, "must list at least one tensor");
  for (size_t i = 0; i < arr.size(); ++i) {
    Reader t(arr[i], r.source(), r.Field(key) + "[" + std::to_string(i) + "]");
    TensorSpec spec;
    spec.name = t.String("name");
    const std::string dt = t.String("dtype");
    auto d = ParseDType(dt);
    if (!d) t.Fail("dtype", "is '" + Printable(dt, 64) + "', accepted f32, bf16, f16, i64");
    spec.dtype = *d;
    const auto& shape = t.Array("shape");
    if (shape.empty()) t.Fail("shape", "must have at least one dimension");
    for (const auto& dim : shape) {
      if (dim.is_number_integer() && dim.get<int64_t>() > 0) {
        spec.shape.emplace_back(dim.get<int64_t>());
      } else if (dim.is_string() && kSymbols.count(dim.get<std::string>())) {
        spec.shape.emplace_back(dim.get<std::string>());
      } else {
        t.Fail("shape", "has dimension " + Shown(dim) + ", accepted a positive integer or one of B T F H W f h w");
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

std::vector<AddedToken> AddedTokensFromJson(const Reader& r, const TokenizerSpec& spec) {
  if (spec.kind != "sentencepiece") r.Fail("added_tokens", "is set for kind '" + spec.kind + "'; accepted only with 'sentencepiece'");
  const auto& arr = r.Array("added_tokens");
  if (arr.size() > 65536) r.Fail("added_tokens", "lists " + std::to_string(arr.size()) + " tokens, accepted at most 65536");
  std::vector<AddedToken> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < arr.size(); ++i) {
    Reader t(arr[i], r.source(), r.Field("added_tokens") + "[" + std::to_string(i) + "]");
    AddedToken a{t.String("content"), static_cast<int>(t.Int("id", 0, spec.vocab_size - 1))};
    if (a.content.empty() || a.content.size() > 256 || a.content.find('\0') != std::string::npos)
      t.Fail("content", "is '" + Printable(a.content, 64) + "', accepted 1 to 256 bytes without NUL");
    if (!seen.insert(a.content).second) t.Fail("content", "'" + Printable(a.content, 64) + "' is listed twice");
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace

const char* StageKindName(StageKind k) { return kStageNames[static_cast<int>(k)]; }

std::optional<StageKind> ParseStageKind(const std::string& s) {
  for (int i = 0; i < 4; ++i)
    if (s == kStageNames[i]) return static_cast<StageKind>(i);
  return std::nullopt;
}

const char* DTypeName(DType d) {
  switch (d) {
    case DType::kF32: return "f32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "f16";
    case DType::kI64: return "i64";
  }
  return "?";
}

std::optional<DType> ParseDType(const std::string& s) {
  if (s == "f32") return DType::kF32;
  if (s == "bf16") return DType::kBF16;
  if (s == "f16") return DType::kF16;
  if (s == "i64") return DType::kI64;
  return std::nullopt;
}

int64_t DTypeBytes(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kBF16: case DType::kF16: return 2;
    case DType::kI64: return 8;
  }
  return 0;
}

int64_t StageManifest::params() const {
  int64_t n = 0;
  for (const auto& p : parts) n += p.params;
  return n;
}

int64_t StageManifest::bytes() const {
  int64_t n = 0;
  for (const auto& p : parts) n += p.bytes;
  return n;
}

int StageManifest::num_blocks() const {
  int n = 0;
  for (const auto& p : parts) n += p.role == "block";
  return n;
}

std::string StageDigest(const Manifest& m, const StageManifest& s) {
  std::string key = m.name + "/" + StageKindName(s.kind);
  for (const auto& p : s.parts) key += "|" + p.file + ":" + std::to_string(p.params) + ":" + std::to_string(p.bytes);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(StableHash(key, m.seed.value_or(0))));
  return hex;
}

const StageManifest& Manifest::stage(StageKind k) const {
  auto it = stages.find(k);
  if (it == stages.end()) throw BadPackage("package '" + name + "' has no " + StageKindName(k) + " stage");
  return it->second;
}

std::string ManifestToJson(const Manifest& m) {
  ordered_json j;
  j["format"] = "reel-stage-package";
  j["format_version"] = m.format_version;
  j["name"] = m.name;
  if (!m.preset.empty()) j["preset"] = m.preset;
  if (m.seed) j["seed"] = *m.seed;
  j["image_conditioned"] = m.image_conditioned;
  ordered_json tok = {{"kind", m.tokenizer.kind}};
  if (!m.tokenizer.file.empty()) tok["file"] = m.tokenizer.file;
  tok["max_length"] = m.tokenizer.max_length;
  tok["vocab_size"] = m.tokenizer.vocab_size;
  tok["pad_id"] = m.tokenizer.pad_id;
  tok["eos_id"] = m.tokenizer.eos_id;
  if (!m.tokenizer.added_tokens.empty()) {
    ordered_json added = ordered_json::array();
    for (const auto& a : m.tokenizer.added_tokens) added.push_back({{"content", a.content}, {"id", a.id}});
    tok["added_tokens"] = added;
  }
  j["tokenizer"] = tok;
  j["vae"] = {{"spatial_compression", m.vae.spatial_compression},
              {"temporal_compression", m.vae.temporal_compression},
              {"latent_channels", m.vae.latent_channels},
              {"scaling_factor", m.vae.scaling_factor}};
  const auto& s = m.scheduler;
  j["scheduler"] = {{"kind", s.kind},
                    {"num_train_timesteps", s.num_train_timesteps},
                    {"beta_schedule", s.beta_schedule},
                    {"beta_start", s.beta_start},
                    {"beta_end", s.beta_end},
                    {"prediction_type", s.prediction_type},
                    {"timestep_spacing", s.timestep_spacing},
                    {"rescale_betas_zero_snr", s.rescale_betas_zero_snr},
                    {"set_alpha_to_one", s.set_alpha_to_one},
                    {"snr_shift_scale", s.snr_shift_scale}};
  const auto& l = m.limits;
  j["limits"] = {{"min_height", l.min_height}, {"max_height", l.max_height}, {"min_width", l.min_width},
                 {"max_width", l.max_width},   {"size_multiple", l.size_multiple}, {"max_frames", l.max_frames},
                 {"frame_step", l.frame_step}};
  const auto& d = m.defaults;
  j["defaults"] = {{"frames", d.frames}, {"height", d.height},     {"width", d.width},
                   {"steps", d.steps},   {"guidance", d.guidance}, {"fps", d.fps}};
  ordered_json stages = ordered_json::object();
  for (const auto& [kind, st] : m.stages) {
    ordered_json parts = ordered_json::array();
    for (const auto& p : st.parts)
      parts.push_back({{"role", p.role}, {"file", p.file}, {"params", p.params}, {"bytes", p.bytes}});
    ordered_json cfg = ordered_json::object();
    for (const auto& [k, v] : st.config) cfg[k] = v;
    stages[StageKindName(kind)] = {{"dtype", DTypeName(st.dtype)},
                                   {"params", st.params()},
                                   {"bytes", st.bytes()},
                                   {"parts", parts},
                                   {"inputs", TensorsToJson(st.inputs)},
                                   {"outputs", TensorsToJson(st.outputs)},
                                   {"config", cfg}};
  }
  j["stages"] = stages;
  return j.dump(2) + "\n";
}

Manifest ManifestFromJson(const std::string& text, const std::string& source) {
  ordered_json j;
  try {
    j = ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // Syntax errors, and numbers beyond a double ("1e999"), which nlohmann reports as out_of_range. Its text
    // quotes the offending token whole ("last read: '…'"), however long: the message keeps the position and what
    // was expected, one line of bounded length.
    std::string what = e.what();
    if (const size_t p = what.find("] "); what.rfind("[json.exception", 0) == 0 && p != std::string::npos)
      what.erase(0, p + 2);
    if (const size_t p = what.find("; last read: '"); p != std::string::npos) {
      const size_t q = what.find("'; expected", p);
      what = what.substr(0, p) + (q == std::string::npos ? "" : what.substr(q + 1));
    }
    throw BadPackage(source + ": not valid JSON (" + Printable(what, 200) + ")");
  }
  Reader r(j, source, "");
  if (r.String("format") != "reel-stage-package")
    r.Fail("format", "is '" + Printable(r.String("format"), 64) + "', accepted 'reel-stage-package'");
  Manifest m;
  m.format_version = static_cast<int>(r.Int("format_version", kManifestFormatVersion, kManifestFormatVersion));
  m.name = r.String("name");
  // The name is in many of Reel's messages (and is the model name clients submit): one printable line.
  if (m.name.size() > 128 || Printable(m.name, 128) != m.name)
    r.Fail("name", "is '" + Printable(m.name, 64) + "', accepted at most 128 bytes of text without control characters");
  m.preset = r.String("preset", "");
  if (r.Has("seed")) m.seed = static_cast<uint64_t>(r.Int("seed", 0, INT64_MAX));
  m.image_conditioned = r.Bool("image_conditioned");

  Reader tok = r.Object("tokenizer");
  m.tokenizer.kind = tok.String("kind");
  if (m.tokenizer.kind != "bytes" && m.tokenizer.kind != "sentencepiece")
    tok.Fail("kind", "is '" + Printable(m.tokenizer.kind, 64) + "', accepted 'bytes' or 'sentencepiece'");
  if (m.tokenizer.kind == "sentencepiece") m.tokenizer.file = tok.String("file");
  m.tokenizer.max_length = static_cast<int>(tok.Int("max_length", 2, 4096));
  m.tokenizer.vocab_size = static_cast<int>(tok.Int("vocab_size", 260, 1 << 22));
  m.tokenizer.pad_id = static_cast<int>(tok.Int("pad_id", 0, m.tokenizer.vocab_size - 1));
  m.tokenizer.eos_id = static_cast<int>(tok.Int("eos_id", 0, m.tokenizer.vocab_size - 1));
  if (tok.Has("added_tokens")) m.tokenizer.added_tokens = AddedTokensFromJson(tok, m.tokenizer);

  Reader vae = r.Object("vae");
  m.vae.spatial_compression = static_cast<int>(vae.Int("spatial_compression", 1, 64));
  m.vae.temporal_compression = static_cast<int>(vae.Int("temporal_compression", 1, 16));
  m.vae.latent_channels = static_cast<int>(vae.Int("latent_channels", 1, 1024));
  m.vae.scaling_factor = vae.Number("scaling_factor", 1e-6, 1e6);

  Reader sch = r.Object("scheduler");
  auto& s = m.scheduler;
  s.kind = sch.String("kind");
  if (s.kind != "cogvideox_ddim" && s.kind != "cogvideox_dpm")
    sch.Fail("kind", "is '" + Printable(s.kind, 64) + "', accepted 'cogvideox_ddim' or 'cogvideox_dpm'");
  s.num_train_timesteps = static_cast<int>(sch.Int("num_train_timesteps", 2, 100000));
  s.beta_schedule = sch.String("beta_schedule");
  if (s.beta_schedule != "scaled_linear" && s.beta_schedule != "linear")
    sch.Fail("beta_schedule", "is '" + Printable(s.beta_schedule, 64) + "', accepted 'scaled_linear' or 'linear'");
  s.beta_start = sch.Number("beta_start", 0, 1);
  s.beta_end = sch.Number("beta_end", 0, 1);
  s.prediction_type = sch.String("prediction_type");
  if (s.prediction_type != "v_prediction" && s.prediction_type != "epsilon")
    sch.Fail("prediction_type", "is '" + Printable(s.prediction_type, 64) + "', accepted 'v_prediction' or 'epsilon'");
  s.timestep_spacing = sch.String("timestep_spacing");
  if (s.timestep_spacing != "trailing" && s.timestep_spacing != "leading" && s.timestep_spacing != "linspace")
    sch.Fail("timestep_spacing",
             "is '" + Printable(s.timestep_spacing, 64) + "', accepted 'trailing', 'leading' or 'linspace'");
  s.rescale_betas_zero_snr = sch.Bool("rescale_betas_zero_snr");
  s.set_alpha_to_one = sch.Bool("set_alpha_to_one");
  s.snr_shift_scale = sch.Number("snr_shift_scale", 1e-3, 1e3);

  Reader lim = r.Object("limits");
  auto& l = m.limits;
  l.size_multiple = static_cast<int>(lim.Int("size_multiple", 1, 1024));
  // Every accepted size must map to whole latent pixels (h = H / spatial_compression).
  if (l.size_multiple % m.vae.spatial_compression != 0)
    lim.Fail("size_multiple", "is " + std::to_string(l.size_multiple) +
                                  ", accepted a multiple of vae.spatial_compression (" +
                                  std::to_string(m.vae.spatial_compression) + ")");
  l.min_height = static_cast<int>(lim.Int("min_height", 1, 65536));
  l.max_height = static_cast<int>(lim.Int("max_height", l.min_height, 65536));
  l.min_width = static_cast<int>(lim.Int("min_width", 1, 65536));
  l.max_width = static_cast<int>(lim.Int("max_width", l.min_width, 65536));
  l.max_frames = static_cast<int>(lim.Int("max_frames", 1, 100000));
  l.frame_step = static_cast<int>(lim.Int("frame_step", 1, 1024));
  if (l.frame_step % m.vae.temporal_compression != 0)
    lim.Fail("frame_step", "is " + std::to_string(l.frame_step) + ", accepted a multiple of vae.temporal_compression (" +
                               std::to_string(m.vae.temporal_compression) + ")");

  Reader def = r.Object("defaults");
  auto& d = m.defaults;
  // The defaults are a job the package must itself accept (package/job_request.cc checks jobs the same way).
  d.frames = static_cast<int>(def.Int("frames", 1, l.max_frames));
  if ((d.frames - 1) % l.frame_step != 0)
    def.Fail("frames", "is " + std::to_string(d.frames) + ", accepted limits.frame_step·k+1 (" +
                           std::to_string(l.frame_step) + "k+1) up to limits.max_frames (" +
                           std::to_string(l.max_frames) + ")");
  auto size = [&](const char* key, int lo, int hi) {
    const int v = static_cast<int>(def.Int(key, lo, hi));
    if (v % l.size_multiple != 0)
      def.Fail(key, "is " + std::to_string(v) + ", accepted a multiple of limits.size_multiple (" +
                        std::to_string(l.size_multiple) + ") from " + std::to_string(lo) + " to " +
                        std::to_string(hi));
    return v;
  };
  d.height = size("height", l.min_height, l.max_height);
  d.width = size("width", l.min_width, l.max_width);
  d.steps = static_cast<int>(def.Int("steps", 1, s.num_train_timesteps));
  d.guidance = def.Number("guidance", 0, 100);
  d.fps = static_cast<int>(def.Int("fps", 1, 240));

  Reader stages = r.Object("stages");
  for (auto it = stages.json().begin(); it != stages.json().end(); ++it) {
    auto kind = ParseStageKind(it.key());
    if (!kind)
      stages.Fail(it.key(), "is not a stage kind; accepted text_encoder, vae_encoder, denoiser, vae_decoder");
    Reader st = stages.Object(it.key());
    StageManifest sm;
    sm.kind = *kind;
    const std::string dt = st.String("dtype");
    auto d = ParseDType(dt);
    if (!d || *d == DType::kI64) st.Fail("dtype", "is '" + Printable(dt, 64) + "', accepted f32, bf16 or f16");
    sm.dtype = *d;
    const auto& parts = st.Array("parts");
    if (parts.empty()) st.Fail("parts", "must list at least one TorchScript file");
    int64_t params = 0, bytes = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      Reader p(parts[i], source, st.Field("parts") + "[" + std::to_string(i) + "]");
      StagePart part;
      part.role = p.String("role");
      if (part.role != "module" && part.role != "embed" && part.role != "block" && part.role != "head")
        p.Fail("role", "is '" + Printable(part.role, 64) + "', accepted module, embed, block or head");
      part.file = p.String("file");
      if (part.file.empty() || fs::path(part.file).is_absolute() || part.file.find("..") != std::string::npos)
        p.Fail("file", "is '" + Printable(part.file, 64) + "', accepted a relative path inside the package");
      part.params = p.Int("params", 0, INT64_MAX);
      part.bytes = p.Int("bytes", 0, INT64_MAX);
      // The stage's totals (StageManifest::params/bytes) must not overflow.
      for (const auto& [key, value, total] : {std::tuple{"params", part.params, &params},
                                              std::tuple{"bytes", part.bytes, &bytes}})
        if (__builtin_add_overflow(*total, value, total))
          p.Fail(key, "is " + std::to_string(value) + ": the stage's parts add up to more than " +
                          std::to_string(INT64_MAX));
      sm.parts.push_back(part);
    }
    const bool single = sm.parts.size() == 1 && sm.parts[0].role == "module";
    const bool blocked = sm.parts.size() >= 2 && sm.parts.front().role == "embed" && sm.parts.back().role == "head";
    if (!single && !blocked)
      st.Fail("parts", "must be one 'module' or 'embed', zero or more 'block', then 'head'");
    if (st.Int("params", 0, INT64_MAX) != sm.params())
      st.Fail("params", "is " + std::to_string(st.Int("params", 0, INT64_MAX)) + " but its parts add up to " +
                            std::to_string(sm.params()));
    if (st.Int("bytes", 0, INT64_MAX) != sm.bytes())
      st.Fail("bytes", "is " + std::to_string(st.Int("bytes", 0, INT64_MAX)) + " but its parts add up to " +
                           std::to_string(sm.bytes()));
    sm.inputs = TensorsFromJson(st, "inputs");
    sm.outputs = TensorsFromJson(st, "outputs");
    if (st.Has("config")) {
      Reader cfg = st.Object("config");
      for (auto c = cfg.json().begin(); c != cfg.json().end(); ++c) sm.config[c.key()] = cfg.Number(c.key(), -1e18, 1e18);
    }
    m.stages[*kind] = std::move(sm);
  }
  for (StageKind k : {StageKind::kTextEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder})
    if (!m.stages.count(k)) stages.Fail(StageKindName(k), "is missing: every pipeline needs it");
  if (m.image_conditioned && !m.stages.count(StageKind::kVaeEncoder))
    stages.Fail("vae_encoder", "is missing: an image-conditioned pipeline needs it");
  return m;
}

Manifest LoadManifest(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw BadPackage("package " + dir.string() + ": not a directory");
  const fs::path file = dir / kManifestFileName;
  std::ifstream in(file, std::ios::binary);
  if (!in) throw BadPackage("package " + dir.string() + ": " + kManifestFileName + " is missing or unreadable");
  std::stringstream ss;
  ss << in.rdbuf();
  Manifest m = ManifestFromJson(ss.str(), file.string());
  for (const auto& [kind, st] : m.stages) {
    for (const auto& p : st.parts) {
      const fs::path f = dir / p.file;
      if (!fs::is_regular_file(f, ec))
        throw BadPackage("package " + dir.string() + ": " + p.file + " (stages." + StageKindName(kind) +
                         ") is missing");
      if (fs::file_size(f, ec) == 0)
        throw BadPackage("package " + dir.string() + ": " + p.file + " (stages." + StageKindName(kind) +
                         ") is empty");
    }
  }
  if (m.tokenizer.kind == "sentencepiece" && !fs::is_regular_file(dir / m.tokenizer.file, ec))
    throw BadPackage("package " + dir.string() + ": tokenizer file " + m.tokenizer.file + " is missing");
  return m;
}

void SaveManifest(const Manifest& m, const fs::path& dir) {
  const fs::path file = dir / kManifestFileName;
  const fs::path tmp = dir / (std::string(kManifestFileName) + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << ManifestToJson(m);
    if (!out) throw IoError("cannot write " + tmp.string());
  }
  fs::rename(tmp, file);
}

std::map<std::string, int64_t> JobShape::symbols(const VaeSpec& vae) const {
  return {{"B", batch},
          {"T", text_tokens},
          {"F", frames},
          {"H", height},
          {"W", width},
          {"f", (frames - 1) / vae.temporal_compression + 1},
          {"h", height / vae.spatial_compression},
          {"w", width / vae.spatial_compression}};
}

std::vector<int64_t> ResolveShape(const TensorSpec& spec, const std::map<std::string, int64_t>& symbols) {
  std::vector<int64_t> out;
  for (const auto& d : spec.shape) {
    if (std::holds_alternative<int64_t>(d))
      out.push_back(std::get<int64_t>(d));
    else
      out.push_back(symbols.at(std::get<std::string>(d)));
  }
  return out;
}

std::string FormatDims(const std::vector<Dim>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::holds_alternative<int64_t>(dims[i]) ? std::to_string(std::get<int64_t>(dims[i]))
                                                   : std::get<std::string>(dims[i]);
  }
  return s + "]";
}

std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace reel
