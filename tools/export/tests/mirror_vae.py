"""A small eager mirror of diffusers' AutoencoderKLCogVideoX: attribute names, block structure, the causal-conv cache
threaded through frame chunks (encode: 8 frames after the first 8+rem; decode: 2 latent frames after the first
2+rem) and the encode/decode signatures, written from its documented behaviour (../shared/COGVIDEOX.md §5)."""

import math
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from mirror_common import FrozenDict, PretrainedMixin


class CogVideoXSafeConv3d(nn.Conv3d):
    pass  # diffusers splits very large inputs along time; the result is the plain convolution


class CogVideoXCausalConv3d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.time_kernel_size = kernel_size
        self.pad = (kernel_size - 1) // 2
        self.conv = CogVideoXSafeConv3d(in_channels, out_channels, kernel_size)

    def forward(self, x, conv_cache=None):
        k = self.time_kernel_size
        if k > 1:
            x = torch.cat(([conv_cache] if conv_cache is not None else [x[:, :, :1]] * (k - 1)) + [x], dim=2)
        new_cache = x[:, :, -k + 1:].clone()  # for k = 1 this is the whole chunk, as in diffusers
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="constant", value=0)
        return self.conv(x), new_cache


class CogVideoXSpatialNorm3D(nn.Module):
    def __init__(self, f_channels, zq_channels, groups):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=groups, eps=1e-6, affine=True)
        self.conv_y = CogVideoXCausalConv3d(zq_channels, f_channels, 1)
        self.conv_b = CogVideoXCausalConv3d(zq_channels, f_channels, 1)

    def forward(self, f, zq, conv_cache=None):
        conv_cache = conv_cache or {}
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            z_first = F.interpolate(zq[:, :, :1], size=f[:, :, :1].shape[-3:])
            z_rest = F.interpolate(zq[:, :, 1:], size=f[:, :, 1:].shape[-3:])
            zq = torch.cat([z_first, z_rest], dim=2)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        y, cy = self.conv_y(zq, conv_cache.get("conv_y"))
        b, cb = self.conv_b(zq, conv_cache.get("conv_b"))
        return self.norm_layer(f) * y + b, {"conv_y": cy, "conv_b": cb}


class CogVideoXResnetBlock3D(nn.Module):
    def __init__(self, in_channels, out_channels, groups, eps, spatial_norm_dim=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.nonlinearity = nn.SiLU()
        if spatial_norm_dim is None:
            self.norm1 = nn.GroupNorm(num_channels=in_channels, num_groups=groups, eps=eps)
            self.norm2 = nn.GroupNorm(num_channels=out_channels, num_groups=groups, eps=eps)
        else:
            self.norm1 = CogVideoXSpatialNorm3D(in_channels, spatial_norm_dim, groups)
            self.norm2 = CogVideoXSpatialNorm3D(out_channels, spatial_norm_dim, groups)
        self.conv1 = CogVideoXCausalConv3d(in_channels, out_channels, 3)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = CogVideoXCausalConv3d(out_channels, out_channels, 3)
        if in_channels != out_channels:
            self.conv_shortcut = CogVideoXSafeConv3d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, inputs, temb=None, zq=None, conv_cache=None):
        conv_cache = conv_cache or {}
        new = {}
        h = inputs
        if zq is not None:
            h, new["norm1"] = self.norm1(h, zq, conv_cache.get("norm1"))
        else:
            h = self.norm1(h)
        h, new["conv1"] = self.conv1(self.nonlinearity(h), conv_cache.get("conv1"))
        if zq is not None:
            h, new["norm2"] = self.norm2(h, zq, conv_cache.get("norm2"))
        else:
            h = self.norm2(h)
        h, new["conv2"] = self.conv2(self.dropout(self.nonlinearity(h)), conv_cache.get("conv2"))
        if self.in_channels != self.out_channels:
            inputs = self.conv_shortcut(inputs)
        return h + inputs, new


