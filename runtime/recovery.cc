#include "runtime/recovery.h"

#include <fmt/format.h>

namespace reel {

namespace {

std::string VaeString(const VaeDecodeOptions& v) {
  const std::string s = VaeDecodeName(v);
  return s.empty() ? "whole" : s;
}

}  // namespace

std::optional<RunOptions> CheaperAfterOom(const RunOptions& options, const Manifest& manifest, StageKind failed,
                                          std::string* why, int max_side) {
  RunOptions o = options;
  // Another stage's resident weights first: moving them off between runs costs one copy per run.
  std::optional<StageKind> largest;
  for (const auto& [k, st] : manifest.stages) {
    if (k == failed) continue;
    auto it = o.offload.find(k);
    if (it != o.offload.end() && it->second.mode != OffloadMode::kNone) continue;
    if (!largest || st.bytes() > manifest.stages.at(*largest).bytes()) largest = k;
  }
  if (largest) {
    o.offload[*largest].mode = OffloadMode::kModel;
    if (why) *why = fmt::format("{}: none -> model", StageKindName(*largest));
    return o;
  }
  int blocks = 0;
  if (auto it = manifest.stages.find(failed); it != manifest.stages.end())
    for (const auto& p : it->second.parts) blocks += p.role == "block";
  Offload& off = o.offload[failed];
  const std::string before = off.ToString();
  const std::string name = StageKindName(failed);
  if (failed == StageKind::kVaeDecoder) {
    VaeDecodeOptions& v = o.vae;
    const std::string was = VaeString(v);
    // A tile as large as the frame decodes it whole: no saving, so the ladder goes past it.
    const auto splits = [&](int tile) { return max_side <= 0 || tile < max_side; };
    int next_tile = v.tile == 0 ? 256 : v.tile / 2;
    while (next_tile >= 64 && !splits(next_tile)) next_tile /= 2;
    if (v.tile == 0 && next_tile >= 64) {
      v.tile = next_tile;
    } else if (!v.slicing) {
      v.slicing = true;
    } else if (v.tile > 64 && next_tile >= 64) {
      v.tile = next_tile;
      v.tile_w = 0;  // halving a rectangular tile goes square
    } else if (off.mode == OffloadMode::kNone) {
      off.mode = OffloadMode::kModel;
      if (why) *why = fmt::format("{}: {} -> model", name, before);
      return o;
    } else {
      return std::nullopt;
    }
    if (why) *why = fmt::format("{}: {} -> {}", name, was, VaeString(v));
    return o;
  }
  if (blocks > 0) {
    switch (off.mode) {
      case OffloadMode::kNone:
      case OffloadMode::kModel:
        off.mode = OffloadMode::kBlock;
        off.blocks = std::max(1, (blocks + 1) / 2);
        break;
      case OffloadMode::kBlock:
        if (off.blocks > 1) {
          off.blocks = std::max(1, off.blocks / 2);
        } else {
          off.mode = OffloadMode::kSequential;
        }
        break;
      case OffloadMode::kSequential:
        return std::nullopt;
    }
  } else if (off.mode == OffloadMode::kNone) {
    off.mode = OffloadMode::kModel;
  } else {
    return std::nullopt;
  }
  if (why) *why = fmt::format("{}: {} -> {}", name, before, off.ToString());
  return o;
}

}  // namespace reel
