"""VAE parts from a diffusers AutoencoderKLCogVideoX. Source and calling convention as models/vae_script.cc:
  vae_encoder module: forward(video[B,3,F,H,W]) -> moments[B,2·lc,f,h,w] f32 (mean ‖ log-variance clamped to
      [−30, 20]); encode_chunk(x, cache) encodes one chunk of frames and updates the causal-conv cache.
  vae_decoder module: forward(latents[B,lc,f,h,w]) -> video[B,3,F,H,W] f32; decode_chunk(z, cache) likewise.
forward batches frames as diffusers' _encode/_decode do (8 pixel frames per encoder chunk after the first 8+rem,
2 latent frames per decoder chunk after the first 2+rem) and threads one cache through the chunks.
"""

import math
from dataclasses import dataclass
from typing import Callable, List

import torch

from .errors import ExportError
from .script import PartBuilder, Weights, config_value, float_literal

COMPONENT = "vae"
ENCODE_FRAME_BATCH = 8   # diffusers' num_sample_frames_batch_size
DECODE_LATENT_BATCH = 2  # num_latent_frames_batch_size; Reel's VAE slicing and tiling use the same


@dataclass
class VaeSpec:
    block_out_channels: List[int]
    layers_per_block: int
    latent_channels: int
    norm_groups: int
    eps: float
    temporal_compression: int
    scaling_factor: float
    in_channels: int = 3

    @property
    def temporal_levels(self) -> int:
        return int(round(math.log2(self.temporal_compression)))

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def read_spec(vae: torch.nn.Module) -> VaeSpec:
    def get(key, default):
        return config_value(vae, key, default, component=COMPONENT)

    def expect(key, value, ok, accepted):
        if not ok:
            raise ExportError(f"{COMPONENT}: config {key} {value!r} is not supported; accepted {accepted}")

    for key in ("down_block_types", "up_block_types"):
        types = list(get(key, []) or [])
        kind = "CogVideoXDownBlock3D" if key.startswith("down") else "CogVideoXUpBlock3D"
        expect(key, types, all(t == kind for t in types), f"only '{kind}'")
    for key in ("use_quant_conv", "use_post_quant_conv", "invert_scale_latents"):
        expect(key, get(key, False), not get(key, False), "false (CogVideoX 1.0)")
    expect("shift_factor", get("shift_factor", None), get("shift_factor", None) in (None, 0, 0.0), "null")
    expect("act_fn", get("act_fn", "silu"), get("act_fn", "silu") == "silu", "'silu'")
    for key in ("in_channels", "out_channels"):
        expect(key, get(key, 3), int(get(key, 3)) == 3, "3 (RGB)")
    eps = float(get("norm_eps", 1e-6))
    # diffusers hard-codes 1e-6 for the SpatialNorm and output GroupNorms; one value keeps all norms as there.
    expect("norm_eps", eps, abs(eps - 1e-6) < 1e-12, "1e-06")
    channels = [int(c) for c in get("block_out_channels", (128, 256, 256, 512))]
    groups = int(get("norm_num_groups", 32))
    expect("block_out_channels", channels, bool(channels) and all(c % groups == 0 for c in channels),
           f"a non-empty list of multiples of norm_num_groups ({groups})")
    tc = int(get("temporal_compression_ratio", 4))
    expect("temporal_compression_ratio", tc, tc >= 1 and (tc & (tc - 1)) == 0, "a power of two")
    return VaeSpec(block_out_channels=channels, layers_per_block=int(get("layers_per_block", 3)),
                   latent_channels=int(get("latent_channels", 16)), norm_groups=groups, eps=eps,
                   temporal_compression=tc, scaling_factor=float(get("scaling_factor", 1.15258426)))


