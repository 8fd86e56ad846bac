"""Denoiser parts from a diffusers CogVideoXTransformer3DModel (CogVideoX 1.0: 2B with 3D sin-cos positions, 5B with
3D RoPE, 5B-I2V with RoPE plus learned positions). Source and calling convention as models/transformer_script.cc:
  embed.forward(latents[B,f,C,h,w], text[B,T,Dt], timestep[B] i64)
      -> (video[B,N,D], text[B,T,D], emb[B,E], rope_cos[N,hd], rope_sin[N,hd])   (rope_* empty without RoPE)
  block.forward(video, text, emb, rope_cos, rope_sin) -> (video, text)
  head.forward(video, emb, f: int, h: int, w: int) -> velocity[B,f,C_out,h,w] f32
The RoPE tables diffusers' pipeline builds (_prepare_rotary_positional_embeddings) are built by the embed part.
"""

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ExportError
from .script import PartBuilder, Weights, config_value, float_literal, optional_arg

COMPONENT = "transformer"

# Elements of one attention score chunk (models/transformer_script.h kAttentionChunkElements): queries are processed
# in chunks so that the full score matrix is never materialised.
ATTENTION_CHUNK_ELEMENTS = 1 << 26


@dataclass
class TransformerSpec:
    num_heads: int
    head_dim: int
    num_layers: int
    in_channels: int
    out_channels: int
    time_embed_dim: int
    text_embed_dim: int
    patch_size: int
    max_text_seq_length: int
    temporal_compression: int
    sample_frames: int  # pixel frames, as diffusers' config counts them
    sample_height: int  # latent units
    sample_width: int
    rotary: bool
    learned_pos: bool
    patch_bias: bool
    flip_sin_to_cos: bool
    freq_shift: float
    eps: float
    spatial_interpolation: float
    temporal_interpolation: float
    ff_mult: int = 4

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def sample_latent_frames(self) -> int:
        return (self.sample_frames - 1) // self.temporal_compression + 1


def _expect(key, value, accepted, what):
    if value not in accepted:
        raise ExportError(f"{COMPONENT}: config {key} {value!r} is not supported; accepted {what}")


def read_spec(tr: torch.nn.Module) -> TransformerSpec:
    def get(key, default=None):
        return config_value(tr, key, default, required=default is None, component=COMPONENT)

    _expect("patch_size_t", get("patch_size_t", "absent"), (None, "absent"),
            "null (CogVideoX 1.0: 2B, 5B, 5B-I2V; CogVideoX 1.5 is not supported)")
    _expect("ofs_embed_dim", get("ofs_embed_dim", "absent"), (None, 0, "absent"), "null (CogVideoX 1.0)")
    _expect("activation_fn", get("activation_fn", "gelu-approximate"), ("gelu-approximate",), "'gelu-approximate'")
    _expect("timestep_activation_fn", get("timestep_activation_fn", "silu"), ("silu",), "'silu'")
    _expect("attention_bias", get("attention_bias", True), (True,), "true")
    _expect("norm_elementwise_affine", get("norm_elementwise_affine", True), (True,), "true")
    rotary = bool(get("use_rotary_positional_embeddings", False))
    learned = bool(get("use_learned_positional_embeddings", False))
    if learned and not rotary:
        raise ExportError(f"{COMPONENT}: config use_learned_positional_embeddings without "
                          "use_rotary_positional_embeddings is not a CogVideoX model; accepted learned positions "
                          "only together with RoPE (5B-I2V)")
    in_channels = int(get("in_channels", 16))
    spec = TransformerSpec(
        num_heads=int(get("num_attention_heads", 30)), head_dim=int(get("attention_head_dim", 64)),
        num_layers=int(get("num_layers", 30)), in_channels=in_channels,
        out_channels=int(get("out_channels", in_channels) or in_channels),
        time_embed_dim=int(get("time_embed_dim", 512)), text_embed_dim=int(get("text_embed_dim", 4096)),
        patch_size=int(get("patch_size", 2)), max_text_seq_length=int(get("max_text_seq_length", 226)),
        temporal_compression=int(get("temporal_compression_ratio", 4)), sample_frames=int(get("sample_frames", 49)),
        sample_height=int(get("sample_height", 60)), sample_width=int(get("sample_width", 90)), rotary=rotary,
        learned_pos=learned, patch_bias=bool(get("patch_bias", True)),
        flip_sin_to_cos=bool(get("flip_sin_to_cos", True)), freq_shift=float(get("freq_shift", 0)),
        eps=float(get("norm_eps", 1e-5)), spatial_interpolation=float(get("spatial_interpolation_scale", 1.875)),
        temporal_interpolation=float(get("temporal_interpolation_scale", 1.0)))
    if spec.rotary and spec.head_dim % 8 != 0:
        raise ExportError(f"{COMPONENT}: attention_head_dim {spec.head_dim} with RoPE: accepted a multiple of 8")
    if spec.inner_dim % 4 != 0 or spec.num_layers < 1:
        raise ExportError(f"{COMPONENT}: inner dim {spec.inner_dim} / num_layers {spec.num_layers}: accepted a "
                          "multiple of 4 / at least 1")
    return spec


