// Memory strategies per stage, as users name them on the command line. Torch-free.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "package/manifest.h"

namespace reel {

enum class OffloadMode {
  kNone,        // weights resident on the device for the whole run
  kModel,       // the stage's weights on the device only while the stage runs (diffusers' model CPU offload)
  kBlock,       // K blocks resident, the next one copied in while the current one computes
  kSequential,  // one block at a time, copied when needed, no overlap (the slow baseline)
};

struct Offload {
  OffloadMode mode = OffloadMode::kNone;
  int blocks = 1;  // K for kBlock
  std::string ToString() const;  // "none", "model", "block:2", "sequential"
};

// Parses "none|model|block[:K]|sequential"; InvalidArgument naming `flag` otherwise.
Offload ParseOffload(const std::string& value, const std::string& flag);

// A flag that applies to all stages ("bf16") or per stage ("denoiser=bf16,vae_decoder=f32").
// Returns the value per stage kind; a bare value sets every kind in `kinds`.
std::map<StageKind, std::string> ParsePerStage(const std::string& value, const std::string& flag);

}  // namespace reel
