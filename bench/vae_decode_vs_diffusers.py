#!/usr/bin/env python3
"""The VAE decode alone, diffusers' module against exported TorchScript decoders, in one process on one input.

Where bench/reel_vs_diffusers.sh times whole pipelines in separate processes, this loads diffusers'
AutoencoderKLCogVideoX from a checkpoint (bench/diffusers_pipeline.py checkpoint) and one or more packages'
vae_decoder/module.pt (torch.jit.load, TorchScript's graph optimiser off as Reel runs it on the CPU), checks each
against diffusers' frames, then times them on the same latents, interleaved (the order flips every rep). Wall and
process-CPU seconds are both printed: at 1 thread the CPU time is far less disturbed by other load on a shared
machine. --profile adds torch.profiler's op table of each side (self CPU time by op and input shape).

Usage (with the project venv, .venv/bin/python):
  vae_decode_vs_diffusers.py --checkpoint DIR --dtype f32|bf16 [--frames F --height H --width W] [--threads T]
                             [--reps N] [--profile] LABEL=PACKAGE ...
e.g. bench/vae_decode_vs_diffusers.py --checkpoint /tmp/rvd-work/tiny/ckpt --dtype f32 --threads 1 \
       reel=/tmp/rvd-work/tiny/pkg-f32
"""

import argparse
import sys
from pathlib import Path

import torch

from side_by_side import DTYPES, add_common_args, check_args, compare, load


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, height=64, width=64, reps=9)
    a = p.parse_args(argv)
    check_args(p, a, 8, "vae_decoder/module.pt")
    return a


def main(argv):
    a = parse_args(argv)
    from diffusers import AutoencoderKLCogVideoX

    dtype = DTYPES[a.dtype]
    vae = load(a, AutoencoderKLCogVideoX, "vae")
    sides = {"diffusers": lambda z: vae.decode(z).sample}
    for s in a.packages:
        label, _, pkg = s.partition("=")
        module = torch.jit.load(str(Path(pkg) / "vae_decoder" / "module.pt")).eval()
        sides[label] = lambda z, m=module: m(z)
    latents = vae.config.latent_channels
    z = torch.randn(1, latents, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8,
                    generator=torch.Generator().manual_seed(0)).to(dtype)
    compare({label: (lambda f=f: f(z)) for label, f in sides.items()}, a.reps, f"{a.dtype}, latents {list(z.shape)}",
            a.profile, "decodes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
