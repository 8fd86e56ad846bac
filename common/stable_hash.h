// A stable 64-bit hash (FNV-1a): per-file seeds of synthetic weights and stage digests, the same in every build and
// on every machine, and torch-free so the planner and the coordinator compute the same digests as the runtime.
#pragma once

#include <cstdint>
#include <string>

namespace reel {

inline uint64_t StableHash(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace reel
