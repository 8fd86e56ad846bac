"""A small eager mirror of diffusers' CogVideoXTransformer3DModel (CogVideoX 1.0): attribute names, block structure
and forward signature of transformer_cogvideox / embeddings / normalization / attention, written from their
documented behaviour (../shared/COGVIDEOX.md §3-4) for the tests. Also the pipeline's RoPE preparation."""

import math
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from mirror_common import FrozenDict, PretrainedMixin


# --- positional tables ------------------------------------------------------------------------------------------

def sincos_1d(dim, pos):
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_3d_sincos_pos_embed(embed_dim, spatial_size, temporal_size, s_scale, t_scale):
    """[T, H'·W', D]: per token [temporal(D/4) ‖ w-part ‖ h-part]; spatial_size is (width, height)."""
    w, h = spatial_size
    d_spatial, d_temporal = 3 * embed_dim // 4, embed_dim // 4
    grid_h = torch.arange(h, dtype=torch.float32) / s_scale
    grid_w = torch.arange(w, dtype=torch.float32) / s_scale
    gw, gh = torch.meshgrid(grid_w, grid_h, indexing="xy")  # [h, w] each; gw holds the column
    spatial = torch.cat([sincos_1d(d_spatial // 2, gw), sincos_1d(d_spatial // 2, gh)], dim=1)
    temporal = sincos_1d(d_temporal, torch.arange(temporal_size, dtype=torch.float32) / t_scale)
    spatial = spatial[None].repeat(temporal_size, 1, 1)
    temporal = temporal[:, None].repeat(1, h * w, 1)
    return torch.cat([temporal, spatial], dim=-1)


def get_resize_crop_region_for_grid(src, tgt_width, tgt_height):
    tw, th = tgt_width, tgt_height
    h, w = src
    if h / w > th / tw:
        rh, rw = th, int(round(th / h * w))
    else:
        rw, rh = tw, int(round(tw / w * h))
    top, left = int(round((th - rh) / 2.0)), int(round((tw - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rope_1d(dim, pos):
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))
    freqs = torch.outer(pos, freqs)
    return freqs.cos().repeat_interleave(2, dim=1).float(), freqs.sin().repeat_interleave(2, dim=1).float()


def get_3d_rotary_pos_embed(embed_dim, crops_coords, grid_size, temporal_size):
    (start, stop), (gh, gw) = crops_coords, grid_size
    grid_h = torch.linspace(start[0], stop[0] * (gh - 1) / gh, gh, dtype=torch.float32)
    grid_w = torch.linspace(start[1], stop[1] * (gw - 1) / gw, gw, dtype=torch.float32)
    grid_t = torch.linspace(0, temporal_size * (temporal_size - 1) / temporal_size, temporal_size,
                            dtype=torch.float32)
    dt, dh = embed_dim // 4, embed_dim // 8 * 3
    t, h, w = rope_1d(dt, grid_t), rope_1d(dh, grid_h), rope_1d(dh, grid_w)

    def combine(a, b, c):
        a = a[:, None, None, :].expand(-1, gh, gw, -1)
        b = b[None, :, None, :].expand(temporal_size, -1, gw, -1)
        c = c[None, None, :, :].expand(temporal_size, gh, -1, -1)
        return torch.cat([a, b, c], dim=-1).reshape(temporal_size * gh * gw, -1)

    return combine(t[0], h[0], w[0]), combine(t[1], h[1], w[1])


def prepare_rotary_positional_embeddings(transformer, height, width, num_frames, vae_scale_factor_spatial=8):
    """The pipeline's _prepare_rotary_positional_embeddings (height/width in pixels, frames in latents)."""
    c = transformer.config
    gh = height // (vae_scale_factor_spatial * c.patch_size)
    gw = width // (vae_scale_factor_spatial * c.patch_size)
    crops = get_resize_crop_region_for_grid((gh, gw), c.sample_width // c.patch_size, c.sample_height // c.patch_size)
    return get_3d_rotary_pos_embed(c.attention_head_dim, crops, (gh, gw), num_frames)


def apply_rotary_emb(x, freqs):
    cos, sin = freqs[0][None, None], freqs[1][None, None]
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def timestep_embedding(t, dim, flip_sin_to_cos, shift):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32) / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    return torch.cat([emb[:, half:], emb[:, :half]], dim=-1) if flip_sin_to_cos else emb


# --- modules ----------------------------------------------------------------------------------------------------

class CogVideoXPatchEmbed(nn.Module):
    def __init__(self, patch_size, in_channels, embed_dim, text_embed_dim, bias, sample_width, sample_height,
                 sample_frames, temporal_compression_ratio, max_text_seq_length, spatial_interpolation_scale,
                 temporal_interpolation_scale, use_positional_embeddings, use_learned_positional_embeddings):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.sample_height, self.sample_width, self.sample_frames = sample_height, sample_width, sample_frames
        self.temporal_compression_ratio = temporal_compression_ratio
        self.max_text_seq_length = max_text_seq_length
        self.spatial_interpolation_scale = spatial_interpolation_scale
        self.temporal_interpolation_scale = temporal_interpolation_scale
        self.use_positional_embeddings = use_positional_embeddings
        self.use_learned_positional_embeddings = use_learned_positional_embeddings
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.text_proj = nn.Linear(text_embed_dim, embed_dim)
        if use_positional_embeddings or use_learned_positional_embeddings:
            table = self._get_positional_embeddings(sample_height, sample_width, sample_frames)
            self.register_buffer("pos_embedding", table, persistent=use_learned_positional_embeddings)

    def _get_positional_embeddings(self, height, width, frames):
        hp, wp = height // self.patch_size, width // self.patch_size
        f = (frames - 1) // self.temporal_compression_ratio + 1
        pos = get_3d_sincos_pos_embed(self.embed_dim, (wp, hp), f, self.spatial_interpolation_scale,
                                      self.temporal_interpolation_scale).flatten(0, 1)
        joint = torch.zeros(1, self.max_text_seq_length + f * hp * wp, self.embed_dim, dtype=torch.float32)
        joint[:, self.max_text_seq_length:] = pos
        return joint

    def forward(self, text_embeds, image_embeds):
        text_embeds = self.text_proj(text_embeds)
        B, f, C, H, W = image_embeds.shape
        x = self.proj(image_embeds.reshape(-1, C, H, W))
        x = x.view(B, f, *x.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        embeds = torch.cat([text_embeds, x], dim=1)
        if self.use_positional_embeddings or self.use_learned_positional_embeddings:
            if self.use_learned_positional_embeddings and (self.sample_width != W or self.sample_height != H):
                raise ValueError("learned positional embeddings need the sample size")
            frames = (f - 1) * self.temporal_compression_ratio + 1
            if self.sample_height != H or self.sample_width != W or self.sample_frames != frames:
                table = self._get_positional_embeddings(H, W, frames)
            else:
                table = self.pos_embedding
            embeds = embeds + table.to(embeds.dtype)
        return embeds


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, time_embed_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample, condition=None):
        return self.linear_2(self.act(self.linear_1(sample)))


class CogVideoXLayerNormZero(nn.Module):
    def __init__(self, conditioning_dim, embedding_dim, elementwise_affine, eps):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 6 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, hidden, encoder_hidden, temb):
        shift, scale, gate, enc_shift, enc_scale, enc_gate = self.linear(self.silu(temb)).chunk(6, dim=1)
        hidden = self.norm(hidden) * (1 + scale)[:, None, :] + shift[:, None, :]
        encoder_hidden = self.norm(encoder_hidden) * (1 + enc_scale)[:, None, :] + enc_shift[:, None, :]
        return hidden, encoder_hidden, gate[:, None, :], enc_gate[:, None, :]


class Attention(nn.Module):
    """diffusers' Attention with CogVideoXAttnProcessor2_0 (joint text + video self-attention, QK LayerNorm)."""

    def __init__(self, query_dim, dim_head, heads, bias):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(query_dim, inner, bias=bias)
        self.to_v = nn.Linear(query_dim, inner, bias=bias)
        self.norm_q = nn.LayerNorm(dim_head, eps=1e-6)
        self.norm_k = nn.LayerNorm(dim_head, eps=1e-6)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=True), nn.Dropout(0.0)])

    def forward(self, hidden_states, encoder_hidden_states, image_rotary_emb=None):
        T = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        B = x.shape[0]
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        hd = k.shape[-1] // self.heads
        q, k, v = (t.view(B, -1, self.heads, hd).transpose(1, 2) for t in (q, k, v))
        q, k = self.norm_q(q), self.norm_k(k)
        if image_rotary_emb is not None:
            q[:, :, T:] = apply_rotary_emb(q[:, :, T:], image_rotary_emb)
            k[:, :, T:] = apply_rotary_emb(k[:, :, T:], image_rotary_emb)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(B, -1, self.heads * hd)
        out = self.to_out[1](self.to_out[0](out))
        return out[:, T:], out[:, :T]


