#include "models/transformer_script.h"

#include <string>

#include <fmt/format.h>

namespace reel {

namespace {

// A TorchScript float literal: fmt writes 1.0 as "1", which TorchScript reads as an int.
std::string F(double x) {
  std::string s = fmt::format("{}", x);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

// In the activations' dtype, as diffusers' nn.LayerNorm: a float32 copy normalised and rounded differs from ATen's bf16
// kernel in rare elements (docs/STAGE_PACKAGE.md, Parity).
const char* kLayerNorm = R"(
def ln(self, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    return torch.layer_norm(x, [x.size(-1)], w.to(x.dtype), b.to(x.dtype), eps)
)";

// A linear layer over the timestep embedding, one row per batch element whatever the batch: a GEMM over B rows
// rounds differently from B GEMVs (MKL takes another kernel for one row), so a guided step split across two workers
// (batch 1 each) would differ in the last bits from the same step on one worker (batch 2). One `linear` call per
// row is computed the same way for any B. (A `bmm` against the weight expanded over the batch did the same, but in
// bf16 it copied the expanded weight on every call: 30 ms against 0.3 ms for a [2, 512] x [18432, 512] product.)
// Also used by the embed and the head.
const char* kRowLinear = R"(
def row_linear(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    rows = [torch.linear(x[i:i + 1], w, b) for i in range(x.size(0))]
    return torch.cat(rows, 0)
)";

// 3D sin-cos table of CogVideoX-2B (and of 5B-I2V at sizes its learned table does not cover).
const char* kSinCos = R"(
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
)";

// 3D RoPE with CogVideoX 1.0's linspace grid fitted into the sample-size base grid.
const char* kRope = R"(
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
)";

// Attention over [B, heads, L, head_dim]. Fused: scaled_dot_product_attention, as diffusers'
// CogVideoXAttnProcessor2_0 calls it (flash or memory-efficient kernels on CUDA, the flash kernel on CPU; no score
// matrix is stored). Chunked: the formulation of packages made before LibTorch 2 — q·kᵀ for a chunk of queries at a
// time, softmax in float32 — kept to compare against (--attention chunked).
std::string AttentionSource(bool fused) {
  if (fused) return R"(
def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.scaled_dot_product_attention(q, k, v)
)";
  return fmt::format(R"(
def attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    B = q.size(0)
    H = q.size(1)
    L = q.size(2)
    scale = float(q.size(3)) ** -0.5
    kt = k.transpose(-1, -2)
    chunk = max(1, {} // (B * H * k.size(2)))
    if chunk >= L:
        return torch.matmul(torch.softmax(torch.matmul(q, kt).float() * scale, -1).to(v.dtype), v)
    outs: List[Tensor] = []
    for i in range(0, L, chunk):
        s = torch.matmul(q[:, :, i:i + chunk], kt).float() * scale
        outs.append(torch.matmul(torch.softmax(s, -1).to(v.dtype), v))
    return torch.cat(outs, 2)
)",
                     kAttentionChunkElements);
}

}  // namespace

