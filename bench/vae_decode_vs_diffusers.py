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
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a diffusers checkpoint directory with vae/")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--frames", type=int, default=9, help="pixel frames, 4k+1")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--profile", action="store_true")
    p.add_argument("packages", nargs="+", metavar="LABEL=PACKAGE")
    a = p.parse_args(argv)
    if (a.frames - 1) % 4 or a.height % 8 or a.width % 8:
        p.error(f"--frames {a.frames} --height {a.height} --width {a.width}: accepted frames 4k+1 and sizes that are "
                "multiples of 8")
    for s in a.packages:
        label, _, pkg = s.partition("=")
        if not label or not (Path(pkg) / "vae_decoder" / "module.pt").is_file():
            p.error(f"{s}: accepted LABEL=PACKAGE, a package directory with vae_decoder/module.pt")
    return a


def main(argv):
    a = parse_args(argv)
    from diffusers import AutoencoderKLCogVideoX

    torch.set_num_threads(a.threads)
    torch._C._set_graph_executor_optimize(False)  # as Reel's runtime on the CPU
    dtype = DTYPES[a.dtype]
    vae = AutoencoderKLCogVideoX.from_pretrained(Path(a.checkpoint) / "vae", torch_dtype=dtype).eval()
    sides = {"diffusers": lambda z: vae.decode(z).sample}
    for s in a.packages:
        label, _, pkg = s.partition("=")
        module = torch.jit.load(str(Path(pkg) / "vae_decoder" / "module.pt")).eval()
        sides[label] = lambda z, m=module: m(z)
    latents = vae.config.latent_channels
    z = torch.randn(1, latents, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8,
                    generator=torch.Generator().manual_seed(0)).to(dtype)
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    with torch.no_grad():
        ref = sides["diffusers"](z).float()
        for label, f in sides.items():
            diff = (f(z).float() - ref).abs().max().item()
            f(z)  # warm
            print(f"{label}: max abs difference from diffusers {diff:.3g} (largest |value| {ref.abs().max().item():.3g})")
        names = list(sides)
        for r in range(a.reps):
            for label in names if r % 2 == 0 else names[::-1]:
                c0, t0 = time.process_time(), time.perf_counter()
                sides[label](z)
                wall[label].append(time.perf_counter() - t0)
                cpu[label].append(time.process_time() - c0)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"\n{a.dtype}, latents {list(z.shape)}, {a.threads} threads, {a.reps} reps, load average {load} at the end")
        print("| side | wall median (ms) | ratio | wall best (ms) | ratio | CPU median (ms) | ratio |")
        print("|---|---|---|---|---|---|---|")
        dw, db, dc = (statistics.median(wall["diffusers"]), min(wall["diffusers"]), statistics.median(cpu["diffusers"]))
        for label in names:
            w, b, c = statistics.median(wall[label]), min(wall[label]), statistics.median(cpu[label])
            print(f"| {label} | {w * 1e3:.1f} | {w / dw:.2f} | {b * 1e3:.1f} | {b / db:.2f} | {c * 1e3:.1f} | {c / dc:.2f} |")
        if a.profile:
            from torch.profiler import ProfilerActivity, profile
            for label in names:
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    for _ in range(3):
                        sides[label](z)
                print(f"\n{label}, 3 decodes:")
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