class GELU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GELU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim), nn.Dropout(0.0)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class CogVideoXBlock(nn.Module):
    def __init__(self, dim, num_attention_heads, attention_head_dim, time_embed_dim, norm_eps):
        super().__init__()
        self.norm1 = CogVideoXLayerNormZero(time_embed_dim, dim, True, norm_eps)
        self.attn1 = Attention(dim, attention_head_dim, num_attention_heads, bias=True)
        self.norm2 = CogVideoXLayerNormZero(time_embed_dim, dim, True, norm_eps)
        self.ff = FeedForward(dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None):
        T = encoder_hidden_states.size(1)
        n, n_enc, gate, enc_gate = self.norm1(hidden_states, encoder_hidden_states, temb)
        a, a_enc = self.attn1(n, n_enc, image_rotary_emb)
        hidden_states = hidden_states + gate * a
        encoder_hidden_states = encoder_hidden_states + enc_gate * a_enc
        n, n_enc, gate, enc_gate = self.norm2(hidden_states, encoder_hidden_states, temb)
        ff = self.ff(torch.cat([n_enc, n], dim=1))
        hidden_states = hidden_states + gate * ff[:, T:]
        encoder_hidden_states = encoder_hidden_states + enc_gate * ff[:, :T]
        return hidden_states, encoder_hidden_states