class CogVideoXDownsample3D(nn.Module):
    def __init__(self, channels, compress_time):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        if self.compress_time:
            B, C, T, H, W = x.shape
            x = x.permute(0, 3, 4, 1, 2).reshape(B * H * W, C, T)
            if T % 2 == 1:
                first, rest = x[..., 0], x[..., 1:]
                if rest.shape[-1] > 0:
                    rest = F.avg_pool1d(rest, kernel_size=2, stride=2)
                x = torch.cat([first[..., None], rest], dim=-1)
            else:
                x = F.avg_pool1d(x, kernel_size=2, stride=2)
            x = x.reshape(B, H, W, C, x.shape[-1]).permute(0, 3, 4, 1, 2)
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        B, C, T, H, W = x.shape
        x = self.conv(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))
        return x.reshape(B, T, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class CogVideoXUpsample3D(nn.Module):
    def __init__(self, channels, compress_time):
        super().__init__()
        self.compress_time = compress_time
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        if self.compress_time and x.shape[2] > 1 and x.shape[2] % 2 == 1:
            first = F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]
            rest = F.interpolate(x[:, :, 1:], scale_factor=2.0)
            x = torch.cat([first, rest], dim=2)
        elif self.compress_time and x.shape[2] > 1:
            x = F.interpolate(x, scale_factor=2.0)
        else:
            B, C, T, H, W = x.shape
            x = F.interpolate(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W), scale_factor=2.0)
            x = x.reshape(B, T, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        B, C, T, H, W = x.shape
        x = self.conv(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))
        return x.reshape(B, T, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class _Block(nn.Module):
    def __init__(self, resnets, sampler_name=None, sampler=None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if sampler_name:
            setattr(self, sampler_name, nn.ModuleList([sampler]) if sampler is not None else None)
        self._sampler_name = sampler_name

    def forward(self, h, temb=None, zq=None, conv_cache=None):
        conv_cache = conv_cache or {}
        new = {}
        for i, r in enumerate(self.resnets):
            h, new[f"resnet_{i}"] = r(h, temb, zq, conv_cache.get(f"resnet_{i}"))
        samplers = getattr(self, self._sampler_name) if self._sampler_name else None
        for s in samplers or []:
            h = s(h)
        return h, new


class CogVideoXEncoder3D(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_eps, norm_num_groups,
                 temporal_compression_ratio):
        super().__init__()
        levels = int(math.log2(temporal_compression_ratio))
        self.conv_in = CogVideoXCausalConv3d(in_channels, block_out_channels[0], 3)
        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, ch in enumerate(block_out_channels):
            in_ch, out_ch = out_ch, ch
            last = i == len(block_out_channels) - 1
            resnets = [CogVideoXResnetBlock3D(in_ch if j == 0 else out_ch, out_ch, norm_num_groups, norm_eps)
                       for j in range(layers_per_block)]
            self.down_blocks.append(_Block(resnets, "downsamplers",
                                           None if last else CogVideoXDownsample3D(out_ch, i < levels)))
        c = block_out_channels[-1]
        self.mid_block = _Block([CogVideoXResnetBlock3D(c, c, norm_num_groups, norm_eps) for _ in range(2)])
        self.norm_out = nn.GroupNorm(norm_num_groups, c, eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = CogVideoXCausalConv3d(c, 2 * out_channels, 3)

    def forward(self, sample, temb=None, conv_cache=None):
        conv_cache = conv_cache or {}
        new = {}
        h, new["conv_in"] = self.conv_in(sample, conv_cache.get("conv_in"))
        for i, block in enumerate(self.down_blocks):
            h, new[f"down_block_{i}"] = block(h, temb, None, conv_cache.get(f"down_block_{i}"))
        h, new["mid_block"] = self.mid_block(h, temb, None, conv_cache.get("mid_block"))
        h, new["conv_out"] = self.conv_out(self.conv_act(self.norm_out(h)), conv_cache.get("conv_out"))
        return h, new


class CogVideoXDecoder3D(nn.Module):
    def __init__(self, in_channels, out_channels, block_out_channels, layers_per_block, norm_eps, norm_num_groups,
                 temporal_compression_ratio):
        super().__init__()
        levels = int(math.log2(temporal_compression_ratio))
        rev = list(reversed(block_out_channels))
        self.conv_in = CogVideoXCausalConv3d(in_channels, rev[0], 3)
        self.mid_block = _Block([CogVideoXResnetBlock3D(rev[0], rev[0], norm_num_groups, norm_eps, in_channels)
                                 for _ in range(2)])
        self.up_blocks = nn.ModuleList()
        out_ch = rev[0]
        for i, ch in enumerate(rev):
            prev, out_ch = out_ch, ch
            last = i == len(rev) - 1
            resnets = [CogVideoXResnetBlock3D(prev if j == 0 else out_ch, out_ch, norm_num_groups, norm_eps,
                                              in_channels) for j in range(layers_per_block + 1)]
            self.up_blocks.append(_Block(resnets, "upsamplers",
                                         None if last else CogVideoXUpsample3D(out_ch, i < levels)))
        self.norm_out = CogVideoXSpatialNorm3D(rev[-1], in_channels, norm_num_groups)
        self.conv_act = nn.SiLU()
        self.conv_out = CogVideoXCausalConv3d(rev[-1], out_channels, 3)

    def forward(self, sample, temb=None, conv_cache=None):
        conv_cache = conv_cache or {}
        new = {}
        h, new["conv_in"] = self.conv_in(sample, conv_cache.get("conv_in"))
        h, new["mid_block"] = self.mid_block(h, temb, sample, conv_cache.get("mid_block"))
        for i, block in enumerate(self.up_blocks):
            h, new[f"up_block_{i}"] = block(h, temb, sample, conv_cache.get(f"up_block_{i}"))
        h, new["norm_out"] = self.norm_out(h, sample, conv_cache.get("norm_out"))
        h, new["conv_out"] = self.conv_out(self.conv_act(h), conv_cache.get("conv_out"))
        return h, new


class DiagonalGaussianDistribution:
    def __init__(self, parameters):
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)


class AutoencoderKLCogVideoX(PretrainedMixin, nn.Module):
    config_extras = {"_class_name": "AutoencoderKLCogVideoX", "_diffusers_version": "0.32.0"}

    def __init__(self, in_channels=3, out_channels=3,
                 down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                 block_out_channels=(16, 32, 32, 64), latent_channels=16, layers_per_block=1, act_fn="silu",
                 norm_eps=1e-6, norm_num_groups=8, temporal_compression_ratio=4, sample_height=64, sample_width=64,
                 scaling_factor=0.7, shift_factor=None, latents_mean=None, latents_std=None, force_upcast=True,
                 use_quant_conv=False, use_post_quant_conv=False):
        super().__init__()
        self.config = FrozenDict({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.encoder = CogVideoXEncoder3D(in_channels, latent_channels, block_out_channels, layers_per_block,
                                          norm_eps, norm_num_groups, temporal_compression_ratio)
        self.decoder = CogVideoXDecoder3D(latent_channels, out_channels, block_out_channels, layers_per_block,
                                          norm_eps, norm_num_groups, temporal_compression_ratio)
        self.quant_conv = None
        self.post_quant_conv = None
        self.num_latent_frames_batch_size = 2
        self.num_sample_frames_batch_size = 8

    @staticmethod
    def _chunks(frames, batch):
        rem = frames % batch
        return [(batch * i + (0 if i == 0 else rem), batch * (i + 1) + rem) for i in range(max(frames // batch, 1))]

    def encode(self, x, return_dict=True):
        cache, outs = None, []
        for start, end in self._chunks(x.shape[2], self.num_sample_frames_batch_size):
            h, cache = self.encoder(x[:, :, start:end], conv_cache=cache)
            outs.append(h)
        dist = DiagonalGaussianDistribution(torch.cat(outs, dim=2))
        return SimpleNamespace(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z, return_dict=True):
        cache, outs = None, []
        for start, end in self._chunks(z.shape[2], self.num_latent_frames_batch_size):
            h, cache = self.decoder(z[:, :, start:end], conv_cache=cache)
            outs.append(h)
        video = torch.cat(outs, dim=2)
        return SimpleNamespace(sample=video) if return_dict else (video,)
