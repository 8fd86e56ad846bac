"""What the one-process comparisons against diffusers share (vae_decode_vs_diffusers.py,
denoise_step_vs_diffusers.py): their common flags, and timing the sides interleaved on the same inputs (the order
flips every rep), wall and process-CPU seconds, as a markdown table of ratios to diffusers, with torch.profiler's op
tables on request."""

import statistics
import time
from pathlib import Path

import torch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def add_common_args(p, height, width, reps):
    p.add_argument("--checkpoint", required=True, help="a diffusers checkpoint directory (diffusers_pipeline.py)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    p.add_argument("--frames", type=int, default=9, help="pixel frames, 4k+1")
    p.add_argument("--height", type=int, default=height)
    p.add_argument("--width", type=int, default=width)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--profile", action="store_true")
    p.add_argument("packages", nargs="+", metavar="LABEL=PACKAGE")


def check_args(p, a, multiple, inside):
    """Frames 4k+1 and sizes that are multiples of `multiple`, and every LABEL=PACKAGE argument naming a package
    with the file `inside`; p.error otherwise."""
    if (a.frames - 1) % 4 or a.height % multiple or a.width % multiple:
        p.error(f"--frames {a.frames} --height {a.height} --width {a.width}: accepted frames 4k+1 and sizes that are "
                f"multiples of {multiple}")
    for s in a.packages:
        label, _, pkg = s.partition("=")
        if not label or not (Path(pkg) / inside).is_file():
            p.error(f"{s}: accepted LABEL=PACKAGE, a package directory with {inside}")


def load(a, cls, subfolder):
    """Threads as asked, TorchScript's graph optimiser off (as Reel's runtime on the CPU), and diffusers' module
    `cls` from the checkpoint's `subfolder` in the asked dtype."""
    torch.set_num_threads(a.threads)
    torch._C._set_graph_executor_optimize(False)
    return cls.from_pretrained(Path(a.checkpoint) / subfolder, torch_dtype=DTYPES[a.dtype]).eval()


def compare(sides, reps, what, profile, unit):
    """`sides`: label -> a call with no arguments returning a tensor, "diffusers" first."""
    wall = {k: [] for k in sides}
    cpu = {k: [] for k in sides}
    with torch.no_grad():
        ref = sides["diffusers"]().float()
        for label, fn in sides.items():
            diff = (fn().float() - ref).abs().max().item()
            fn()  # warm
            print(f"{label}: max abs difference from diffusers {diff:.3g} (largest |value| {ref.abs().max().item():.3g})")
        names = list(sides)
        for r in range(reps):
            for label in names if r % 2 == 0 else names[::-1]:
                c0, t0 = time.process_time(), time.perf_counter()
                sides[label]()
                wall[label].append(time.perf_counter() - t0)
                cpu[label].append(time.process_time() - c0)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"\n{what}, {torch.get_num_threads()} threads, {reps} reps, load average {load} at the end")
        print("| side | wall median (ms) | ratio | wall best (ms) | ratio | CPU median (ms) | ratio |")
        print("|---|---|---|---|---|---|---|")
        dw, db, dc = (statistics.median(wall["diffusers"]), min(wall["diffusers"]), statistics.median(cpu["diffusers"]))
        for label in names:
            w, b, c = statistics.median(wall[label]), min(wall[label]), statistics.median(cpu[label])
            print(f"| {label} | {w * 1e3:.1f} | {w / dw:.2f} | {b * 1e3:.1f} | {b / db:.2f} | {c * 1e3:.1f} | {c / dc:.2f} |")
        if profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            for label in names:
                with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    for _ in range(3):
                        sides[label]()
                print(f"\n{label}, 3 {unit}:")
                print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))
