#include "runtime/vae_decode.h"

#include "runtime/device_memory.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/error.h"
#include "models/vae_script.h"

namespace reel {
namespace {

using ToHost = std::function<torch::Tensor(const torch::Tensor&)>;

constexpr int64_t kSpatialCompression = 8;
// diffusers' num_latent_frames_batch_size; the decoder modules' forward chunks the same way, which is what makes the
// chunked paths bit-identical to forward.
constexpr int64_t kLatentFrameBatch = 2;

// One spatial axis of the tiling. diffusers' original tiled_decode blends int(tile · overlap) pixels and keeps
// tile − blend; that equals the pixel overlap of neighbouring tiles, tile − 8·stride, only at its default sizes
// (240/360 pixels). At other sizes it blends misaligned rows and places the kept pieces off their tiles' positions
// (tile 64: blend 10 of a 16-pixel overlap, pieces shifted 6 pixels per tile; PSNR against the untiled output falls
// from ~24 to ~9 dB on the tiny decoder). So the blend is derived from the stride, as later diffusers does with
// tile_sample_stride_*: the same numbers at the default sizes, aligned at every size.
struct TileAxis {
  int64_t latent_tile = 0;    // latents per tile
  int64_t latent_stride = 0;  // latents between tile starts
  int64_t blend = 0;          // pixels blended with the previous tile: the overlap, 8 · (latent_tile − latent_stride)
  int64_t keep = 0;           // pixels kept per tile: 8 · latent_stride
};

TileAxis MakeAxis(int tile, double overlap) {
  TileAxis a;
  a.latent_tile = tile / kSpatialCompression;
  a.latent_stride = static_cast<int64_t>(static_cast<double>(a.latent_tile) * (1.0 - overlap));
  a.blend = kSpatialCompression * (a.latent_tile - a.latent_stride);
  a.keep = kSpatialCompression * a.latent_stride;
  return a;
}

int TileWidth(const VaeDecodeOptions& o) { return o.tile_w > 0 ? o.tile_w : o.tile; }

void CheckOverlap(const char* name, double overlap, int tile) {
  if (!(overlap >= 0.0 && overlap < 1.0) || (tile > 0 && MakeAxis(tile, overlap).latent_stride < 1)) {
    throw InvalidArgument(fmt::format(
        "VaeDecodeOptions.{} {}: accepted a fraction in [0, 1) that leaves a tile stride of at least one latent",
        name, overlap));
  }
}

// diffusers' blend_v / blend_h, vectorised: over the first e = min(extent, both lengths) positions along `dim`,
// b ← a[last e] · (1 − y/e) + b · (y/e), in place on b. The weights are computed in double and rounded to b's dtype,
// as the Python float scalars of diffusers' per-row loop are, so the result is the same bit for bit.
void Blend(const torch::Tensor& a, torch::Tensor& b, int64_t dim, int64_t extent) {
  const int64_t e = std::min({a.size(dim), b.size(dim), extent});
  if (e <= 0) return;
  HostScope host;  // blending works on pieces already copied off the device
  std::vector<double> cur(e), prev(e);
  for (int64_t y = 0; y < e; ++y) {
    cur[y] = static_cast<double>(y) / static_cast<double>(e);
    prev[y] = 1.0 - cur[y];
  }
  std::vector<int64_t> shape(b.dim(), 1);
  shape[dim] = e;
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor w_cur = torch::tensor(cur, opts).to(b.options()).view(shape);
  const torch::Tensor w_prev = torch::tensor(prev, opts).to(b.options()).view(shape);
  torch::Tensor head = b.narrow(dim, 0, e);
  head.copy_(a.narrow(dim, a.size(dim) - e, e) * w_prev + head * w_cur);
}

class Decoder {
 public:
  Decoder(torch::jit::Module& module, const VaeDecodeOptions& opts, const ToHost& to_host)
      : opts_(opts), to_host_(to_host) {
    auto method = module.find_method("decode_chunk");
    if (!method) {
      throw BadPackage(
          "vae_decoder module has no decode_chunk(z, cache) method, which VAE slicing and tiling need (see "
          "docs/STAGE_PACKAGE.md)");
    }
    decode_chunk_.emplace(std::move(*method));
  }

  // The whole batch, or each batch element on its own when slicing. The host output is allocated once the first
  // element has given its size, so the batch is never concatenated.
  torch::Tensor Decode(const torch::Tensor& z) {
    const int64_t batch = z.size(0);
    if (!opts_.slicing || batch == 1) return DecodeSlice(z);
    torch::Tensor out;
    for (int64_t i = 0; i < batch; ++i) {
      const torch::Tensor piece = DecodeSlice(z.narrow(0, i, 1));
      if (!out.defined()) {
        HostScope host;
        std::vector<int64_t> sizes = piece.sizes().vec();
        sizes[0] = batch;
        out = torch::empty(sizes, piece.options());
      }
      out.narrow(0, i, 1).copy_(piece);
    }
    return out;
  }

 private:
  torch::Tensor DecodeSlice(const torch::Tensor& z) {
    // diffusers' condition: tiled when the latent exceeds the tile along either axis.
    if (opts_.tile > 0 &&
        (z.size(3) > opts_.tile / kSpatialCompression || z.size(4) > TileWidth(opts_) / kSpatialCompression))
      return DecodeTiled(z);
    return DecodeChunked(z);
  }

