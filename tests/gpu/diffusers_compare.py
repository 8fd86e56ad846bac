#!/usr/bin/env python3
"""diffusers' CogVideoXTransformer3DModel against Reel's denoiser, same weights, same inputs, same device.

Builds the transformer from CogVideoX-5B's config (or a tiny one for CPU machines) with seeded random weights,
times one classifier-free-guidance step of it (batch 2) with its default attention processor, exports the same
module with tools/export into a Reel stage package, runs Reel's denoiser on the same inputs through
`reel_gpu_bench --denoise-inputs`, and compares: step time (Reel / diffusers, target <= 1.0x), peak device memory
(weights included on both sides) and the velocity both produce (max |diff|, relative L2 error, cosine similarity
against a tolerance for the dtype).

  tests/gpu/diffusers_compare.py --bench build-gpu/bench/reel_gpu_bench --device cuda --dtype bf16 --work DIR
  tests/gpu/diffusers_compare.py --bench build/bench/reel_gpu_bench --size tiny --device cpu --dtype f32 --work DIR

Exit status: 0 the outputs agree within the tolerance; 1 they do not, or a step failed; 2 bad arguments;
77 skipped (diffusers or another Python package is missing; the reason is printed).
"""

import argparse
import gc
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
SKIP = 77

# CogVideoX-5B's transformer/config.json (THUDM/CogVideoX-5b; ../shared/COGVIDEOX.md section 3).
CONFIG_5B = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42, dropout=0.0, attention_bias=True,
    sample_width=90, sample_height=60, sample_frames=49, patch_size=2, patch_size_t=None,
    temporal_compression_ratio=4, max_text_seq_length=226, activation_fn="gelu-approximate",
    timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
# The same architecture at the size of Reel's `tiny` preset (models/presets.cc): seconds on one CPU core.
CONFIG_TINY = dict(CONFIG_5B, num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=64,
                   text_embed_dim=64, sample_frames=9, sample_height=8, sample_width=8, max_text_seq_length=32)
SIZES = {"5b": CONFIG_5B, "tiny": CONFIG_TINY}
VAE_SPATIAL = 8  # 2 ** (len(block_out_channels) - 1) for CogVideoX's VAE

# Agreement required of Reel's velocity against diffusers': (relative L2 error at most, cosine at least,
# max |diff| / max |reference| at most). f32 runs the same math in another order; bf16 rounds every op's output to
# 8 significant bits (2^-8 = 0.4%), and those roundings fall differently where Reel and diffusers fuse differently.
# Measured on a CPU (5B width, 2 and 8 layers): diffusers in bf16 against itself in f32 is 0.6-0.8% relative L2,
# cosine 0.99997, max |diff| 0.8% of max |output|; the bf16 bounds leave 2-3x room for 42 layers and GPU kernels.
TOLERANCE = {"f32": (1e-4, 1 - 1e-8, 1e-4), "bf16": (2e-2, 0.9998, 5e-2)}


def log(msg):
    print(f"[compare] {msg}", flush=True)


