#include "models/vae_script.h"

#include <algorithm>
#include <iomanip>
#include <sstream>
#include <stdexcept>
#include <string>

#include "models/script_builder.h"

namespace reel {
namespace {

// A float literal TorchScript reads as float (never as int).
std::string Float(double v) {
  std::ostringstream s;
  s << std::setprecision(17) << v;
  std::string out = s.str();
  if (out.find_first_of(".eEn") == std::string::npos) out += ".0";
  return out;
}

// Helpers shared by the encoder and the decoder. Shapes are [B, C, T, H, W]; activations keep the weight dtype. The
// group norms run in it too, as diffusers' nn.GroupNorm does: ATen's bf16 kernel accumulates in another order than its
// float32 one, so a float32 copy normalised and rounded differs in rare elements (docs/STAGE_PACKAGE.md, Parity).
std::string CommonSource(const VaeConfig& cfg) {
  const std::string groups = std::to_string(cfg.norm_groups);
  const std::string eps = Float(cfg.eps);
  return R"(
def _cconv(self, x: Tensor, w: Tensor, b: Tensor, cache: Dict[str, Tensor], key: str) -> Tensor:
    # CogVideoXCausalConv3d: time padded with the cache (the previous chunk's last k-1 padded input frames) or, without
    # one, with k-1 copies of the first frame; H and W zero-padded by k//2; the new cache is the last k-1 padded frames.
    k = w.size(2)
    if key in cache:
        xp = torch.cat([cache[key], x], 2)
    else:
        xp = torch.cat([x[:, :, :1].expand(-1, -1, k - 1, -1, -1), x], 2)
    cache[key] = xp[:, :, xp.size(2) - (k - 1):].clone()
    return torch.conv3d(xp, w, b, [1, 1, 1], [0, w.size(3) // 2, w.size(4) // 2])

def _gn(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    # GroupNorm over the whole 5D chunk (statistics span T, H and W).
    return torch.group_norm(x, )" + groups + R"(, w.to(x.dtype), b.to(x.dtype), )" + eps + R"()

def _pool_t(self, x: Tensor, n: int) -> Tensor:
    # avg_pool1d(kernel 2, stride 2) over the first 2n frames, summed in float32 like ATen's CPU pooling.
    return torch.add(x[:, :, 0:2 * n:2].float(), x[:, :, 1:2 * n:2]).mul_(0.5)

def _downsample(self, x: Tensor, w: Tensor, b: Tensor, compress_time: bool) -> Tensor:
    # CogVideoXDownsample3D: optional time pooling (an odd frame count keeps frame 0 and pools the rest), zero padding
    # of W and H by one on the right/bottom, then the Conv2d(3, stride 2) over every frame as one conv2d batch, as
    # diffusers runs it. The frames are written straight into a [B, T, C, H+1, W+1] buffer (o is its [B, C, T, ...]
    # view), so that batch is a view, not a copy. Why conv2d and not an equivalent 1x3x3 conv3d: at batch 1 in f32,
    # ATen sends a conv3d with N*C*T*H <= 20480 to its slow im2col path (slow_conv3d), 10-20x slower than the oneDNN
    # conv2d on the frame batch (docs/BENCHMARKS.md).
    B = x.size(0)
    C = x.size(1)
    T = x.size(2)
    H = x.size(3)
    W = x.size(4)
    if compress_time:
        t0 = T % 2
        n = (T - t0) // 2
    else:
        t0 = T
        n = 0
    buf = torch.zeros([B, t0 + n, C, H + 1, W + 1], dtype=x.dtype, device=x.device)
    o = buf.permute([0, 2, 1, 3, 4])
    if t0 > 0:
        o[:, :, :t0, :H, :W].copy_(x[:, :, :t0])
    if n > 0:
        o[:, :, t0:, :H, :W].copy_(self._pool_t(x[:, :, t0:], n))
    y = torch.conv2d(buf.view([B * (t0 + n), C, H + 1, W + 1]), w, b, [2, 2], [0, 0])
    return y.view([B, t0 + n, y.size(1), y.size(2), y.size(3)]).permute([0, 2, 1, 3, 4]).contiguous()

def _upsample(self, x: Tensor, w: Tensor, b: Tensor, compress_time: bool) -> Tensor:
    # CogVideoXUpsample3D: nearest x2. With compress_time and T > 1 odd, frame 0 is upsampled in 2D only and the rest
    # in T, H and W; with T even, all in T, H and W; otherwise (T = 1 or no compress_time) in 2D only. Then the
    # Conv2d(3, pad 1) over every frame as one conv2d batch, as diffusers runs it (why not a 1x3x3 conv3d: see
    # _downsample). The copies broadcast into one [B, T, C, 2H, 2W] buffer (o is its [B, C, T, ...] view), so the
    # frame batch is a view of it.
    B = x.size(0)
    C = x.size(1)
    T = x.size(2)
    H = x.size(3)
    W = x.size(4)
    if compress_time and T > 1 and T % 2 == 1:
        T2 = 2 * T - 1
    elif compress_time and T > 1:
        T2 = 2 * T
    else:
        T2 = T
    buf = torch.empty([B, T2, C, 2 * H, 2 * W], dtype=x.dtype, device=x.device)
    o = buf.permute([0, 2, 1, 3, 4])
    if compress_time and T > 1 and T % 2 == 1:
        o[:, :, :1].view([B, C, 1, H, 2, W, 2]).copy_(x[:, :, :1].reshape([B, C, 1, H, 1, W, 1]))
        o[:, :, 1:].view([B, C, T - 1, 2, H, 2, W, 2]).copy_(x[:, :, 1:].reshape([B, C, T - 1, 1, H, 1, W, 1]))
    elif compress_time and T > 1:
        o.view([B, C, T, 2, H, 2, W, 2]).copy_(x.reshape([B, C, T, 1, H, 1, W, 1]))
    else:
        o.view([B, C, T, H, 2, W, 2]).copy_(x.reshape([B, C, T, H, 1, W, 1]))
    y = torch.conv2d(buf.view([B * T2, C, 2 * H, 2 * W]), w, b, [1, 1], [1, 1])
    return y.view([B, T2, y.size(1), 2 * H, 2 * W]).permute([0, 2, 1, 3, 4]).contiguous()
)";
}

// ---------------------------------------------------------------------------------------------------------------
// Encoder

std::string EncoderHelpers() {
  return R"(
def _res(self, x: Tensor, n1w: Tensor, n1b: Tensor, c1w: Tensor, c1b: Tensor, n2w: Tensor, n2b: Tensor, c2w: Tensor, c2b: Tensor, cache: Dict[str, Tensor], key: str) -> Tensor:
    # The residual branch of CogVideoXResnetBlock3D with GroupNorm (dropout is the identity in eval).
    h = torch.silu_(self._gn(x, n1w, n1b))
    h = self._cconv(h, c1w, c1b, cache, key + ".conv1")
    h = torch.silu_(self._gn(h, n2w, n2b))
    return self._cconv(h, c2w, c2b, cache, key + ".conv2")
)";
}

// Registers one encoder resnet's weights and appends the line that applies it to `x`.
void EncoderResnet(ScriptBuilder& b, std::ostringstream& body, const std::string& p, const std::string& key, int in,
                   int out) {
  b.Norm(p + "_norm1", in);
  b.Conv(p + "_conv1", in, out, {3, 3, 3});
  b.Norm(p + "_norm2", out);
  b.Conv(p + "_conv2", out, out, {3, 3, 3});
  const std::string s = "self." + p;
  body << "    x = self._res(x, " << s << "_norm1_w, " << s << "_norm1_b, " << s << "_conv1_w, " << s << "_conv1_b, "
       << s << "_norm2_w, " << s << "_norm2_b, " << s << "_conv2_w, " << s << "_conv2_b, cache, \"" << key << "\")";
  if (in != out) {
    b.Conv(p + "_shortcut", in, out, {1, 1, 1});
    body << ".add_(torch.conv3d(x, " << s << "_shortcut_w, " << s << "_shortcut_b))\n";
  } else {
    body << ".add_(x)\n";
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Decoder

std::string DecoderHelpers() {
  return R"(
def _nearest(self, x: Tensor, T: int, H: int, W: int) -> Tensor:
    # F.interpolate(mode="nearest", size=(T, H, W)): source index floor(i * in / out) on each dim.
    sizes = [T, H, W]
    for d in range(3):
        n_in = x.size(2 + d)
        n_out = sizes[d]
        if n_in != n_out:
            idx = torch.div(torch.arange(n_out, device=x.device) * n_in, n_out, rounding_mode='floor')
            x = torch.index_select(x, 2 + d, idx)
    return x

def _scale_shift(self, n: Tensor, y: Tensor, b: Tensor) -> None:
    # n <- n * nearest(y) + nearest(b) in place. For integer ratios (all CogVideoX shapes) the nearest resize is a
    # broadcast over a split view of n, so the full-size y and b are never materialized. y and b are resized along W
    # only (1/((T/t)·(H/h)) of n's size): a broadcast whose innermost dim is the W/w = 8 repeats of one value runs
    # ATen's scalar loop, 6x (f32) to 26x (bf16) slower than this one over whole rows (docs/BENCHMARKS.md).
    B = n.size(0)
    C = n.size(1)
    T = n.size(2)
    H = n.size(3)
    W = n.size(4)
    t = y.size(2)
    h = y.size(3)
    w = y.size(4)
    if T % t == 0 and H % h == 0 and W % w == 0:
        v = n.view([B, C, t, T // t, h, H // h, W])
        v.mul_(y.unsqueeze(5).expand([B, C, t, h, w, W // w]).reshape([B, C, t, 1, h, 1, W]))
        v.add_(b.unsqueeze(5).expand([B, C, t, h, w, W // w]).reshape([B, C, t, 1, h, 1, W]))
    else:
        n.mul_(self._nearest(y, T, H, W))
        n.add_(self._nearest(b, T, H, W))

def _snorm(self, f: Tensor, zq: Tensor, gw: Tensor, gb: Tensor, yw: Tensor, yb: Tensor, bw: Tensor, bb: Tensor) -> Tensor:
    # CogVideoXSpatialNorm3D: GroupNorm(f) * conv_y(zq) + conv_b(zq), zq resized (nearest) to f's (T, H, W), frame 0
    # and the rest separately when T > 1 is odd. conv_y and conv_b are 1x1x1, so they run on zq before the resize
    # (a nearest resize commutes with a pointwise conv: the same values at a fraction of the cost and memory).
    # Deliberate difference from diffusers: these k=1 causal convs keep no conv cache. diffusers stores a clone of
    # the whole zq chunk for each of them ("last k-1 frames" is [-0:]) but never reads it back, so dropping it saves
    # memory with identical results.
    n = self._gn(f, gw, gb)
    y = torch.conv3d(zq, yw, yb)
    b = torch.conv3d(zq, bw, bb)
    T = f.size(2)
    if T > 1 and T % 2 == 1:
        self._scale_shift(n[:, :, :1], y[:, :, :1], b[:, :, :1])
        self._scale_shift(n[:, :, 1:], y[:, :, 1:], b[:, :, 1:])
    else:
        self._scale_shift(n, y, b)
    return n

def _res(self, x: Tensor, zq: Tensor, n1w: Tensor, n1b: Tensor, n1yw: Tensor, n1yb: Tensor, n1bw: Tensor, n1bb: Tensor, c1w: Tensor, c1b: Tensor, n2w: Tensor, n2b: Tensor, n2yw: Tensor, n2yb: Tensor, n2bw: Tensor, n2bb: Tensor, c2w: Tensor, c2b: Tensor, cache: Dict[str, Tensor], key: str) -> Tensor:
    # The residual branch of CogVideoXResnetBlock3D with SpatialNorm3D (dropout is the identity in eval).
    h = torch.silu_(self._snorm(x, zq, n1w, n1b, n1yw, n1yb, n1bw, n1bb))
    h = self._cconv(h, c1w, c1b, cache, key + ".conv1")
    h = torch.silu_(self._snorm(h, zq, n2w, n2b, n2yw, n2yb, n2bw, n2bb))
    return self._cconv(h, c2w, c2b, cache, key + ".conv2")
)";
}

// Registers a SpatialNorm3D's weights (norm_layer, conv_y, conv_b) and returns its argument list for _snorm/_res.
std::string SpatialNorm(ScriptBuilder& b, const std::string& p, int channels, int zq_channels) {
  b.Norm(p, channels);
  b.Conv(p + "_convy", zq_channels, channels, {1, 1, 1});
  b.Conv(p + "_convb", zq_channels, channels, {1, 1, 1});
  const std::string s = "self." + p;
  return s + "_w, " + s + "_b, " + s + "_convy_w, " + s + "_convy_b, " + s + "_convb_w, " + s + "_convb_b";
}

void DecoderResnet(ScriptBuilder& b, std::ostringstream& body, const std::string& p, const std::string& key, int in,
                   int out, int zq_channels) {
  const std::string s = "self." + p;
  const std::string norm1 = SpatialNorm(b, p + "_norm1", in, zq_channels);
  b.Conv(p + "_conv1", in, out, {3, 3, 3});
  const std::string norm2 = SpatialNorm(b, p + "_norm2", out, zq_channels);
  b.Conv(p + "_conv2", out, out, {3, 3, 3});
  body << "    x = self._res(x, zq, " << norm1 << ", " << s << "_conv1_w, " << s << "_conv1_b, " << norm2 << ", " << s
       << "_conv2_w, " << s << "_conv2_b, cache, \"" << key << "\")";
  if (in != out) {
    b.Conv(p + "_shortcut", in, out, {1, 1, 1});
    body << ".add_(torch.conv3d(x, " << s << "_shortcut_w, " << s << "_shortcut_b))\n";
  } else {
    body << ".add_(x)\n";
  }
}

void CheckConfig(const VaeConfig& cfg) {
  if (cfg.block_out_channels.empty() || cfg.layers_per_block < 1 || cfg.norm_groups < 1 || cfg.latent_channels < 1 ||
      cfg.temporal_levels < 0 || cfg.encode_frame_batch < 1 || cfg.decode_latent_batch < 1) {
    throw std::invalid_argument("VaeConfig: invalid sizes");
  }
  for (int c : cfg.block_out_channels) {
    if (c % cfg.norm_groups != 0) throw std::invalid_argument("VaeConfig: channels not divisible by norm_groups");
  }
}

// The forward that batches frames like diffusers' _encode/_decode and calls `chunk_method` on each chunk.
std::string ChunkedForward(const std::string& arg, const std::string& chunk_method, int batch) {
  std::ostringstream s;
  s << "\ndef forward(self, " << arg << ": Tensor) -> Tensor:\n"
    << "    frames = " << arg << ".size(2)\n"
    << "    batch = " << batch << "\n"
    << "    rem = frames % batch\n"
    << "    cache: Dict[str, Tensor] = {}\n"
    << "    outs: List[Tensor] = []\n"
    << "    for i in range(max(frames // batch, 1)):\n"
    << "        start = batch * i + (0 if i == 0 else rem)\n"
    << "        outs.append(self." << chunk_method << "(" << arg << "[:, :, start:batch * (i + 1) + rem], cache))\n"
    << "    return torch.cat(outs, 2)\n";
  return s.str();
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> VaeFrameChunks(int64_t frames, int64_t batch) {
  std::vector<std::pair<int64_t, int64_t>> chunks;
  const int64_t rem = frames % batch;
  const int64_t n = std::max<int64_t>(frames / batch, 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = batch * i + (i == 0 ? 0 : rem);
    const int64_t end = std::min(batch * (i + 1) + rem, frames);
    chunks.emplace_back(start, end);
  }
  return chunks;
}

torch::jit::Module BuildVaeEncoder(const VaeConfig& cfg, uint64_t seed, torch::Dtype dtype) {
  ScriptBuilder b("ReelVaeEncoder", seed, dtype);
  DefineVaeEncoder(cfg, b);
  return b.Finish();
}

torch::jit::Module BuildVaeDecoder(const VaeConfig& cfg, uint64_t seed, torch::Dtype dtype) {
  ScriptBuilder b("ReelVaeDecoder", seed, dtype);
  DefineVaeDecoder(cfg, b);
  return b.Finish();
}

void DefineVaeEncoder(const VaeConfig& cfg, ScriptBuilder& b) {
  CheckConfig(cfg);
  const std::vector<int>& ch = cfg.block_out_channels;
  const int levels = static_cast<int>(ch.size());
  std::ostringstream body;
  body << "\ndef encode_chunk(self, x: Tensor, cache: Dict[str, Tensor]) -> Tensor:\n"
       << "    x = x.to(self.enc_conv_in_w.dtype)\n";

  b.Conv("enc_conv_in", cfg.in_channels, ch[0], {3, 3, 3});
  body << "    x = self._cconv(x, self.enc_conv_in_w, self.enc_conv_in_b, cache, \"conv_in\")\n";

  int in = ch[0];
  for (int i = 0; i < levels; ++i) {
    const int out = ch[i];
    for (int j = 0; j < cfg.layers_per_block; ++j) {
      const std::string p = "enc_down" + std::to_string(i) + "_res" + std::to_string(j);
      const std::string key = "down" + std::to_string(i) + ".res" + std::to_string(j);
      EncoderResnet(b, body, p, key, j == 0 ? in : out, out);
    }
    if (i != levels - 1) {
      const std::string p = "enc_down" + std::to_string(i) + "_downsample";
      b.Conv(p, out, out, {3, 3});
      body << "    x = self._downsample(x, self." << p << "_w, self." << p << "_b, "
           << (i < cfg.temporal_levels ? "True" : "False") << ")\n";
    }
    in = out;
  }
  for (int j = 0; j < 2; ++j) {
    EncoderResnet(b, body, "enc_mid_res" + std::to_string(j), "mid.res" + std::to_string(j), in, in);
  }
  b.Norm("enc_norm_out", in);
  b.Conv("enc_conv_out", in, 2 * cfg.latent_channels, {3, 3, 3});
  body << "    x = torch.silu_(self._gn(x, self.enc_norm_out_w, self.enc_norm_out_b))\n"
       << "    x = self._cconv(x, self.enc_conv_out_w, self.enc_conv_out_b, cache, \"conv_out\").float()\n"
       << "    x[:, " << cfg.latent_channels << ":].clamp_(-30.0, 20.0)\n"
       << "    return x\n";

  b.Define(CommonSource(cfg));
  b.Define(EncoderHelpers());
  b.Define(body.str());
  b.Define(ChunkedForward("video", "encode_chunk", cfg.encode_frame_batch));
}

void DefineVaeDecoder(const VaeConfig& cfg, ScriptBuilder& b) {
  CheckConfig(cfg);
  std::vector<int> ch(cfg.block_out_channels.rbegin(), cfg.block_out_channels.rend());
  const int levels = static_cast<int>(ch.size());
  const int zq = cfg.latent_channels;
  std::ostringstream body;
  // zq: the raw latent chunk every SpatialNorm3D conditions on.
  body << "\ndef decode_chunk(self, z: Tensor, cache: Dict[str, Tensor]) -> Tensor:\n"
       << "    zq = z.to(self.dec_conv_in_w.dtype)\n";

  b.Conv("dec_conv_in", cfg.latent_channels, ch[0], {3, 3, 3});
  body << "    x = self._cconv(zq, self.dec_conv_in_w, self.dec_conv_in_b, cache, \"conv_in\")\n";
  for (int j = 0; j < 2; ++j) {
    DecoderResnet(b, body, "dec_mid_res" + std::to_string(j), "mid.res" + std::to_string(j), ch[0], ch[0], zq);
  }
  int in = ch[0];
  for (int i = 0; i < levels; ++i) {
    const int out = ch[i];
    for (int j = 0; j < cfg.layers_per_block + 1; ++j) {
      const std::string p = "dec_up" + std::to_string(i) + "_res" + std::to_string(j);
      const std::string key = "up" + std::to_string(i) + ".res" + std::to_string(j);
      DecoderResnet(b, body, p, key, j == 0 ? in : out, out, zq);
    }
    if (i != levels - 1) {
      const std::string p = "dec_up" + std::to_string(i) + "_upsample";
      b.Conv(p, out, out, {3, 3});
      body << "    x = self._upsample(x, self." << p << "_w, self." << p << "_b, "
           << (i < cfg.temporal_levels ? "True" : "False") << ")\n";
    }
    in = out;
  }
  const std::string norm_out = SpatialNorm(b, "dec_norm_out", in, zq);
  b.Conv("dec_conv_out", in, cfg.in_channels, {3, 3, 3});
  body << "    x = torch.silu_(self._snorm(x, zq, " << norm_out << "))\n"
       << "    return self._cconv(x, self.dec_conv_out_w, self.dec_conv_out_b, cache, \"conv_out\").float()\n";

  b.Define(CommonSource(cfg));
  b.Define(DecoderHelpers());
  b.Define(body.str());
  b.Define(ChunkedForward("z", "decode_chunk", cfg.decode_latent_batch));
}

}  // namespace reel
