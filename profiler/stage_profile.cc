// JSON form of stage profiles and run reports, with validation at the point data enters from files or rows.
#include "profiler/stage_profile.h"

#include <array>
#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace reel {
namespace {

using nlohmann::json;

bool OneOf(const std::string& v, std::initializer_list<const char*> accepted) {
  for (const char* a : accepted)
    if (v == a) return true;
  return false;
}

std::string Joined(std::initializer_list<const char*> accepted) {
  std::string s;
  for (const char* a : accepted) s += (s.empty() ? "" : "|") + std::string(a);
  return s;
}

// Reads one field; a missing field keeps the default unless `required`, a mistyped one always fails, so a
// report written by a newer Reel with extra fields still loads.
class Reader {
 public:
  Reader(const json& j, const std::string& what) : j_(j), what_(what) {
    if (!j.is_object()) throw InvalidArgument(what + ": expected a JSON object, got " + j.type_name());
  }
  void Str(const char* key, std::string& out, bool required = false) {
    if (const json* v = Find(key, required)) {
      if (!v->is_string()) Fail(key, "a string", *v);
      out = v->get<std::string>();
    }
  }
  template <typename Int>
  void Integer(const char* key, Int& out, bool required = false) {
    if (const json* v = Find(key, required)) {
      if (!v->is_number_integer()) Fail(key, "an integer", *v);
      out = v->get<Int>();
    }
  }
  void Real(const char* key, double& out, bool required = false) {
    if (const json* v = Find(key, required)) {
      if (!v->is_number()) Fail(key, "a number", *v);
      out = v->get<double>();
    }
  }
  void Reals(const char* key, std::vector<double>& out) {
    if (const json* v = Find(key, false)) {
      if (!v->is_array()) Fail(key, "an array of numbers", *v);
      out.clear();
      for (const json& e : *v) {
        if (!e.is_number()) Fail(key, "an array of numbers", *v);
        out.push_back(e.get<double>());
      }
    }
  }

 private:
  const json* Find(const char* key, bool required) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (required) throw InvalidArgument(what_ + ": field '" + key + "' is missing");
      return nullptr;
    }
    return &*it;
  }
  [[noreturn]] void Fail(const char* key, const char* expected, const json& v) {
    throw InvalidArgument(what_ + ": field '" + key + "' must be " + expected + ", got " + v.dump());
  }
  const json& j_;
  const std::string& what_;
};

}  // namespace

void StageProfile::Validate(const std::string& what) const {
  const auto check = [&](bool ok, const std::string& field, const std::string& value, const std::string& accepted) {
    if (!ok) throw InvalidArgument(what + ": " + field + " '" + value + "': accepted " + accepted);
  };
  static constexpr std::initializer_list<const char*> kStages = {"text_encoder", "vae_encoder", "denoiser",
                                                                 "vae_decoder"};
  static constexpr std::initializer_list<const char*> kDevices = {"cpu", "cuda"};
  static constexpr std::initializer_list<const char*> kDtypes = {"f32", "bf16", "f16", "int8"};
  static constexpr std::initializer_list<const char*> kOutcomes = {"ok", "oom", "error"};
  check(OneOf(stage, kStages), "stage", stage, Joined(kStages));
  check(!stage_digest.empty(), "stage_digest", stage_digest, "a non-empty digest of the stage's weights");
  check(OneOf(device_kind, kDevices), "device_kind", device_kind, Joined(kDevices));
  check(OneOf(dtype, kDtypes), "dtype", dtype, Joined(kDtypes));
  check(OneOf(outcome, kOutcomes), "outcome", outcome, Joined(kOutcomes));
  check(!strategy.empty(), "strategy", strategy, "a strategy such as none, model, block:2 or tiling=256");
  const std::array<std::pair<const char*, int64_t>, 10> counts = {{{"device_capacity_bytes", device_capacity_bytes},
                                                                  {"frames", frames},
                                                                  {"height", height},
                                                                  {"width", width},
                                                                  {"steps", steps},
                                                                  {"batch", batch},
                                                                  {"peak_device_bytes", peak_device_bytes},
                                                                  {"base_device_bytes", base_device_bytes},
                                                                  {"peak_host_rss_bytes", peak_host_rss_bytes},
                                                                  {"pinned_host_bytes", pinned_host_bytes}}};
  for (const auto& [field, v] : counts) check(v >= 0, field, std::to_string(v), "0 or more");
  check(copied_bytes >= 0, "copied_bytes", std::to_string(copied_bytes), "0 or more");
  const std::array<std::pair<const char*, double>, 4> times = {{{"load_seconds", load_seconds},
                                                               {"copy_seconds", copy_seconds},
                                                               {"compute_seconds", compute_seconds},
                                                               {"wall_seconds", wall_seconds}}};
  for (const auto& [field, v] : times) check(v >= 0, field, std::to_string(v), "0 or more seconds");
  for (double s : step_seconds) check(s >= 0, "step_seconds", std::to_string(s), "0 or more seconds");
  for (double s : block_seconds) check(s >= 0, "block_seconds", std::to_string(s), "0 or more seconds");
}