void BuildTransformerEmbed(const TransformerConfig& c, int text_tokens, ScriptBuilder& b) {
  const int D = c.inner_dim();
  const int p = c.patch_size;
  b.Conv("patch", c.in_channels, D, {p, p}, c.patch_bias);
  b.Linear("text_proj", c.text_embed_dim, D);
  b.Linear("time1", D, c.time_embed_dim);
  b.Linear("time2", c.time_embed_dim, c.time_embed_dim);
  const int sf = c.sample_latent_frames, sh = c.sample_latent_height / p, sw = c.sample_latent_width / p;
  if (c.learned_pos) b.Normal("pos_embedding", {1, text_tokens + sf * sh * sw, D}, 0.02);

  std::string positions;
  if (c.learned_pos) {
    positions = fmt::format(R"(
    if f == {sf} and hp == {sh} and wp == {sw}:
        t = t + self.pos_embedding[:, :T].to(dt)
        x = x + self.pos_embedding[:, T:].to(dt)
    elif hp == {sh} and wp == {sw}:
        x = x + self.sincos_3d(f, hp, wp, {D}, {si}, {ti}).to(x.device, dt).unsqueeze(0)
    else:
        assert False, "this model's learned positions need a latent size of {sh}x{sw} patches"
)",
                            fmt::arg("sf", sf), fmt::arg("sh", sh), fmt::arg("sw", sw), fmt::arg("D", D),
                            fmt::arg("si", F(c.spatial_interpolation)), fmt::arg("ti", F(c.temporal_interpolation)));
  } else if (!c.rotary) {
    positions = fmt::format("    x = x + self.sincos_3d(f, hp, wp, {}, {}, {}).to(x.device, dt).unsqueeze(0)\n", D,
                            F(c.spatial_interpolation), F(c.temporal_interpolation));
  }
  const std::string rope =
      c.rotary ? fmt::format("    cos, sin = self.rope(f, hp, wp, {}, {}, {})\n    cos = cos.to(x.device)\n"
                             "    sin = sin.to(x.device)\n",
                             sh, sw, c.head_dim)
               : "    cos = torch.zeros([0], device=x.device)\n    sin = torch.zeros([0], device=x.device)\n";

  b.Define(std::string(kSinCos) + kRope + kRowLinear + fmt::format(R"(
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
    x = torch.conv2d(latents.to(dt).reshape(B * f, C, H, W), self.patch_w, {patch_b}, [{p}, {p}])
    x = x.view(B, f, {D}, hp, wp).permute(0, 1, 3, 4, 2).reshape(B, f * hp * wp, {D})
    t = torch.linear(text.to(dt), self.text_proj_w, self.text_proj_b)
{positions}
    half = {D} // 2
    k = torch.arange(half, device=timestep.device).float()
    freqs = torch.exp(k * -9.210340371976184 / (half - {freq_shift}))
    arg = timestep.float().unsqueeze(1) * freqs.unsqueeze(0)
    temb = torch.cat({halves}, 1).to(dt)
    emb = self.row_linear(torch.silu(self.row_linear(temb, self.time1_w, self.time1_b)), self.time2_w, self.time2_b)
{rope}
    return x, t, emb, cos, sin
)",
                                                     fmt::arg("p", p), fmt::arg("D", D),
                                                     fmt::arg("patch_b", c.patch_bias ? "self.patch_b" : "None"),
                                                     fmt::arg("freq_shift", F(c.freq_shift)),
                                                     fmt::arg("halves", c.flip_sin_to_cos
                                                                            ? "[torch.cos(arg), torch.sin(arg)]"
                                                                            : "[torch.sin(arg), torch.cos(arg)]"),
                                                     fmt::arg("positions", positions), fmt::arg("rope", rope)));
}