def skip(msg):
    print(f"[compare] SKIP: {msg}", flush=True)
    sys.exit(SKIP)


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", required=True, type=Path, help="reel_gpu_bench (with --denoise-inputs)")
    p.add_argument("--work", required=True, type=Path, help="directory for the package, inputs and outputs (replaced)")
    p.add_argument("--size", default="5b", choices=sorted(SIZES), help="transformer config (default 5b)")
    p.add_argument("--layers", type=int, help="transformer blocks (default: the config's; 42 at 5b)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(TOLERANCE))
    p.add_argument("--frames", type=int, help="pixel frames (default: the config's sample size, 49 at 5b)")
    p.add_argument("--height", type=int, help="pixels (default 480 at 5b)")
    p.add_argument("--width", type=int, help="pixels (default 720 at 5b)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards on each side before the timed ones")
    p.add_argument("--steps", type=int, default=3, help="timed forwards on each side (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timestep", type=int, default=500, help="the diffusion timestep of both CFG halves")
    p.add_argument("--threads", type=int, default=0, help="CPU threads on both sides (default: torch's)")
    p.add_argument("--timeout", type=float, default=600, help="seconds Reel's run may take")
    p.add_argument("--keep-package", action="store_true", help="leave the exported package in WORK/package")
    p.add_argument("--json", type=Path, help="results as JSON")
    p.add_argument("--markdown", type=Path, help="results as a markdown table")
    a = p.parse_args(argv)
    if a.warmup < 0 or a.steps < 1:
        p.error("--warmup must be >= 0 and --steps >= 1")
    return a


def main(argv=None):
    a = parse_args(argv)
    t_start = time.monotonic()
    try:
        import torch
    except ImportError as e:
        skip(f"torch is not importable by {sys.executable} ({e})")
    try:
        import diffusers
        from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
        from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline
    except ImportError as e:
        skip(f"diffusers is not importable by {sys.executable} ({e}); tests/gpu/prepare.sh carries its wheel")
    diffusers.utils.logging.set_verbosity_error()  # its note on casting a model with .to() is not ours
    try:
        import transformers
        import sentencepiece as spm
    except ImportError as e:
        skip(f"transformers or sentencepiece is not importable by {sys.executable} ({e})")
    sys.path.insert(0, str(REPO / "tools" / "export"))
    from exporter import ExportError, ExportOptions, export_package

    if not a.bench.is_file():
        print(f"[compare] FAIL: --bench {a.bench} does not exist", flush=True)
        return 1
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        skip("--device cuda but torch sees no CUDA device")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    cfg = dict(SIZES[a.size])
    if a.layers is not None:
        cfg["num_layers"] = a.layers
    frames = a.frames or cfg["sample_frames"]
    height = a.height or cfg["sample_height"] * VAE_SPATIAL
    width = a.width or cfg["sample_width"] * VAE_SPATIAL
    tc = cfg["temporal_compression_ratio"]
    f, h, w = (frames - 1) // tc + 1, height // VAE_SPATIAL, width // VAE_SPATIAL
    T, Dt, C = cfg["max_text_seq_length"], cfg["text_embed_dim"], cfg["in_channels"]
    batch = 2  # one classifier-free-guidance step: [negative, positive]
    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    results = {"size": a.size, "layers": cfg["num_layers"], "config": cfg, "dtype": a.dtype,
               "shape": {"batch": batch, "frames": frames, "height": height, "width": width, "latent_frames": f,
                         "latent_height": h, "latent_width": w, "text_tokens": T},
               "timestep": a.timestep, "seed": a.seed, "warmup": a.warmup, "steps": a.steps,
               "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                            "transformers": transformers.__version__, "python": sys.version.split()[0]},
               "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if cuda else "")}
    log(f"{a.size} config, {cfg['num_layers']} layers, {frames}x{height}x{width} ({f}x{h}x{w} latents, "
        f"{f * (h // 2) * (w // 2)} video + {T} text tokens), {a.dtype}, batch {batch}, on {results['device']}")

    # --- diffusers: the model, its inputs, one CFG step timed --------------------------------------------------
    t0 = time.monotonic()
    torch.manual_seed(a.seed)
    with torch.device(device):
        model = CogVideoXTransformer3DModel(**cfg)
    with torch.no_grad():
        # LayerNorms start at weight 1, bias 0: perturbed, so that a norm weight taken from the wrong place shows.
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.weight is not None:
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    model = model.to(dtype).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    processor = type(model.transformer_blocks[0].attn1.processor).__name__
    results["diffusers"] = {"params": params, "attention_processor": processor,
                            "build_seconds": time.monotonic() - t0}
    log(f"diffusers {diffusers.__version__} model: {params:,} params, attention {processor}, built in "
        f"{time.monotonic() - t0:.1f} s")

    g = torch.Generator().manual_seed(a.seed + 1)
    # Latents as the pipeline hands them over (its dtype), kept f32 for Reel's f32 latents input: the same values.
    latents = torch.randn(batch, f, C, h, w, generator=g).to(dtype).float()
    text = torch.randn(batch, T, Dt, generator=g).to(dtype)
    timestep = torch.full((batch,), a.timestep, dtype=torch.int64)
    inputs_file = a.work / "inputs.pt"
    torch.save({"latents": latents, "text": text, "timestep": timestep}, inputs_file)

    # RoPE tables exactly as CogVideoXPipeline makes them (once per video, outside the step).
    pipe = SimpleNamespace(vae_scale_factor_spatial=VAE_SPATIAL, transformer=model)
    rope = None
    if cfg["use_rotary_positional_embeddings"]:
        rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, height, width, f, device)
    x_dev, text_dev, t_dev = latents.to(device, dtype), text.to(device), timestep.to(device)

    def forward():
        return model(hidden_states=x_dev, encoder_hidden_states=text_dev, timestep=t_dev, image_rotary_emb=rope,
                     return_dict=False)[0]

    times = []
    with torch.inference_mode():
        for _ in range(a.warmup):
            out = forward()
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(a.steps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = forward()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                s = time.perf_counter()
                out = forward()
                times.append(time.perf_counter() - s)
    reference = out.float().cpu()
    results["diffusers"].update({"call_seconds": times, "median_seconds": statistics.median(times),
                                 "peak_device_bytes": torch.cuda.max_memory_allocated(device) if cuda else None})
    log(f"diffusers: {statistics.median(times):.3f} s per CFG step (median of {a.steps}), peak "
        f"{fmt_bytes(results['diffusers']['peak_device_bytes'])}")
    del out, x_dev, text_dev, t_dev, rope, pipe, forward

    # --- export: the same weights into a Reel stage package ----------------------------------------------------
    t0 = time.monotonic()
    model = model.to("cpu")  # the exported TorchScript must hold host tensors
    if cuda:
        torch.cuda.empty_cache()
    # The package format needs a text encoder, a VAE decoder and a tokenizer beside the denoiser; only the denoiser
    # runs here, so they are the smallest that fit it: 1-layer T5 of the transformer's text width, 32-channel VAE.
    torch.manual_seed(a.seed + 2)
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=320, d_model=Dt, d_kv=8, num_heads=2, d_ff=32, num_layers=1, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKLCogVideoX(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=C,
                                 temporal_compression_ratio=tc).eval()
    sp_model = io.BytesIO()
    words = "a red fox runs through the snowy forest at dawn while birds sing above tall green trees".split()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words[i:] + words[:i]) for i in range(len(words))), model_writer=sp_model,
        vocab_size=48, hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
    tokenizer = a.work / "spiece.model"
    tokenizer.write_bytes(sp_model.getvalue())
    package = a.work / "package"
    name = f"diffusers-cogvideox-{a.size}" + (f"-{cfg['num_layers']}l" if cfg["num_layers"] != SIZES[a.size]["num_layers"] else "")
    try:
        manifest = export_package(t5, model, vae, tokenizer, ExportOptions(out=package, name=name, dtype=a.dtype))
    except ExportError as e:
        print(f"[compare] FAIL: export: {e}", flush=True)
        return 1
    denoiser_bytes = manifest["stages"]["denoiser"]["bytes"]
    results["export"] = {"seconds": time.monotonic() - t0, "package": str(package), "name": name,
                         "denoiser_bytes": denoiser_bytes}
    log(f"exported {package} ({fmt_bytes(denoiser_bytes)} of denoiser weights) in {time.monotonic() - t0:.1f} s")
    del model, t5, vae
    gc.collect()

    # --- Reel: the same inputs through reel_gpu_bench --------------------------------------------------------------
    reel_out, reel_json = a.work / "reel_velocity.pt", a.work / "reel.json"
    cmd = [str(a.bench), "--model", str(package), "--device", "cuda:%d" % (device.index or 0) if cuda else "cpu",
           "--denoise-inputs", str(inputs_file), "--denoise-output", str(reel_out), "--warmup", str(a.warmup),
           "--steps", str(a.steps), "--strategies", "none", "--json", str(reel_json)]
    if a.threads > 0:
        cmd += ["--threads", str(a.threads)]
    log("reel: " + " ".join(cmd))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"[compare] FAIL: reel_gpu_bench ran past {a.timeout:.0f} s", flush=True)
        return 1
    sys.stdout.write(r.stderr[-3000:])
    results["reel_exit_status"] = r.returncode
    if not reel_json.is_file() or not reel_out.is_file():
        print(f"[compare] FAIL: reel_gpu_bench exited {r.returncode} without its results", flush=True)
        write_results(a, results)
        return 1
    if r.returncode != 0:
        # Its results are written before it exits: a crash at exit (docs/GPU.md) is reported, not fatal here.
        log(f"WARNING: reel_gpu_bench wrote its results, then exited with status {r.returncode}")
    results["reel"] = json.loads(reel_json.read_text())
    results["reel"]["process_seconds"] = time.monotonic() - t0
    got = torch.load(reel_out, weights_only=True).float()

    # --- agreement -------------------------------------------------------------------------------------------
    if tuple(got.shape) != tuple(reference.shape):
        print(f"[compare] FAIL: Reel's velocity has shape {list(got.shape)}, diffusers' {list(reference.shape)}",
              flush=True)
        write_results(a, results)
        return 1
    diff = (got.double() - reference.double())
    ref = reference.double()
    max_abs = diff.abs().max().item()
    ref_max = ref.abs().max().item()
    rel_l2 = (diff.norm() / ref.norm().clamp_min(1e-30)).item()
    cosine = (got.double().flatten() @ ref.flatten() / (got.double().norm() * ref.norm()).clamp_min(1e-30)).item()
    finite = bool(torch.isfinite(got).all())
    tol_l2, tol_cos, tol_max = TOLERANCE[a.dtype]
    agree = finite and rel_l2 <= tol_l2 and cosine >= tol_cos and max_abs <= tol_max * max(ref_max, 1e-30)
    results["agreement"] = {"shape": list(got.shape), "max_abs_diff": max_abs, "max_abs_reference": ref_max,
                            "max_abs_diff_over_max_reference": max_abs / max(ref_max, 1e-30),
                            "relative_l2": rel_l2, "cosine": cosine, "finite": finite,
                            "tolerance": {"relative_l2": tol_l2, "cosine": tol_cos,
                                          "max_abs_diff_over_max_reference": tol_max},
                            "agree": agree}
    d, rl = results["diffusers"], results["reel"]
    results["ratio"] = rl["median_seconds"] / d["median_seconds"]
    results["full_5b"] = (a.size == "5b" and cfg["num_layers"] == CONFIG_5B["num_layers"] and a.dtype == "bf16"
                          and (frames, height, width) == (49, 480, 720))
    results["seconds"] = time.monotonic() - t_start
    log(f"Reel: {rl['median_seconds']:.3f} s per CFG step ({results['ratio']:.2f}x diffusers), peak "
        f"{fmt_bytes(rl.get('peak_device_bytes'))}; max |diff| {max_abs:.3g} (max |ref| {ref_max:.3g}), "
        f"relative L2 {rel_l2:.3g}, cosine {cosine:.8f}: {'agree' if agree else 'DISAGREE'}")
    if not a.keep_package:
        shutil.rmtree(package, ignore_errors=True)
    write_results(a, results)
    return 0 if agree else 1


