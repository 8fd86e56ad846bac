// The VAE decoder's memory strategies (diffusers' enable_slicing / enable_tiling, ../shared/COGVIDEOX.md §5.4) as
// plain C++ over a loaded decoder module: frame chunks with a carried conv cache, batch slicing, blended spatial tiles.
#pragma once

#include <functional>
#include <string>

#include <torch/script.h>

namespace reel {

struct VaeDecodeOptions {
  bool slicing = false;  // decode latent frames chunk by chunk, carrying the causal conv cache; move each chunk's
                         // output off the device at once; with batch > 1, each batch element on its own
  int tile = 0;          // 0 = no tiling; else the tile size in PIXELS (sample space), e.g. 256; latent tile = tile / 8
  int tile_w = 0;        // the tile's width when it differs from its height (`tile`); 0 = square. diffusers'
                         // enable_tiling() takes half the VAE's sample size, 240 × 360 for CogVideoX
  double overlap_h = 1.0 / 6, overlap_w = 1.0 / 5;  // diffusers' overlap factors
};

// "slicing", "tiling=256", "slicing+tiling=256", "tiling=240x360", or "" for whole decoding: how strategies and
// profiles name it.
std::string VaeDecodeName(const VaeDecodeOptions& opts);

// Throws InvalidArgument unless `tile` (and `tile_w`) is 0 or a multiple of 8 that is at least 16, and each overlap
// leaves a tile stride of at least one latent.
void ValidateVaeDecodeOptions(const VaeDecodeOptions& opts);

// Decodes z [B, lc, f, h, w] (already divided by the scaling factor) with the decoder module (forward, and
// decode_chunk(z, cache) for slicing and tiling; see models/vae_script.h) into video [B, 3, F, 8h, 8w].
// `to_host` is applied to every piece of output as soon as it is produced (the runtime uses it to move bytes off a
// device and out of device accounting); the result is assembled from those host pieces, on their device and dtype.
// Tiling blends overlapping tiles in place, so it may modify the tensors `to_host` returned.
//   - No options: to_host(decoder.forward(z)), one call.
//   - slicing: decode_chunk over VaeFrameChunks(f, 2) with one cache per batch element; on CPU bit-identical to
//     forward of each batch element alone (LibTorch's conv3d gives batch-dependent rounding, so a batch-2 forward
//     differs in the last bits). One to_host call per chunk per batch element.
//   - tile: when h or w exceeds the latent tile, diffusers' tiled_decode: tiles of tile/8 (× tile_w/8) latents every
//     stride = int(tile/8 · (1 − overlap)) latents, each decoded in frame chunks with its own cache (and per batch
//     element with slicing), blended linearly over (tile − 8·stride) pixels with the tile above, then the tile to
//     the left, keeping 8·stride pixels of each. One to_host call per chunk per tile (per batch element with
//     slicing). A latent that fits in one tile decodes as with slicing, equal to forward.
// At most one chunk's activations and one conv cache live on the device at a time.
torch::Tensor DecodeVae(torch::jit::Module& decoder, const torch::Tensor& z, const VaeDecodeOptions& opts,
                        const std::function<torch::Tensor(const torch::Tensor&)>& to_host);

}  // namespace reel