class AdaLayerNorm(nn.Module):
    def __init__(self, embedding_dim, output_dim, eps):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim // 2, eps)

    def forward(self, x, temb):
        shift, scale = self.linear(self.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]


class CogVideoXTransformer3DModel(PretrainedMixin, nn.Module):
    config_extras = {"_class_name": "CogVideoXTransformer3DModel", "_diffusers_version": "0.32.0"}

    def __init__(self, num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
                 flip_sin_to_cos=True, freq_shift=0, time_embed_dim=64, ofs_embed_dim=None, text_embed_dim=64,
                 num_layers=2, dropout=0.0, attention_bias=True, sample_width=8, sample_height=8, sample_frames=9,
                 patch_size=2, patch_size_t=None, temporal_compression_ratio=4, max_text_seq_length=32,
                 activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True,
                 norm_eps=1e-5, spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
                 use_rotary_positional_embeddings=False, use_learned_positional_embeddings=False, patch_bias=True):
        super().__init__()
        self.config = FrozenDict({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        D = num_attention_heads * attention_head_dim
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size, in_channels, D, text_embed_dim, patch_bias, sample_width, sample_height, sample_frames,
            temporal_compression_ratio, max_text_seq_length, spatial_interpolation_scale,
            temporal_interpolation_scale, not use_rotary_positional_embeddings, use_learned_positional_embeddings)
        self.embedding_dropout = nn.Dropout(dropout)
        self.time_embedding = TimestepEmbedding(D, time_embed_dim)
        self.transformer_blocks = nn.ModuleList([
            CogVideoXBlock(D, num_attention_heads, attention_head_dim, time_embed_dim, norm_eps)
            for _ in range(num_layers)])
        self.norm_final = nn.LayerNorm(D, norm_eps, norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(time_embed_dim, 2 * D, norm_eps)
        self.proj_out = nn.Linear(D, patch_size * patch_size * out_channels)

    def forward(self, hidden_states, encoder_hidden_states, timestep, timestep_cond=None, ofs=None,
                image_rotary_emb=None, attention_kwargs=None, return_dict=True):
        c = self.config
        B, f, C, H, W = hidden_states.shape
        t_emb = timestep_embedding(timestep, self.patch_embed.embed_dim, c.flip_sin_to_cos, c.freq_shift)
        emb = self.time_embedding(t_emb.to(hidden_states.dtype), timestep_cond)
        x = self.embedding_dropout(self.patch_embed(encoder_hidden_states, hidden_states))
        T = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = x[:, :T], x[:, T:]
        for block in self.transformer_blocks:
            hidden_states, encoder_hidden_states = block(hidden_states, encoder_hidden_states, emb, image_rotary_emb)
        hidden_states = self.proj_out(self.norm_out(self.norm_final(hidden_states), emb))
        p = c.patch_size
        out = hidden_states.reshape(B, f, H // p, W // p, -1, p, p)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        return SimpleNamespace(sample=out) if return_dict else (out,)
