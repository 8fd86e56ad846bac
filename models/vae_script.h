// The synthetic CogVideoX VAE (AutoencoderKLCogVideoX, ../shared/COGVIDEOX.md §5) as two TorchScript modules with
// seeded random weights: the encoder maps video to posterior moments, the decoder maps latents back to video.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "models/presets.h"
#include "models/script_builder.h"

namespace reel {

// Encoder module. Weights are stored as `dtype`; every input is cast to it inside.
//   forward(self, video: Tensor) -> Tensor
//     video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H and W multiples of 8 → moments [B, 2·latent, (F−1)/4+1, H/8, W/8]
//     in float32: mean ‖ logvar on dim 1, logvar clamped to [−30, 20]. Frames go through encode_chunk in the chunks
//     of VaeFrameChunks(F, cfg.encode_frame_batch) with one conv cache threaded through them.
//   encode_chunk(self, x: Tensor, cache: Dict[str, Tensor]) -> Tensor
//     One chunk of frames → its moments (float32, logvar clamped); reads and updates `cache` (one entry per causal conv).
torch::jit::Module BuildVaeEncoder(const VaeConfig& cfg, uint64_t seed, torch::Dtype dtype);

// Decoder module. Weights are stored as `dtype`; z is cast to it inside.
//   forward(self, z: Tensor) -> Tensor
//     z [B, latent, f, h, w] (already divided by the scaling factor) → video [B, 3, frames, 8h, 8w] in float32, not
//     clamped or rescaled (the caller does x·0.5+0.5). Decodes the chunks of VaeFrameChunks(f, cfg.decode_latent_batch)
//     with decode_chunk and one conv cache. As in diffusers, an odd chunk of n latents gives 4(n−1)+1 frames and an
//     even chunk 4n, so odd f gives 4(f−1)+1 frames (13 → 3,2,2,2,2,2 → 9+5·8 = 49) and even f gives 4f.
//   decode_chunk(self, z: Tensor, cache: Dict[str, Tensor]) -> Tensor
//     One chunk of latent frames → its video frames (float32); reads and updates `cache`.
torch::jit::Module BuildVaeDecoder(const VaeConfig& cfg, uint64_t seed, torch::Dtype dtype);

// The same modules' weights and source, added to `b` (what BuildVaeEncoder/BuildVaeDecoder finish).
void DefineVaeEncoder(const VaeConfig& cfg, ScriptBuilder& b);
void DefineVaeDecoder(const VaeConfig& cfg, ScriptBuilder& b);

// Chunks [start, end) of diffusers' _encode/_decode frame batching: n = max(frames / batch, 1), rem = frames % batch;
// chunk 0 is [0, batch + rem) and chunk i is [batch·i + rem, batch·(i+1) + rem). The modules' forward use the same rule.
std::vector<std::pair<int64_t, int64_t>> VaeFrameChunks(int64_t frames, int64_t batch);

}  // namespace reel