def _common_source(s: VaeSpec) -> str:
    return f"""
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
    # GroupNorm over the whole 5D chunk (statistics span T, H and W), computed in float32.
    return torch.group_norm(x.float(), {s.norm_groups}, w.float(), b.float(), {float_literal(s.eps)}).to(x.dtype)

def _pool_t(self, x: Tensor, n: int) -> Tensor:
    # avg_pool1d(kernel 2, stride 2) over the first 2n frames, summed in float32 like ATen's CPU pooling.
    return torch.add(x[:, :, 0:2 * n:2].float(), x[:, :, 1:2 * n:2]).mul_(0.5)

def _downsample(self, x: Tensor, w: Tensor, b: Tensor, compress_time: bool) -> Tensor:
    # CogVideoXDownsample3D: optional time pooling (an odd frame count keeps frame 0 and pools the rest), zero padding
    # of W and H by one on the right/bottom, then the per-frame Conv2d(3, stride 2) as a conv3d with a 1x3x3 kernel.
    B = x.size(0)
    C = x.size(1)
    T = x.size(2)
    H = x.size(3)
    W = x.size(4)
    if compress_time:
        t0 = T % 2
        n = (T - t0) // 2
        o = torch.zeros([B, C, t0 + n, H + 1, W + 1], dtype=x.dtype, device=x.device)
        if t0 == 1:
            o[:, :, :1, :H, :W].copy_(x[:, :, :1])
        if n > 0:
            o[:, :, t0:, :H, :W].copy_(self._pool_t(x[:, :, t0:], n))
    else:
        o = torch.constant_pad_nd(x, [0, 1, 0, 1], 0.0)
    return torch.conv3d(o, w.unsqueeze(2), b, [1, 2, 2], [0, 0, 0])

def _upsample(self, x: Tensor, w: Tensor, b: Tensor, compress_time: bool) -> Tensor:
    # CogVideoXUpsample3D: nearest x2. With compress_time and T > 1 odd, frame 0 is upsampled in 2D only and the rest
    # in T, H and W; with T even, all in T, H and W; otherwise (T = 1 or no compress_time) in 2D only. Then the
    # per-frame Conv2d(3, pad 1) as a conv3d with a 1x3x3 kernel.
    B = x.size(0)
    C = x.size(1)
    T = x.size(2)
    H = x.size(3)
    W = x.size(4)
    if compress_time and T > 1 and T % 2 == 1:
        o = torch.empty([B, C, 2 * T - 1, 2 * H, 2 * W], dtype=x.dtype, device=x.device)
        o[:, :, :1].view([B, C, 1, H, 2, W, 2]).copy_(x[:, :, :1].reshape([B, C, 1, H, 1, W, 1]))
        o[:, :, 1:].view([B, C, T - 1, 2, H, 2, W, 2]).copy_(x[:, :, 1:].reshape([B, C, T - 1, 1, H, 1, W, 1]))
    elif compress_time and T > 1:
        o = torch.empty([B, C, 2 * T, 2 * H, 2 * W], dtype=x.dtype, device=x.device)
        o.view([B, C, T, 2, H, 2, W, 2]).copy_(x.reshape([B, C, T, 1, H, 1, W, 1]))
    else:
        o = torch.empty([B, C, T, 2 * H, 2 * W], dtype=x.dtype, device=x.device)
        o.view([B, C, T, H, 2, W, 2]).copy_(x.reshape([B, C, T, H, 1, W, 1]))
    return torch.conv3d(o, w.unsqueeze(2), b, [1, 1, 1], [0, 1, 1])
"""


_ENCODER_HELPERS = """
def _res(self, x: Tensor, n1w: Tensor, n1b: Tensor, c1w: Tensor, c1b: Tensor, n2w: Tensor, n2b: Tensor, c2w: Tensor, c2b: Tensor, cache: Dict[str, Tensor], key: str) -> Tensor:
    # The residual branch of CogVideoXResnetBlock3D with GroupNorm (dropout is the identity in eval).
    h = torch.silu_(self._gn(x, n1w, n1b))
    h = self._cconv(h, c1w, c1b, cache, key + ".conv1")
    h = torch.silu_(self._gn(h, n2w, n2b))
    return self._cconv(h, c2w, c2b, cache, key + ".conv2")
"""

_DECODER_HELPERS = """
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
    # n <- n * nearest(y) + nearest(b) in place; for integer ratios the nearest resize is a broadcast over a split view.
    B = n.size(0)
    C = n.size(1)
    T = n.size(2)
    H = n.size(3)
    W = n.size(4)
    t = y.size(2)
    h = y.size(3)
    w = y.size(4)
    if T % t == 0 and H % h == 0 and W % w == 0:
        v = n.view([B, C, t, T // t, h, H // h, w, W // w])
        v.mul_(y.reshape([B, C, t, 1, h, 1, w, 1]))
        v.add_(b.reshape([B, C, t, 1, h, 1, w, 1]))
    else:
        n.mul_(self._nearest(y, T, H, W))
        n.add_(self._nearest(b, T, H, W))

def _snorm(self, f: Tensor, zq: Tensor, gw: Tensor, gb: Tensor, yw: Tensor, yb: Tensor, bw: Tensor, bb: Tensor) -> Tensor:
    # CogVideoXSpatialNorm3D: GroupNorm(f) * conv_y(zq) + conv_b(zq), zq resized (nearest) to f's (T, H, W), frame 0
    # and the rest separately when T > 1 is odd. conv_y and conv_b are 1x1x1, so they run before the resize (the same
    # values) and keep no cache (diffusers' copy of the whole chunk for them is never read back).
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
"""