  // decode_chunk over diffusers' frame chunks with one fresh cache, as forward does; each chunk goes to the host
  // before the next is decoded, so only one chunk's activations (and the cache) are on the device.
  torch::Tensor DecodeChunked(const torch::Tensor& z) {
    c10::Dict<std::string, torch::Tensor> cache;
    std::vector<torch::Tensor> pieces;
    for (const auto& [start, end] : VaeFrameChunks(z.size(2), kLatentFrameBatch)) {
      pieces.push_back(to_host_((*decode_chunk_)({z.narrow(2, start, end - start), cache}).toTensor()));
    }
    HostScope host;
    return pieces.size() == 1 ? pieces.front() : torch::cat(pieces, 2);
  }

  // diffusers' tiled_decode. Tiles are visited row by row; a tile's own blends (with the tile above and the tile to
  // the left, both already blended) complete it, so its kept part is copied into the output at once and only the
  // previous row of host tiles is held.
  torch::Tensor DecodeTiled(const torch::Tensor& z) {
    const TileAxis ah = MakeAxis(opts_.tile, opts_.overlap_h), aw = MakeAxis(TileWidth(opts_), opts_.overlap_w);
    const int64_t h = z.size(3), w = z.size(4);
    const int64_t out_h = kSpatialCompression * h, out_w = kSpatialCompression * w;
    torch::Tensor out;
    std::vector<torch::Tensor> above;
    for (int64_t i = 0; i < h; i += ah.latent_stride) {
      std::vector<torch::Tensor> row;
      for (int64_t j = 0; j < w; j += aw.latent_stride) {
        const int64_t th = std::min(ah.latent_tile, h - i), tw = std::min(aw.latent_tile, w - j);
        torch::Tensor t = DecodeChunked(z.narrow(3, i, th).narrow(4, j, tw));
        if (t.dim() != 5 || t.size(3) != kSpatialCompression * th || t.size(4) != kSpatialCompression * tw) {
          throw Internal(fmt::format("VAE tiling: a {}x{} latent tile decoded to {}, expected {}x{} pixels", th, tw,
                                     fmt::join(t.sizes(), "x"), kSpatialCompression * th, kSpatialCompression * tw));
        }
        if (!above.empty()) Blend(above[row.size()], t, 3, ah.blend);
        if (!row.empty()) Blend(row.back(), t, 4, aw.blend);
        if (!out.defined()) {
          HostScope host;
          out = torch::empty({z.size(0), t.size(1), t.size(2), out_h, out_w}, t.options());
        }
        // Every tile but the last of a row or column is longer than the stride, so tile (i, j) lands at (8i, 8j).
        const int64_t y0 = kSpatialCompression * i, x0 = kSpatialCompression * j;
        const int64_t kh = std::min({ah.keep, t.size(3), out_h - y0}), kw = std::min({aw.keep, t.size(4), out_w - x0});
        out.narrow(3, y0, kh).narrow(4, x0, kw).copy_(t.narrow(3, 0, kh).narrow(4, 0, kw));
        row.push_back(std::move(t));
      }
      above = std::move(row);
    }
    return out;
  }

  const VaeDecodeOptions& opts_;
  const ToHost& to_host_;
  std::optional<torch::jit::Method> decode_chunk_;
};

}  // namespace

std::string VaeDecodeName(const VaeDecodeOptions& opts) {
  std::string s = opts.slicing ? "slicing" : "";
  if (opts.tile > 0) s += fmt::format("{}tiling={}", s.empty() ? "" : "+", opts.tile);
  if (opts.tile > 0 && opts.tile_w > 0 && opts.tile_w != opts.tile) s += fmt::format("x{}", opts.tile_w);
  return s;
}

void ValidateVaeDecodeOptions(const VaeDecodeOptions& opts) {
  for (const int t : {opts.tile, opts.tile_w}) {
    if (t != 0 && (t < 16 || t % kSpatialCompression != 0)) {
      throw InvalidArgument(fmt::format(
          "--vae-tiling {}: accepted a tile size in pixels, a multiple of 8, at least 16", t));
    }
  }
  if (opts.tile_w != 0 && opts.tile == 0)
    throw InvalidArgument(fmt::format("--vae-tiling: a tile width ({}) needs a tile height", opts.tile_w));
  CheckOverlap("overlap_h", opts.overlap_h, opts.tile);
  CheckOverlap("overlap_w", opts.overlap_w, TileWidth(opts));
}

torch::Tensor DecodeVae(torch::jit::Module& decoder, const torch::Tensor& z, const VaeDecodeOptions& opts,
                        const std::function<torch::Tensor(const torch::Tensor&)>& to_host) {
  ValidateVaeDecodeOptions(opts);
  if (z.dim() != 5) {
    throw InvalidArgument(fmt::format("VAE decode: latents shaped [{}]: accepted [B, channels, frames, h, w]",
                                      fmt::join(z.sizes(), ", ")));
  }
  torch::NoGradGuard no_grad;
  if (!opts.slicing && opts.tile == 0) return to_host(decoder.forward({z}).toTensor());
  Decoder d(decoder, opts, to_host);
  return d.Decode(z);
}

}  // namespace reel
