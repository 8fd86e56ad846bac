#!/usr/bin/env python3
"""The diffusers side of bench/reel_vs_diffusers.sh: diffusers' own CogVideoXPipeline, timed per stage.

Usage (with the project venv, .venv/bin/python):
  diffusers_pipeline.py checkpoint --case tiny|2b|5b --out DIR [--seed N] [--scheduler ddim|dpm]
      Builds CogVideoXPipeline from configs with seeded random weights (T5EncoderModel from a T5Config, a T5
      tokenizer from a SentencePiece model trained here on /usr/share/common-licenses, CogVideoXTransformer3DModel,
      AutoencoderKLCogVideoX, CogVideoXDDIMScheduler or CogVideoXDPMScheduler) and save_pretrained()s it in the Hub's layout, plus
      tokenizer/spiece.model, which tools/export/reel_export.py reads.
  diffusers_pipeline.py run --checkpoint DIR --dtype f32|bf16 --frames F --height H --width W --steps S
                            --guidance G [--dynamic-cfg] --seed N --threads T --prompt P --json OUT.json
                            [--frames-out FRAMES.npy]
      Loads the checkpoint with CogVideoXPipeline.from_pretrained and runs pipe(...) once, timing its stages from
      inside: encode_prompt (text), everything from its end to the start of decode_latents (the denoising loop:
      timesteps, latents, RoPE tables, the transformer on the CFG batch, guidance, DDIM), decode_latents (VAE decode).
  diffusers_pipeline.py table --work DIR
      Reads the JSON files bench/reel_vs_diffusers.sh collected under DIR and prints the markdown tables.

Cases: `tiny` has the widths of Reel's tiny preset (T5 2x64, transformer 2 blocks x 64 with RoPE, VAE 16/32/32/64,
32 text tokens); `2b` and `5b` have CogVideoX-2B / -5B's real widths (T5-XXL 4096 wide, transformer 1920 / 3072
wide, VAE 128/256/256/512) with 2 T5 layers and 2 transformer blocks, and 226 text tokens.
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240)
REAL_VAE = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, norm_num_groups=32)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                 timestep_spacing="trailing", rescale_betas_zero_snr=True)

CASES = {
    # Reel's `tiny` preset (models/presets.cc) as diffusers configs.
    "tiny": dict(
        t5=dict(vocab_size=1100, d_model=64, d_kv=16, num_heads=4, d_ff=160, num_layers=2),
        transformer=dict(num_attention_heads=2, attention_head_dim=32, num_layers=2, time_embed_dim=64,
                         text_embed_dim=64, max_text_seq_length=32, sample_frames=9, sample_height=8,
                         sample_width=8, use_rotary_positional_embeddings=True),
        vae=dict(block_out_channels=(16, 32, 32, 64), layers_per_block=1, norm_num_groups=8, scaling_factor=0.7),
        snr_shift_scale=1.0),
    # CogVideoX-2B's widths: 30 heads x 64, 3D sin-cos positions.
    "2b": dict(
        t5=dict(T5_XXL, num_layers=2),
        transformer=dict(num_attention_heads=30, attention_head_dim=64, num_layers=2, time_embed_dim=512,
                         text_embed_dim=4096, max_text_seq_length=226, sample_frames=49, sample_height=60,
                         sample_width=90, use_rotary_positional_embeddings=False),
        vae=dict(REAL_VAE, scaling_factor=1.15258426),
        snr_shift_scale=3.0),
    # CogVideoX-5B's widths: 48 heads x 64, 3D RoPE.
    "5b": dict(
        t5=dict(T5_XXL, num_layers=2),
        transformer=dict(num_attention_heads=48, attention_head_dim=64, num_layers=2, time_embed_dim=512,
                         text_embed_dim=4096, max_text_seq_length=226, sample_frames=49, sample_height=60,
                         sample_width=90, use_rotary_positional_embeddings=True),
        vae=dict(REAL_VAE, scaling_factor=0.7),
        snr_shift_scale=1.0),
}

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def train_tokenizer(directory: Path, vocab_size: int = 1000) -> Path:
    """A small T5-style SentencePiece model (pad 0, EOS 1, unk 2, no BOS), trained on text every Debian has."""
    import sentencepiece as spm
    corpus = directory / "corpus.txt"
    with open(corpus, "w") as out:
        for path in sorted(glob.glob("/usr/share/common-licenses/*")):
            if os.path.isfile(path):
                out.write(open(path, errors="replace").read())
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(directory / "spiece"), vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    return directory / "spiece.model"


def make_checkpoint(case: str, out: Path, seed: int, scheduler_kind: str = "ddim") -> None:
    import sentencepiece as spm
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    c = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        spiece = train_tokenizer(Path(tmp))
        sp = spm.SentencePieceProcessor(model_file=str(spiece))
        # transformers 5 builds T5Tokenizer from the pieces (reading spiece.model itself needs protobuf).
        tokenizer = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())],
                                extra_ids=100)
        assert len(tokenizer) <= c["t5"]["vocab_size"], (len(tokenizer), c["t5"]["vocab_size"])
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(T5Config(**c["t5"], feed_forward_proj="gated-gelu", dense_act_fn="gelu_new",
                                               is_gated_act=True, relative_attention_num_buckets=32,
                                               relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                                               tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                                               decoder_start_token_id=0)).eval()
        torch.manual_seed(seed + 1)
        transformer = CogVideoXTransformer3DModel(**c["transformer"]).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLCogVideoX(**c["vae"]).eval()
        scheduler_class = CogVideoXDPMScheduler if scheduler_kind == "dpm" else CogVideoXDDIMScheduler
        scheduler = scheduler_class(**SCHEDULER, snr_shift_scale=c["snr_shift_scale"])
        pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                                 scheduler=scheduler)
        pipe.save_pretrained(str(out))
        # Hub checkpoints ship the SentencePiece model; transformers 5 saves tokenizer.json only.
        shutil.copyfile(spiece, out / "tokenizer" / "spiece.model")
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("text_encoder", text_encoder), ("transformer", transformer), ("vae", vae))}
    print(json.dumps({"case": case, "checkpoint": str(out), "params": params}))


class StageClock:
    """Wraps a bound method on an instance so that each call's start and end are recorded."""

    def __init__(self):
        self.calls = {}

    def wrap(self, obj, name: str, key: str) -> None:
        fn = getattr(obj, name)
        calls = self.calls.setdefault(key, [])

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            calls.append((t0, time.perf_counter()))
            return result

        setattr(obj, name, timed)


