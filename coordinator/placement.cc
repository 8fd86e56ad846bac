#include "coordinator/placement.h"

#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace reel {

using json = nlohmann::json;

const PlacementEntry* Placement::Find(const std::string& name) const {
  for (const auto& w : workers)
    if (w.name == name) return &w;
  return nullptr;
}

namespace {

[[noreturn]] void Bad(const std::string& source, const std::string& field, const std::string& what) {
  throw InvalidArgument(fmt::format("--placement {}: {} {}", source, field, what));
}

reel::v1::StageStrategy StrategyFrom(const json& j, const std::string& source, const std::string& field,
                                     StageKind kind) {
  reel::v1::StageStrategy s;
  if (!j.is_object()) Bad(source, field, "must be an object");
  for (const auto& [key, v] : j.items()) {
    const std::string f = field + "." + key;
    if (key == "offload") {
      if (!v.is_string()) Bad(source, f, "must be a string: none, model, block:K or sequential");
      s.set_offload(v.get<std::string>());
    } else if (key == "dtype") {
      const auto d = v.is_string() ? ParseDType(v.get<std::string>()) : std::nullopt;
      if (!d || *d == DType::kI64) Bad(source, f, "accepted f32, bf16 or f16");
      s.set_dtype(v.get<std::string>());
    } else if (key == "weights") {
      if (!v.is_string() || (v != "int8" && v != "float")) Bad(source, f, "accepted int8 or float");
      s.set_int8_weights(v == "int8");
    } else if (key == "vae_slicing" && kind == StageKind::kVaeDecoder) {
      if (!v.is_boolean()) Bad(source, f, "accepted true or false");
      s.set_vae_slicing(v.get<bool>());
    } else if (key == "vae_tiling" && kind == StageKind::kVaeDecoder) {
      if (!v.is_number_integer() || v.get<int>() < 16 || v.get<int>() % 8 != 0)
        Bad(source, f, "accepted a tile size in pixels, a multiple of 8, at least 16");
      s.set_vae_tile(v.get<int>());
    } else {
      Bad(source, f,
          kind == StageKind::kVaeDecoder ? "is unknown; accepted offload, dtype, weights, vae_slicing, vae_tiling"
                                         : "is unknown; accepted offload, dtype, weights");
    }
  }
  return s;
}

}  // namespace

Placement ParsePlacement(const std::string& text, const std::string& source) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw InvalidArgument(fmt::format("--placement {}: not valid JSON: {}", source, e.what()));
  }
  if (!doc.is_object() || !doc.contains("workers") || !doc["workers"].is_array())
    Bad(source, "workers", "must be a list of {\"name\": ..., \"stages\": [...]}");
  Placement p;
  std::set<std::string> names;
  for (size_t i = 0; i < doc["workers"].size(); ++i) {
    const json& w = doc["workers"][i];
    const std::string field = fmt::format("workers[{}]", i);
    if (!w.is_object() || !w.contains("name") || !w["name"].is_string() || w["name"].get<std::string>().empty())
      Bad(source, field + ".name", "must be a worker's --name");
    PlacementEntry e;
    e.name = w["name"].get<std::string>();
    if (!names.insert(e.name).second) Bad(source, field + ".name", fmt::format("'{}' appears twice", e.name));
    if (!w.contains("stages") || !w["stages"].is_array() || w["stages"].empty())
      Bad(source, field + ".stages", "must list text_encoder, vae_encoder, denoiser and/or vae_decoder");
    const json strategies = w.value("strategy", json::object());
    if (!strategies.is_object()) Bad(source, field + ".strategy", "must be an object keyed by stage");
    for (size_t k = 0; k < w["stages"].size(); ++k) {
      const json& s = w["stages"][k];
      const auto kind = s.is_string() ? ParseStageKind(s.get<std::string>()) : std::nullopt;
      if (!kind)
        Bad(source, fmt::format("{}.stages[{}]", field, k),
            "accepted text_encoder, vae_encoder, denoiser or vae_decoder");
      reel::v1::StageStrategy strategy;
      if (strategies.contains(s.get<std::string>()))
        strategy = StrategyFrom(strategies[s.get<std::string>()], source,
                                fmt::format("{}.strategy.{}", field, s.get<std::string>()), *kind);
      e.stages.emplace_back(*kind, strategy);
    }
    for (const auto& [key, v] : strategies.items()) {
      const auto kind = ParseStageKind(key);
      bool listed = false;
      for (const auto& [k, st] : e.stages) listed = listed || (kind && k == *kind);
      if (!listed) Bad(source, fmt::format("{}.strategy.{}", field, key), "names a stage the worker does not hold");
    }
    p.workers.push_back(std::move(e));
  }
  return p;
}

Placement LoadPlacement(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument(fmt::format("--placement {}: cannot read the file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParsePlacement(ss.str(), path);
}

}  // namespace reel
