// What a run does after a stage runs out of device memory: retry with the next cheaper choice for that stage
// (fewer resident blocks, then VAE tiling and slicing), so the job completes instead of dying at the decode.
#pragma once

#include <optional>
#include <string>

#include "runtime/pipeline.h"

namespace reel {

// `options` one step cheaper for the device after stage `failed` ran out of memory, or nullopt when nothing is
// left to give. First, the largest other stage kept resident (none) leaves the device between its runs (model):
// its weights were in the way. Then the failed stage itself: none/model → block:⌈n/2⌉ → … → block:1 →
// sequential for stages with blocks; for the VAE decoder tiling=256 → +slicing → tiles of 128, then 64, then
// model offload. Given the job's larger pixel side `max_side`, tile sizes that would not split the frame (no
// saving) are skipped. `why` says what changed ("text_encoder: none -> model").
std::optional<RunOptions> CheaperAfterOom(const RunOptions& options, const Manifest& manifest, StageKind failed,
                                          std::string* why, int max_side = 0);

}  // namespace reel