nlohmann::json StageProfile::ToJson() const {
  return {{"stage", stage},
          {"stage_digest", stage_digest},
          {"device_kind", device_kind},
          {"device_name", device_name},
          {"device_capacity_bytes", device_capacity_bytes},
          {"strategy", strategy},
          {"dtype", dtype},
          {"frames", frames},
          {"height", height},
          {"width", width},
          {"steps", steps},
          {"batch", batch},
          {"outcome", outcome},
          {"error", error},
          {"peak_device_bytes", peak_device_bytes},
          {"base_device_bytes", base_device_bytes},
          {"peak_host_rss_bytes", peak_host_rss_bytes},
          {"pinned_host_bytes", pinned_host_bytes},
          {"copied_bytes", copied_bytes},
          {"load_seconds", load_seconds},
          {"copy_seconds", copy_seconds},
          {"compute_seconds", compute_seconds},
          {"wall_seconds", wall_seconds},
          {"step_seconds", step_seconds},
          {"block_seconds", block_seconds},
          {"recorded_at", recorded_at}};
}

StageProfile StageProfile::FromJson(const nlohmann::json& j, const std::string& what) {
  StageProfile p;
  Reader r(j, what);
  r.Str("stage", p.stage, true);
  r.Str("stage_digest", p.stage_digest, true);
  r.Str("device_kind", p.device_kind, true);
  r.Str("device_name", p.device_name);
  r.Integer("device_capacity_bytes", p.device_capacity_bytes);
  r.Str("strategy", p.strategy, true);
  r.Str("dtype", p.dtype, true);
  r.Integer("frames", p.frames);
  r.Integer("height", p.height);
  r.Integer("width", p.width);
  r.Integer("steps", p.steps);
  r.Integer("batch", p.batch);
  r.Str("outcome", p.outcome, true);
  r.Str("error", p.error);
  r.Integer("peak_device_bytes", p.peak_device_bytes);
  if (j.contains("base_device_bytes")) r.Integer("base_device_bytes", p.base_device_bytes);  // absent before v2
  r.Integer("peak_host_rss_bytes", p.peak_host_rss_bytes);
  r.Integer("pinned_host_bytes", p.pinned_host_bytes);
  r.Integer("copied_bytes", p.copied_bytes);
  r.Real("load_seconds", p.load_seconds);
  r.Real("copy_seconds", p.copy_seconds);
  r.Real("compute_seconds", p.compute_seconds);
  r.Real("wall_seconds", p.wall_seconds);
  r.Reals("step_seconds", p.step_seconds);
  r.Reals("block_seconds", p.block_seconds);
  r.Integer("recorded_at", p.recorded_at);
  p.Validate(what);
  return p;
}

nlohmann::json RunReport::ToJson() const {
  json stages_json = json::array();
  for (const auto& s : stages) stages_json.push_back(s.ToJson());
  return {{"model", model},   {"frames", frames},   {"height", height},
          {"width", width},   {"steps", steps},     {"seed", seed},
          {"total_seconds", total_seconds},         {"output", output},
          {"stages", std::move(stages_json)}};
}

RunReport RunReport::FromJson(const nlohmann::json& j, const std::string& what) {
  RunReport rep;
  Reader r(j, what);
  r.Str("model", rep.model, true);
  r.Integer("frames", rep.frames);
  r.Integer("height", rep.height);
  r.Integer("width", rep.width);
  r.Integer("steps", rep.steps);
  r.Integer("seed", rep.seed);
  r.Real("total_seconds", rep.total_seconds);
  r.Str("output", rep.output);
  if (auto it = j.find("stages"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) throw InvalidArgument(what + ": field 'stages' must be an array, got " + it->dump());
    for (size_t i = 0; i < it->size(); ++i)
      rep.stages.push_back(StageProfile::FromJson((*it)[i], what + " stages[" + std::to_string(i) + "]"));
  }
  return rep;
}

void RunReport::WriteReport(const std::filesystem::path& path) const {
  AtomicFile file(path, "--report");
  {
    std::ofstream out(file.temp_path());
    out << ToJson().dump(2) << '\n';
    out.close();
    if (!out) throw IoError("--report " + path.string() + ": cannot write " + file.temp_path().string());
  }
  file.Commit();
}

void WriteReport(const RunReport& report, const std::filesystem::path& path) { report.WriteReport(path); }

}  // namespace reel