_LAYER_NORM = """
def ln(self, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    return torch.layer_norm(x.float(), [x.size(-1)], w.float(), b.float(), eps).to(x.dtype)
"""

# 3D sin-cos table of CogVideoX-2B (and of 5B-I2V at frame counts its learned table does not cover).
_SINCOS = """
def sincos_1d(self, d: int, pos: Tensor) -> Tensor:
    omega = 1.0 / torch.pow(10000.0, torch.arange(d // 2).double() / (d / 2.0))
    out = pos.unsqueeze(1) * omega.unsqueeze(0)
    return torch.cat([torch.sin(out), torch.cos(out)], 1)

def sincos_3d(self, f: int, hp: int, wp: int, D: int, s_interp: float, t_interp: float) -> Tensor:
    gh = torch.arange(hp).double() / s_interp
    gw = torch.arange(wp).double() / s_interp
    ds = D * 3 // 4
    spatial = torch.cat([self.sincos_1d(ds // 2, gw.repeat(hp)), self.sincos_1d(ds // 2, gh.repeat_interleave(wp))], 1)
    temporal = self.sincos_1d(D // 4, torch.arange(f).double() / t_interp)
    n = hp * wp
    pos = torch.cat([temporal.unsqueeze(1).expand(f, n, D // 4), spatial.unsqueeze(0).expand(f, n, ds)], 2)
    return pos.reshape(f * n, D).float()
"""

# 3D RoPE with CogVideoX 1.0's linspace grid fitted into the sample-size base grid (get_resize_crop_region_for_grid).
_ROPE = """
def linspace(self, a: float, b: float, n: int) -> Tensor:
    if n == 1:
        return torch.zeros([1]).double() + a
    return torch.arange(n).double() * ((b - a) / (n - 1)) + a

def rope_axis(self, d: int, pos: Tensor) -> Tuple[Tensor, Tensor]:
    freqs = 1.0 / torch.pow(10000.0, torch.arange(0, d, 2).double()[: d // 2] / d)
    ang = pos.double().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cos(ang).repeat_interleave(2, 1), torch.sin(ang).repeat_interleave(2, 1)

def rope(self, f: int, gh: int, gw: int, base_h: int, base_w: int, hd: int) -> Tuple[Tensor, Tensor]:
    th = float(base_h)
    tw = float(base_w)
    if gh / gw > th / tw:
        rh = th
        rw = float(round(th / gh * gw))
    else:
        rw = tw
        rh = float(round(tw / gw * gh))
    top = float(round((th - rh) / 2.0))
    left = float(round((tw - rw) / 2.0))
    pos_h = self.linspace(top, (top + rh) * (gh - 1) / gh, gh)
    pos_w = self.linspace(left, (left + rw) * (gw - 1) / gw, gw)
    pos_t = self.linspace(0.0, float(f - 1), f)
    dt = hd // 4
    dh = hd // 8 * 3
    ct, st = self.rope_axis(dt, pos_t)
    ch, sh = self.rope_axis(dh, pos_h)
    cw, sw = self.rope_axis(dh, pos_w)
    cos = torch.cat([ct[:, None, None, :].expand(f, gh, gw, dt), ch[None, :, None, :].expand(f, gh, gw, dh),
                     cw[None, None, :, :].expand(f, gh, gw, dh)], 3)
    sin = torch.cat([st[:, None, None, :].expand(f, gh, gw, dt), sh[None, :, None, :].expand(f, gh, gw, dh),
                     sw[None, None, :, :].expand(f, gh, gw, dh)], 3)
    return cos.reshape(f * gh * gw, hd).float(), sin.reshape(f * gh * gw, hd).float()
"""