void BuildTransformerBlock(const TransformerConfig& c, ScriptBuilder& b) {
  const int D = c.inner_dim();
  const int E = c.time_embed_dim;
  b.Linear("norm1_lin", E, 6 * D);
  b.Norm("norm1", D);
  for (const char* n : {"q", "k", "v"}) b.Linear(n, D, D);
  b.Norm("norm_q", c.head_dim);
  b.Norm("norm_k", c.head_dim);
  b.Linear("out", D, D);
  b.Linear("norm2_lin", E, 6 * D);
  b.Norm("norm2", D);
  b.Linear("ff1", D, c.ff_mult * D);
  b.Linear("ff2", c.ff_mult * D, D);
  const std::string rope = c.rotary ? R"(
    q = torch.cat([q[:, :, :T], self.apply_rope(q[:, :, T:], cos, sin)], 2)
    k = torch.cat([k[:, :, :T], self.apply_rope(k[:, :, T:], cos, sin)], 2)
)"
                                    : "";
  b.Define(std::string(kLayerNorm) + kRowLinear + AttentionSource(c.fused_attention) + fmt::format(R"(
def apply_rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    xf = x.float()
    pairs = xf.reshape(x.size(0), x.size(1), x.size(2), x.size(3) // 2, 2)
    rot = torch.stack([-pairs[:, :, :, :, 1], pairs[:, :, :, :, 0]], -1).reshape(x.size())
    return (xf * cos + rot * sin).to(x.dtype)

def attend_in(self, video: Tensor, text: Tensor, emb: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B = video.size(0)
    T = text.size(1)
    L = T + video.size(1)
    m = self.row_linear(torch.silu(emb), self.norm1_lin_w, self.norm1_lin_b).unsqueeze(1).chunk(6, 2)
    v_n = self.ln(video, self.norm1_w, self.norm1_b, {eps}) * (1 + m[1]) + m[0]
    t_n = self.ln(text, self.norm1_w, self.norm1_b, {eps}) * (1 + m[4]) + m[3]
    x = torch.cat([t_n, v_n], 1)
    q = torch.linear(x, self.q_w, self.q_b).view(B, L, {heads}, {hd}).transpose(1, 2)
    k = torch.linear(x, self.k_w, self.k_b).view(B, L, {heads}, {hd}).transpose(1, 2)
    v = torch.linear(x, self.v_w, self.v_b).view(B, L, {heads}, {hd}).transpose(1, 2)
    q = self.ln(q, self.norm_q_w, self.norm_q_b, 1e-6)
    k = self.ln(k, self.norm_k_w, self.norm_k_b, 1e-6)
{rope}
    return q, k, v, m[2], m[5]

def attend_out(self, video: Tensor, text: Tensor, emb: Tensor, a: Tensor, gate_v: Tensor, gate_t: Tensor) -> Tuple[Tensor, Tensor]:
    T = text.size(1)
    a = torch.linear(a, self.out_w, self.out_b)
    video = video + gate_v * a[:, T:]
    text = text + gate_t * a[:, :T]
    m = self.row_linear(torch.silu(emb), self.norm2_lin_w, self.norm2_lin_b).unsqueeze(1).chunk(6, 2)
    v_n = self.ln(video, self.norm2_w, self.norm2_b, {eps}) * (1 + m[1]) + m[0]
    t_n = self.ln(text, self.norm2_w, self.norm2_b, {eps}) * (1 + m[4]) + m[3]
    x = torch.cat([t_n, v_n], 1)
    ff = torch.linear(torch.gelu(torch.linear(x, self.ff1_w, self.ff1_b), approximate='tanh'), self.ff2_w, self.ff2_b)
    video = video + m[2] * ff[:, T:]
    text = text + m[5] * ff[:, :T]
    return video, text

def forward(self, video: Tensor, text: Tensor, emb: Tensor, cos: Tensor, sin: Tensor) -> Tuple[Tensor, Tensor]:
    q, k, v, gate_v, gate_t = self.attend_in(video, text, emb, cos, sin)
    a = self.attention(q, k, v).transpose(1, 2).reshape(video.size(0), q.size(2), {D})
    video, text = self.attend_out(video, text, emb, a, gate_v, gate_t)
    return video, text
)",
                                                 fmt::arg("eps", F(c.eps)),
                                                 fmt::arg("heads", c.num_heads), fmt::arg("hd", c.head_dim),
                                                 fmt::arg("D", D), fmt::arg("rope", rope)));
}

void BuildTransformerHead(const TransformerConfig& c, ScriptBuilder& b) {
  const int D = c.inner_dim();
  const int p = c.patch_size;
  b.Norm("norm_final", D);
  b.Linear("norm_out_lin", c.time_embed_dim, 2 * D);
  b.Norm("norm_out", D);
  b.Linear("proj", D, p * p * c.out_channels);
  b.Define(std::string(kLayerNorm) + kRowLinear + fmt::format(R"(
def project(self, video: Tensor, emb: Tensor) -> Tensor:
    x = self.ln(video, self.norm_final_w, self.norm_final_b, {eps})
    m = self.row_linear(torch.silu(emb), self.norm_out_lin_w, self.norm_out_lin_b).unsqueeze(1)
    x = self.ln(x, self.norm_out_w, self.norm_out_b, {eps}) * (1 + m[:, :, {D}:]) + m[:, :, :{D}]
    return torch.linear(x, self.proj_w, self.proj_b)

def unpatchify(self, x: Tensor, f: int, h: int, w: int) -> Tensor:
    B = x.size(0)
    x = x.view(B, f, h // {p}, w // {p}, {C}, {p}, {p}).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, f, {C}, h, w).float()

def forward(self, video: Tensor, emb: Tensor, f: int, h: int, w: int) -> Tensor:
    return self.unpatchify(self.project(video, emb), f, h, w)
)",
                                                 fmt::arg("eps", F(c.eps)), fmt::arg("D", D), fmt::arg("p", p),
                                                 fmt::arg("C", c.out_channels)));
}

}  // namespace reel