def _chunked_forward(arg: str, chunk_method: str, batch: int) -> str:
    return f"""
def forward(self, {arg}: Tensor) -> Tensor:
    frames = {arg}.size(2)
    batch = {batch}
    rem = frames % batch
    cache: Dict[str, Tensor] = {{}}
    outs: List[Tensor] = []
    for i in range(max(frames // batch, 1)):
        start = batch * i + (0 if i == 0 else rem)
        outs.append(self.{chunk_method}({arg}[:, :, start:batch * (i + 1) + rem], cache))
    return torch.cat(outs, 2)
"""


def _shortcut(b: PartBuilder, name: str, path: str, in_ch: int, out_ch: int) -> str:
    if in_ch == out_ch:
        return ".add_(x)\n"
    b.conv(name + "_shortcut", path + ".conv_shortcut", in_ch, out_ch, (1, 1, 1))
    return f".add_(torch.conv3d(x, self.{name}_shortcut_w, self.{name}_shortcut_b))\n"


def _encoder_resnet(b: PartBuilder, body: List[str], name: str, path: str, key: str, in_ch: int, out_ch: int):
    b.norm(name + "_norm1", path + ".norm1", in_ch)
    b.conv(name + "_conv1", path + ".conv1.conv", in_ch, out_ch, (3, 3, 3))
    b.norm(name + "_norm2", path + ".norm2", out_ch)
    b.conv(name + "_conv2", path + ".conv2.conv", out_ch, out_ch, (3, 3, 3))
    s = "self." + name
    line = (f"    x = self._res(x, {s}_norm1_w, {s}_norm1_b, {s}_conv1_w, {s}_conv1_b, {s}_norm2_w, {s}_norm2_b, "
            f"{s}_conv2_w, {s}_conv2_b, cache, \"{key}\")")
    body.append(line + _shortcut(b, name, path, in_ch, out_ch))


def _spatial_norm(b: PartBuilder, name: str, path: str, channels: int, zq: int) -> str:
    b.norm(name, path + ".norm_layer", channels)
    b.conv(name + "_convy", path + ".conv_y.conv", zq, channels, (1, 1, 1))
    b.conv(name + "_convb", path + ".conv_b.conv", zq, channels, (1, 1, 1))
    s = "self." + name
    return f"{s}_w, {s}_b, {s}_convy_w, {s}_convy_b, {s}_convb_w, {s}_convb_b"


def _decoder_resnet(b: PartBuilder, body: List[str], name: str, path: str, key: str, in_ch: int, out_ch: int,
                    zq: int):
    norm1 = _spatial_norm(b, name + "_norm1", path + ".norm1", in_ch, zq)
    b.conv(name + "_conv1", path + ".conv1.conv", in_ch, out_ch, (3, 3, 3))
    norm2 = _spatial_norm(b, name + "_norm2", path + ".norm2", out_ch, zq)
    b.conv(name + "_conv2", path + ".conv2.conv", out_ch, out_ch, (3, 3, 3))
    s = "self." + name
    line = (f"    x = self._res(x, zq, {norm1}, {s}_conv1_w, {s}_conv1_b, {norm2}, {s}_conv2_w, {s}_conv2_b, "
            f"cache, \"{key}\")")
    body.append(line + _shortcut(b, name, path, in_ch, out_ch))