def build_embed(c: TransformerSpec, b: PartBuilder) -> None:
    D = c.inner_dim
    p = c.patch_size
    T = c.max_text_seq_length
    b.conv("patch", "patch_embed.proj", c.in_channels, D, (p, p), bias=c.patch_bias)
    b.linear("text_proj", "patch_embed.text_proj", c.text_embed_dim, D)
    b.linear("time1", "time_embedding.linear_1", D, c.time_embed_dim)
    b.linear("time2", "time_embedding.linear_2", c.time_embed_dim, c.time_embed_dim)
    sf, sh, sw = c.sample_latent_frames, c.sample_height // p, c.sample_width // p
    si, ti = float_literal(c.spatial_interpolation), float_literal(c.temporal_interpolation)
    if c.learned_pos:
        # A persistent buffer in diffusers; a parameter here, so that the runtime places it with the other weights.
        b.take("pos_embedding", "patch_embed.pos_embedding", (1, T + sf * sh * sw, D))
        positions = f"""
    if f == {sf} and hp == {sh} and wp == {sw}:
        t = t + self.pos_embedding[:, :T].to(dt)
        x = x + self.pos_embedding[:, T:].to(dt)
    elif hp == {sh} and wp == {sw}:
        x = x + self.sincos_3d(f, hp, wp, {D}, {si}, {ti}).to(x.device, dt).unsqueeze(0)
    else:
        assert False, "this model's learned positions need a latent size of {sh}x{sw} patches"
"""
    elif not c.rotary:
        positions = f"    x = x + self.sincos_3d(f, hp, wp, {D}, {si}, {ti}).to(x.device, dt).unsqueeze(0)\n"
    else:
        positions = ""
    # Positions are computed on the host (small tables) and moved to the latents' device.
    rope = (f"    cos, sin = self.rope(f, hp, wp, {sh}, {sw}, {c.head_dim})\n"
            "    cos = cos.to(x.device)\n    sin = sin.to(x.device)\n" if c.rotary else
            "    cos = torch.zeros([0], device=x.device)\n    sin = torch.zeros([0], device=x.device)\n")
    # get_timestep_embedding: exp(−ln(10000)·k / (half − freq_shift)), [sin ‖ cos] flipped to [cos ‖ sin].
    halves = "[torch.cos(arg), torch.sin(arg)]" if c.flip_sin_to_cos else "[torch.sin(arg), torch.cos(arg)]"
    b.define(_SINCOS + _ROPE + f"""
def forward(self, latents: Tensor, text: Tensor, timestep: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dt = self.patch_w.dtype
    B = latents.size(0)
    f = latents.size(1)
    C = latents.size(2)
    H = latents.size(3)
    W = latents.size(4)
    T = text.size(1)
    hp = H // {p}
    wp = W // {p}
    x = torch.conv2d(latents.to(dt).reshape(B * f, C, H, W), self.patch_w, {optional_arg(b, "patch_b")}, [{p}, {p}])
    x = x.view(B, f, {D}, hp, wp).permute(0, 1, 3, 4, 2).reshape(B, f * hp * wp, {D})
    t = torch.linear(text.to(dt), self.text_proj_w, self.text_proj_b)
{positions}
    half = {D} // 2
    k = torch.arange(half, device=timestep.device).float()
    freqs = torch.exp(k * -9.210340371976184 / (half - {float_literal(c.freq_shift)}))
    arg = timestep.float().unsqueeze(1) * freqs.unsqueeze(0)
    temb = torch.cat({halves}, 1).to(dt)
    emb = torch.linear(torch.silu(torch.linear(temb, self.time1_w, self.time1_b)), self.time2_w, self.time2_b)
{rope}
    return x, t, emb, cos, sin
""")


