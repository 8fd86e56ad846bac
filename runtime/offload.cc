#include "runtime/offload.h"

#include <fmt/format.h>

#include "common/error.h"
#include "common/split.h"

namespace reel {

std::string Offload::ToString() const {
  switch (mode) {
    case OffloadMode::kNone: return "none";
    case OffloadMode::kModel: return "model";
    case OffloadMode::kBlock: return fmt::format("block:{}", blocks);
    case OffloadMode::kSequential: return "sequential";
  }
  return "?";
}

Offload ParseOffload(const std::string& value, const std::string& flag) {
  Offload o;
  if (value == "none") return o;
  if (value == "model") {
    o.mode = OffloadMode::kModel;
    return o;
  }
  if (value == "sequential") {
    o.mode = OffloadMode::kSequential;
    return o;
  }
  if (value == "block" || value.rfind("block:", 0) == 0) {
    o.mode = OffloadMode::kBlock;
    if (value.size() > 6) {
      try {
        size_t used = 0;
        o.blocks = std::stoi(value.substr(6), &used);
        if (used != value.size() - 6) o.blocks = 0;
      } catch (const std::exception&) {
        o.blocks = 0;
      }
    }
    if (o.blocks >= 1 && o.blocks <= 1000) return o;
  }
  throw InvalidArgument(fmt::format("{} {}: accepted none, model, block:K (K resident blocks, 1..1000) or sequential",
                                    flag, value));
}

std::map<StageKind, std::string> ParsePerStage(const std::string& value, const std::string& flag) {
  std::map<StageKind, std::string> out;
  if (value.find('=') == std::string::npos) {
    for (StageKind k : {StageKind::kTextEncoder, StageKind::kVaeEncoder, StageKind::kDenoiser, StageKind::kVaeDecoder})
      out[k] = value;
    return out;
  }
  for (const std::string& item : SplitList(value)) {
    const size_t eq = item.find('=');
    const auto kind = eq == std::string::npos ? std::nullopt : ParseStageKind(item.substr(0, eq));
    if (!kind)
      throw InvalidArgument(fmt::format("{} {}: '{}' is not STAGE=VALUE with STAGE one of text_encoder, vae_encoder, "
                                        "denoiser, vae_decoder",
                                        flag, value, item));
    out[*kind] = item.substr(eq + 1);
  }
  return out;
}

}  // namespace reel