def run(a) -> None:
    from diffusers import CogVideoXPipeline

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pipe = CogVideoXPipeline.from_pretrained(a.checkpoint, torch_dtype=DTYPES[a.dtype])
    load = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    max_len = pipe.transformer.config.max_text_seq_length

    clock = StageClock()
    clock.wrap(pipe, "encode_prompt", "text")
    clock.wrap(pipe, "decode_latents", "decode")
    clock.wrap(pipe.transformer, "forward", "transformer")
    step_ends = []

    def on_step_end(pipeline, i, t, kwargs):
        step_ends.append(time.perf_counter())
        return kwargs

    # The pipeline draws its own noise from a CPU generator seeded with --seed, as `reel generate --seed` draws it
    # (prepare_latents' randn_tensor in the pipeline's dtype; a DPM scheduler's step noise from the same generator).
    generator = torch.Generator("cpu").manual_seed(a.seed)
    t0 = time.perf_counter()
    video = pipe(prompt=a.prompt, negative_prompt="", num_frames=a.frames, height=a.height, width=a.width,
                 num_inference_steps=a.steps, guidance_scale=a.guidance, use_dynamic_cfg=a.dynamic_cfg,
                 generator=generator, max_sequence_length=max_len, output_type="pt",
                 callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"]).frames
    call = time.perf_counter() - t0

    (text_start, text_end), = clock.calls["text"]
    (decode_start, decode_end), = clock.calls["decode"]
    starts = [text_end] + step_ends[:-1]
    result = {
        "side": "diffusers", "dtype": a.dtype, "threads": torch.get_num_threads(),
        "text": text_end - text_start,
        "denoise": decode_start - text_end,
        "decode": decode_end - decode_start,
        "steps": a.steps,
        # Step i from the end of step i-1 (the first from the end of encode_prompt, so it holds the set-up).
        "step_seconds": [e - s for s, e in zip(starts, step_ends)],
        "transformer_seconds": [e - s for s, e in clock.calls["transformer"]],
        "pipeline_call": call,
        "load": load,
        "torch": torch.__version__,
    }
    Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if a.frames_out:
        import numpy as np
        # [1, F, 3, H, W] in [0, 1] -> [F, H, W, 3] 8-bit, rounded as Reel rounds (clamp, x255, round).
        frames = (video[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        np.save(a.frames_out, frames)


# ---- the report ----

def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _reel_stages(path: Path):
    rep = json.loads(path.read_text())
    s = {x["stage"]: x for x in rep["stages"]}
    return {"text": s["text_encoder"]["wall_seconds"], "denoise": s["denoiser"]["wall_seconds"],
            "decode": s["vae_decoder"]["wall_seconds"], "step_seconds": s["denoiser"]["step_seconds"]}


def _agreement(run_dir: Path):
    """Largest and mean |difference| in 8-bit levels between Reel's PNG frames and diffusers' frames (rep 1)."""
    import numpy as np
    from PIL import Image
    pngs = sorted((run_dir / "reel-frames").glob("frame_*.png"))
    npy = run_dir / "diffusers-frames.npy"
    if not pngs or not npy.is_file():
        return None
    reel = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]).astype(np.int16)
    ref = np.load(npy).astype(np.int16)
    if reel.shape != ref.shape:
        return f"shapes differ: Reel {reel.shape}, diffusers {ref.shape}"
    d = np.abs(reel - ref)
    return {"max": int(d.max()), "mean": float(d.mean()), "within_2": float((d <= 2).mean()),
            "reel_mean_level": float(reel.mean()), "reel_std_level": float(reel.std())}


def table(a) -> None:
    work = Path(a.work)
    rows, agree, jobs, reps = [], [], {}, set()
    for run_dir in sorted(p for p in work.glob("*/*") if (p / "job.json").is_file()):
        job = json.loads((run_dir / "job.json").read_text())
        reel = [_reel_stages(p) for p in sorted(run_dir.glob("reel-*.json"))]
        diff = [json.loads(p.read_text()) for p in sorted(run_dir.glob("diffusers-*.json"))]
        if not reel or not diff:
            continue
        jobs[job["case"]] = job["job"]
        reps.add(min(len(reel), len(diff)))
        steps = job["steps"]
        label = f"{job['case']} | {job['dtype']} | {job['attention']}"

        def row(stage, r, d):
            rm, dm, rb, db = _median(r), _median(d), min(r), min(d)
            rows.append(f"| {label} | {stage} | {rm:.4g} | {dm:.4g} | **{rm / dm:.2f}** | {rb:.4g} | {db:.4g} | "
                        f"{rb / db:.2f} |")

        row("text", [x["text"] for x in reel], [x["text"] for x in diff])
        row("denoise step (stage / steps)", [x["denoise"] / steps for x in reel], [x["denoise"] / steps for x in diff])
        row("denoise step, median of steps 2..S", [_median(x["step_seconds"][1:]) for x in reel],
            [_median(x["step_seconds"][1:]) for x in diff])
        row("decode", [x["decode"] for x in reel], [x["decode"] for x in diff])
        row("total (text + denoise + decode)", [x["text"] + x["denoise"] + x["decode"] for x in reel],
            [x["text"] + x["denoise"] + x["decode"] for x in diff])
        ag = _agreement(run_dir)
        if isinstance(ag, dict):
            agree.append(f"| {label} | {ag['max']} | {ag['mean']:.4f} | {100 * ag['within_2']:.2f}% | "
                         f"{ag['reel_mean_level']:.1f} ± {ag['reel_std_level']:.1f} |")
        elif ag:
            agree.append(f"| {label} | {ag} | | | |")
    for case, job in jobs.items():
        print(f"- {case}: `{job}`")
    print(f"\nSeconds, {'/'.join(map(str, sorted(reps)))} runs of each side, alternating; ratio = Reel / diffusers "
          "(target ≤ 1.0); median, and best of the runs.\n")
    print("| case | dtype | Reel attention | stage | Reel median | diffusers median | ratio | Reel best | "
          "diffusers best | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if agree:
        print("\nSame weights, seed, initial noise and prompt: Reel's frames against diffusers' (first run, 8-bit "
              "levels):\n")
        print("| case | dtype | Reel attention | max abs diff | mean abs diff | pixels within 2 | Reel frame level "
              "(mean ± sd) |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(agree))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("--case", choices=sorted(CASES), required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--seed", type=int, default=1234)
    c.add_argument("--scheduler", choices=("ddim", "dpm"), default="ddim")
    r = sub.add_parser("run")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    for name in ("frames", "height", "width", "steps", "threads"):
        r.add_argument("--" + name, type=int, required=True)
    r.add_argument("--guidance", type=float, default=6.0)
    r.add_argument("--dynamic-cfg", action="store_true")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--prompt", default="a red fox")
    r.add_argument("--json", required=True)
    r.add_argument("--frames-out", default="")
    t = sub.add_parser("table")
    t.add_argument("--work", required=True)
    a = ap.parse_args()
    if a.cmd == "checkpoint":
        make_checkpoint(a.case, a.out, a.seed, a.scheduler)
    elif a.cmd == "run":
        run(a)
    else:
        table(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