def build_block(c: TransformerSpec, i: int, b: PartBuilder) -> None:
    D = c.inner_dim
    E = c.time_embed_dim
    p = f"transformer_blocks.{i}"
    b.linear("norm1_lin", f"{p}.norm1.linear", E, 6 * D)
    b.norm("norm1", f"{p}.norm1.norm", D)
    for n in ("q", "k", "v"):
        b.linear(n, f"{p}.attn1.to_{n}", D, D)
    b.norm("norm_q", f"{p}.attn1.norm_q", c.head_dim)
    b.norm("norm_k", f"{p}.attn1.norm_k", c.head_dim)
    b.linear("out", f"{p}.attn1.to_out.0", D, D)
    b.linear("norm2_lin", f"{p}.norm2.linear", E, 6 * D)
    b.norm("norm2", f"{p}.norm2.norm", D)
    b.linear("ff1", f"{p}.ff.net.0.proj", D, c.ff_mult * D)
    b.linear("ff2", f"{p}.ff.net.2", c.ff_mult * D, D)
    rope = """
    q = torch.cat([q[:, :, :T], self.apply_rope(q[:, :, T:], cos, sin)], 2)
    k = torch.cat([k[:, :, :T], self.apply_rope(k[:, :, T:], cos, sin)], 2)
""" if c.rotary else ""
    eps = float_literal(c.eps)
    b.define(_LAYER_NORM + f"""
def apply_rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    xf = x.float()
    pairs = xf.reshape(x.size(0), x.size(1), x.size(2), x.size(3) // 2, 2)
    rot = torch.stack([-pairs[:, :, :, :, 1], pairs[:, :, :, :, 0]], -1).reshape(x.size())
    return (xf * cos + rot * sin).to(x.dtype)

def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    B = q.size(0)
    H = q.size(1)
    L = q.size(2)
    scale = float(q.size(3)) ** -0.5
    kt = k.transpose(-1, -2)
    chunk = max(1, {ATTENTION_CHUNK_ELEMENTS} // (B * H * k.size(2)))
    if chunk >= L:
        return torch.matmul(torch.softmax(torch.matmul(q, kt).float() * scale, -1).to(v.dtype), v)
    outs: List[Tensor] = []
    for i in range(0, L, chunk):
        s = torch.matmul(q[:, :, i:i + chunk], kt).float() * scale
        outs.append(torch.matmul(torch.softmax(s, -1).to(v.dtype), v))
    return torch.cat(outs, 2)

def forward(self, video: Tensor, text: Tensor, emb: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor]:
    B = video.size(0)
    T = text.size(1)
    L = T + video.size(1)
    m = torch.linear(torch.silu(emb), self.norm1_lin_w, self.norm1_lin_b).unsqueeze(1).chunk(6, 2)
    v_n = self.ln(video, self.norm1_w, self.norm1_b, {eps}) * (1 + m[1]) + m[0]
    t_n = self.ln(text, self.norm1_w, self.norm1_b, {eps}) * (1 + m[4]) + m[3]
    x = torch.cat([t_n, v_n], 1)
    q = torch.linear(x, self.q_w, self.q_b).view(B, L, {c.num_heads}, {c.head_dim}).transpose(1, 2)
    k = torch.linear(x, self.k_w, self.k_b).view(B, L, {c.num_heads}, {c.head_dim}).transpose(1, 2)
    v = torch.linear(x, self.v_w, self.v_b).view(B, L, {c.num_heads}, {c.head_dim}).transpose(1, 2)
    q = self.ln(q, self.norm_q_w, self.norm_q_b, 1e-6)
    k = self.ln(k, self.norm_k_w, self.norm_k_b, 1e-6)
{rope}
    a = self.attention(q, k, v).transpose(1, 2).reshape(B, L, {D})
    a = torch.linear(a, self.out_w, self.out_b)
    video = video + m[2] * a[:, T:]
    text = text + m[5] * a[:, :T]
    m = torch.linear(torch.silu(emb), self.norm2_lin_w, self.norm2_lin_b).unsqueeze(1).chunk(6, 2)
    v_n = self.ln(video, self.norm2_w, self.norm2_b, {eps}) * (1 + m[1]) + m[0]
    t_n = self.ln(text, self.norm2_w, self.norm2_b, {eps}) * (1 + m[4]) + m[3]
    x = torch.cat([t_n, v_n], 1)
    ff = torch.linear(torch.gelu(torch.linear(x, self.ff1_w, self.ff1_b), approximate='tanh'), self.ff2_w, self.ff2_b)
    video = video + m[2] * ff[:, T:]
    text = text + m[5] * ff[:, :T]
    return video, text
""")