def write_results(a, results):
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    if a.markdown:
        a.markdown.write_text(markdown(results))


def markdown(r):
    s = r["shape"]
    cfg = r["config"]
    layers = r["layers"]
    depth = f"{layers} layers" + ("" if layers == SIZES[r["size"]]["num_layers"] else
                                  f" (reduced from {SIZES[r['size']]['num_layers']}: the width and shapes are the "
                                  "config's, the depth is not)")
    head = (f"### diffusers vs Reel: CogVideoX {r['size'].upper()} transformer ({cfg['num_attention_heads']} heads × "
            f"{cfg['attention_head_dim']}, {depth}), {s['frames']}×{s['height']}×{s['width']}, {r['dtype']}, "
            f"CFG batch {s['batch']}, on {r['device']}\n")
    if "reel" not in r:
        return head + f"Reel's run failed (exit status {r.get('reel_exit_status')}): see check.log.\n"
    d, rl, ag = r["diffusers"], r["reel"], r["agreement"]
    timed = f"median of {r['steps']} after {r['warmup']} warm-up" if r["steps"] > 1 else f"1 after {r['warmup']} warm-up"
    peak_ratio = (f"{100 * rl['peak_device_bytes'] / d['peak_device_bytes']:.0f}%"
                  if d.get("peak_device_bytes") and rl.get("peak_device_bytes") else "–")
    weights = fmt_bytes(r["export"]["denoiser_bytes"])
    tol = ag["tolerance"]
    lines = [
        head,
        f"| | diffusers {r['versions']['diffusers']} `CogVideoXTransformer3DModel` ({d['attention_processor']}) "
        f"| Reel denoiser (exported package, `none`) | Reel / diffusers |",
        "|---|---|---|---|",
        f"| step time ({timed}) | {d['median_seconds']:.3f} s | {rl['median_seconds']:.3f} s | "
        f"**{r['ratio']:.2f}×** (target ≤ 1.0×: {'met' if r['ratio'] <= 1.0 else 'not met'}) |",
        f"| peak device memory (weights {weights} included) | {fmt_bytes(d.get('peak_device_bytes'))} | "
        f"{fmt_bytes(rl.get('peak_device_bytes'))} | {peak_ratio} |",
        "",
        f"Velocity {ag['shape']}: max |Reel − diffusers| {ag['max_abs_diff']:.3g} (max |diffusers| "
        f"{ag['max_abs_reference']:.3g}), relative L2 error {ag['relative_l2']:.3g}, cosine similarity "
        f"{ag['cosine']:.8f}. Tolerance for {r['dtype']}: relative L2 ≤ {tol['relative_l2']:g}, cosine ≥ "
        f"{tol['cosine']:.8g}, max |diff| ≤ {tol['max_abs_diff_over_max_reference']:g} × max |diffusers|: "
        f"**{'agree' if ag['agree'] else 'DISAGREE'}**.",
        "",
        f"Model built in {d['build_seconds']:.1f} s, exported in {r['export']['seconds']:.1f} s; Reel placed its weights in "
        f"{rl['place_seconds']:.1f} s; reel_gpu_bench exit status {r['reel_exit_status']}; whole comparison "
        f"{r.get('seconds', 0):.0f} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