def build_encoder(s: VaeSpec, b: PartBuilder) -> None:
    ch = s.block_out_channels
    lc = s.latent_channels
    body = ["\ndef encode_chunk(self, x: Tensor, cache: Dict[str, Tensor]) -> Tensor:\n",
            "    x = x.to(self.enc_conv_in_w.dtype)\n"]
    b.conv("enc_conv_in", "encoder.conv_in.conv", s.in_channels, ch[0], (3, 3, 3))
    body.append("    x = self._cconv(x, self.enc_conv_in_w, self.enc_conv_in_b, cache, \"conv_in\")\n")
    in_ch = ch[0]
    for i, out_ch in enumerate(ch):
        for j in range(s.layers_per_block):
            _encoder_resnet(b, body, f"enc_down{i}_res{j}", f"encoder.down_blocks.{i}.resnets.{j}",
                            f"down{i}.res{j}", in_ch if j == 0 else out_ch, out_ch)
        if i != len(ch) - 1:
            name = f"enc_down{i}_downsample"
            b.conv(name, f"encoder.down_blocks.{i}.downsamplers.0.conv", out_ch, out_ch, (3, 3))
            body.append(f"    x = self._downsample(x, self.{name}_w, self.{name}_b, "
                        f"{'True' if i < s.temporal_levels else 'False'})\n")
        in_ch = out_ch
    for j in range(2):
        _encoder_resnet(b, body, f"enc_mid_res{j}", f"encoder.mid_block.resnets.{j}", f"mid.res{j}", in_ch, in_ch)
    b.norm("enc_norm_out", "encoder.norm_out", in_ch)
    b.conv("enc_conv_out", "encoder.conv_out.conv", in_ch, 2 * lc, (3, 3, 3))
    body.append("    x = torch.silu_(self._gn(x, self.enc_norm_out_w, self.enc_norm_out_b))\n"
                "    x = self._cconv(x, self.enc_conv_out_w, self.enc_conv_out_b, cache, \"conv_out\").float()\n"
                f"    x[:, {lc}:].clamp_(-30.0, 20.0)\n"
                "    return x\n")
    b.define(_common_source(s))
    b.define(_ENCODER_HELPERS)
    b.define("".join(body))
    b.define(_chunked_forward("video", "encode_chunk", ENCODE_FRAME_BATCH))


def build_decoder(s: VaeSpec, b: PartBuilder) -> None:
    ch = list(reversed(s.block_out_channels))
    zq = s.latent_channels
    # zq: the raw latent chunk every SpatialNorm3D conditions on.
    body = ["\ndef decode_chunk(self, z: Tensor, cache: Dict[str, Tensor]) -> Tensor:\n",
            "    zq = z.to(self.dec_conv_in_w.dtype)\n"]
    b.conv("dec_conv_in", "decoder.conv_in.conv", zq, ch[0], (3, 3, 3))
    body.append("    x = self._cconv(zq, self.dec_conv_in_w, self.dec_conv_in_b, cache, \"conv_in\")\n")
    for j in range(2):
        _decoder_resnet(b, body, f"dec_mid_res{j}", f"decoder.mid_block.resnets.{j}", f"mid.res{j}", ch[0], ch[0],
                        zq)
    in_ch = ch[0]
    for i, out_ch in enumerate(ch):
        for j in range(s.layers_per_block + 1):
            _decoder_resnet(b, body, f"dec_up{i}_res{j}", f"decoder.up_blocks.{i}.resnets.{j}", f"up{i}.res{j}",
                            in_ch if j == 0 else out_ch, out_ch, zq)
        if i != len(ch) - 1:
            name = f"dec_up{i}_upsample"
            b.conv(name, f"decoder.up_blocks.{i}.upsamplers.0.conv", out_ch, out_ch, (3, 3))
            body.append(f"    x = self._upsample(x, self.{name}_w, self.{name}_b, "
                        f"{'True' if i < s.temporal_levels else 'False'})\n")
        in_ch = out_ch
    norm_out = _spatial_norm(b, "dec_norm_out", "decoder.norm_out", in_ch, zq)
    b.conv("dec_conv_out", "decoder.conv_out.conv", in_ch, s.in_channels, (3, 3, 3))
    body.append(f"    x = torch.silu_(self._snorm(x, zq, {norm_out}))\n"
                "    return self._cconv(x, self.dec_conv_out_w, self.dec_conv_out_b, cache, \"conv_out\").float()\n")
    b.define(_common_source(s))
    b.define(_DECODER_HELPERS)
    b.define("".join(body))
    b.define(_chunked_forward("z", "decode_chunk", DECODE_LATENT_BATCH))


def write_encoder(vae: torch.nn.Module, s: VaeSpec, dtype: torch.dtype,
                  save: Callable[[str, str, PartBuilder], None]) -> None:
    b = PartBuilder(Weights(COMPONENT, vae), dtype)
    build_encoder(s, b)
    save("module", "vae_encoder/module.pt", b)


def write_decoder(vae: torch.nn.Module, s: VaeSpec, dtype: torch.dtype,
                  save: Callable[[str, str, PartBuilder], None]) -> None:
    b = PartBuilder(Weights(COMPONENT, vae), dtype)
    build_decoder(s, b)
    save("module", "vae_decoder/module.pt", b)


def stage_config(s: VaeSpec) -> dict:
    cfg = {"layers_per_block": s.layers_per_block, "norm_groups": s.norm_groups, "latent_channels": s.latent_channels}
    for i, c in enumerate(s.block_out_channels):
        cfg[f"block_out_channels_{i}"] = c
    return cfg