def build_head(c: TransformerSpec, b: PartBuilder) -> None:
    D = c.inner_dim
    p = c.patch_size
    b.norm("norm_final", "norm_final", D)
    b.linear("norm_out_lin", "norm_out.linear", c.time_embed_dim, 2 * D)
    b.norm("norm_out", "norm_out.norm", D)
    b.linear("proj", "proj_out", D, p * p * c.out_channels)
    eps = float_literal(c.eps)
    # AdaLayerNorm(chunk_dim=1): shift first, then scale. Unpatchify: feature index c·p² + i·p + j.
    b.define(_LAYER_NORM + f"""
def forward(self, video: Tensor, emb: Tensor, f: int, h: int, w: int) -> Tensor:
    x = self.ln(video, self.norm_final_w, self.norm_final_b, {eps})
    m = torch.linear(torch.silu(emb), self.norm_out_lin_w, self.norm_out_lin_b).unsqueeze(1)
    x = self.ln(x, self.norm_out_w, self.norm_out_b, {eps}) * (1 + m[:, :, {D}:]) + m[:, :, :{D}]
    x = torch.linear(x, self.proj_w, self.proj_b)
    B = x.size(0)
    x = x.view(B, f, h // {p}, w // {p}, {c.out_channels}, {p}, {p}).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, f, {c.out_channels}, h, w).float()
""")


def write_parts(tr: torch.nn.Module, c: TransformerSpec, dtype: torch.dtype,
                save: Callable[[str, str, PartBuilder], None]) -> None:
    w = Weights(COMPONENT, tr)
    b = PartBuilder(w, dtype)
    build_embed(c, b)
    save("embed", "denoiser/embed.pt", b)
    for i in range(c.num_layers):
        b = PartBuilder(w, dtype)
        build_block(c, i, b)
        save("block", f"denoiser/block_{i:03d}.pt", b)
    b = PartBuilder(w, dtype)
    build_head(c, b)
    save("head", "denoiser/head.pt", b)


def stage_config(c: TransformerSpec) -> dict:
    return {"num_heads": c.num_heads, "head_dim": c.head_dim, "inner_dim": c.inner_dim, "num_layers": c.num_layers,
            "in_channels": c.in_channels, "out_channels": c.out_channels, "time_embed_dim": c.time_embed_dim,
            "text_embed_dim": c.text_embed_dim, "patch_size": c.patch_size, "ff_mult": c.ff_mult,
            "rotary": 1 if c.rotary else 0, "learned_positions": 1 if c.learned_pos else 0}
