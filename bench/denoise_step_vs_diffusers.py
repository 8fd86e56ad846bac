#!/usr/bin/env python3
"""One denoising step's transformer call, diffusers' module against an exported package's denoiser, in one process.

Where bench/reel_vs_diffusers.sh times whole pipelines in separate processes, this loads diffusers'
CogVideoXTransformer3DModel from a checkpoint (bench/diffusers_pipeline.py checkpoint) and one or more packages'
denoiser parts (embed, blocks, head: torch.jit.load, TorchScript's graph optimiser off as Reel runs them on the CPU)
and calls them as Reel's runtime does (runtime/pipeline.cc, DenoiseStep), on the same CFG batch of latents, text
embeddings and timestep. It checks each against diffusers' prediction, then times them interleaved (the order flips
every rep). Wall and process-CPU seconds are both printed: at 1 thread the CPU time is far less disturbed by other
load on a shared machine. --profile adds torch.profiler's op table of each side (self CPU time by op and input
shape), which is how a difference is traced to the ops that make it.

Usage (with the project venv, .venv/bin/python):
  denoise_step_vs_diffusers.py --checkpoint DIR --dtype f32|bf16 [--frames F --height H --width W] [--threads T]
                               [--reps N] [--profile] LABEL=PACKAGE ...
e.g. bench/denoise_step_vs_diffusers.py --checkpoint /tmp/rvd-work/2b/ckpt --dtype f32 --height 128 --width 128 \\
       --threads 1 --profile reel=/tmp/rvd-work/2b/pkg-f32
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from side_by_side import DTYPES, add_common_args, check_args, compare, load


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, height=128, width=128, reps=7)
    p.add_argument("--text-tokens", type=int, help="default: the transformer's max_text_seq_length (226)")
    a = p.parse_args(argv)
    check_args(p, a, 16, "manifest.json")
    return a


def reel_step(pkg):
    """The denoiser's parts called as runtime/pipeline.cc's DenoiseStep calls them."""
    manifest = json.loads((Path(pkg) / "manifest.json").read_text())
    stages = manifest["stages"]
    stage = next(s for s in stages if s["kind"] == "denoiser") if isinstance(stages, list) else stages["denoiser"]
    parts = [(p["role"], torch.jit.load(str(Path(pkg) / p["file"])).eval()) for p in stage["parts"]]
    embed = next(m for r, m in parts if r == "embed")
    blocks = [m for r, m in parts if r == "block"]
    head = next(m for r, m in parts if r == "head")

    def step(latents, text, timestep):
        video, txt, emb, cos, sin = embed(latents, text, timestep)
        for b in blocks:
            video, txt = b(video, txt, emb, cos, sin)
        return head(video, emb, latents.shape[1], latents.shape[3], latents.shape[4])

    return step


def main(argv):
    a = parse_args(argv)
    from diffusers import CogVideoXTransformer3DModel

    dtype = DTYPES[a.dtype]
    dit = load(a, CogVideoXTransformer3DModel, "transformer")
    cfg = dit.config
    f = (a.frames - 1) // 4 + 1
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, f, cfg.in_channels, a.height // 8, a.width // 8, generator=g).to(dtype)
    text = torch.randn(2, a.text_tokens or cfg.max_text_seq_length, cfg.text_embed_dim, generator=g).to(dtype)
    timestep = torch.tensor([999, 999])
    rotary = None
    if cfg.use_rotary_positional_embeddings:
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_3d_rotary_pos_embed, get_resize_crop_region_for_grid
        p = cfg.patch_size
        gh, gw = a.height // 8 // p, a.width // 8 // p
        base_w, base_h = cfg.sample_width // p, cfg.sample_height // p  # as the pipeline prepares them
        crops = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
        rotary = get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, (gh, gw), f, device="cpu")

    sides = {"diffusers": lambda: dit(hidden_states=latents, encoder_hidden_states=text, timestep=timestep,
                                      image_rotary_emb=rotary, return_dict=False)[0]}
    for s in a.packages:
        label, _, pkg = s.partition("=")
        step = reel_step(pkg)
        sides[label] = lambda st=step: st(latents, text, timestep)
    compare(sides, a.reps, f"{a.dtype}, latents {list(latents.shape)}", a.profile, "steps")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
