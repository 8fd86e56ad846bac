// Where stages go before the planner decides: an explicit placement file naming, per worker, the stages it holds
// and how. Format (docs/COORDINATOR.md):
//   {"workers": [{"name": "w0", "stages": ["text_encoder", "vae_decoder"]},
//                {"name": "w1", "stages": ["denoiser"], "strategy": {"denoiser": {"offload": "block:2"}}}]}
// A worker the file does not name holds every stage with no offload.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "package/manifest.h"
#include "reel/v1/types.pb.h"

namespace reel {

struct PlacementEntry {
  std::string name;
  std::vector<std::pair<StageKind, reel::v1::StageStrategy>> stages;
};

struct Placement {
  std::vector<PlacementEntry> workers;
  const PlacementEntry* Find(const std::string& name) const;
};

// Throws InvalidArgument naming the file, the field and what is accepted.
Placement ParsePlacement(const std::string& text, const std::string& source);
Placement LoadPlacement(const std::string& path);

}  // namespace reel
