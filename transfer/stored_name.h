// The name a worker stores a stage run's output under: NAME@ATTEMPT, so the outputs of a superseded run of a stage
// (a worker declared lost that comes back and finishes) are never fetched in place of a later run's.
#pragma once

#include <cstdint>
#include <string>

namespace reel {

inline std::string StoredTensorName(const std::string& name, uint64_t attempt) {
  return attempt == 0 ? name : name + "@" + std::to_string(attempt);
}

}  // namespace reel
