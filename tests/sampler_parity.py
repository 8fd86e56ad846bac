#!/usr/bin/env python3
"""The diffusers side of tests/sampler_parity_test.cc: diffusers' own CogVideoX schedulers and pipeline code, run
here and written out for the C++ test to compare with Reel bit for bit.

  sampler_parity.py steps OUT      scheduler steps (CogVideoXDDIMScheduler, CogVideoXDPMScheduler) from a seeded
                                   generator, as CogVideoXPipeline's loop calls them; raw tensors under OUT
  sampler_parity.py latents OUT    CogVideoXPipeline.prepare_latents for several seeds and dtypes; raw tensors
  sampler_parity.py guidance       the guidance scale of every step of CogVideoXPipeline.__call__ with
                                   use_dynamic_cfg, read in its step callback, for several step counts and scales
  sampler_parity.py compare FRAMES_DIR FRAMES.npy    Reel's PNG frames against diffusers': max, mean, PSNR

Tensors are written as raw bytes (bf16/f16 as their 16-bit patterns), one file each, and listed on stdout as
`name dtype d0,d1,...` so that the test reads them without a pickle reader.
"""

import sys
from pathlib import Path

import torch

SHAPE = (1, 3, 4, 6, 5)  # [B, F, C, H, W], the pipeline's latent layout
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
# (name, scheduler class, config, dtype, steps): CogVideoX's settings (2B's SNR shift 3.0, 5B's 1.0), and the other
# settings a checkpoint may carry (epsilon, linspace spacing, linear betas, set_alpha_to_one false).
COGVIDEOX = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                 timestep_spacing="trailing", rescale_betas_zero_snr=True)
CASES = [
    ("ddim_5b_f32", "ddim", dict(COGVIDEOX, snr_shift_scale=1.0), "f32", 6),
    ("ddim_2b_bf16", "ddim", dict(COGVIDEOX, snr_shift_scale=3.0), "bf16", 5),
    ("ddim_eps_linear", "ddim", dict(COGVIDEOX, prediction_type="epsilon", beta_schedule="linear",
                                     timestep_spacing="linspace", rescale_betas_zero_snr=False,
                                     set_alpha_to_one=False, snr_shift_scale=1.0), "f32", 4),
    ("dpm_5b_f32", "dpm", dict(COGVIDEOX, snr_shift_scale=1.0), "f32", 6),
    ("dpm_2b_bf16", "dpm", dict(COGVIDEOX, snr_shift_scale=3.0), "bf16", 7),
    ("dpm_5b_f16", "dpm", dict(COGVIDEOX, snr_shift_scale=1.0), "f16", 3),
    ("dpm_eps_linspace", "dpm", dict(COGVIDEOX, prediction_type="epsilon", timestep_spacing="linspace",
                                     set_alpha_to_one=False, snr_shift_scale=2.0), "f32", 5),
    ("dpm_one_step", "dpm", dict(COGVIDEOX, snr_shift_scale=1.0), "f32", 1),
]


def put(out: Path, name: str, t: torch.Tensor) -> None:
    t = t.contiguous()
    raw = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    (out / f"{name}.bin").write_bytes(raw.numpy().tobytes())
    dt = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}[t.dtype]
    print(name, dt, ",".join(str(d) for d in t.shape) or "-")


def steps(out: Path) -> None:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
    for name, kind, config, dtype, n in CASES:
        scheduler = (CogVideoXDPMScheduler if kind == "dpm" else CogVideoXDDIMScheduler)(**config)
        scheduler.set_timesteps(n)
        put(out, f"{name}.alphas", scheduler.alphas_cumprod)
        # The pipeline's generator draws the latents, then the DPM step noise; the model outputs come from another.
        generator = torch.Generator("cpu").manual_seed(7)
        outputs = torch.Generator("cpu").manual_seed(1000)
        latents = torch.randn(SHAPE, generator=generator, dtype=DTYPES[dtype])
        put(out, f"{name}.latents0", latents)
        old = None
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            # float32, as CogVideoXPipeline hands the scheduler noise_pred.float(), in a wide range
            model_output = torch.randn(SHAPE, generator=outputs) * 1.5
            put(out, f"{name}.output{i}", model_output)
            if kind == "dpm":
                latents, old = scheduler.step(model_output, old, t, timesteps[i - 1] if i > 0 else None, latents,
                                              generator=generator, return_dict=False)
            else:
                latents = scheduler.step(model_output, t, latents, return_dict=False)[0]
            latents = latents.to(DTYPES[dtype])  # the pipeline's cast to prompt_embeds.dtype
            put(out, f"{name}.latents{i + 1}", latents)


def latents(out: Path) -> None:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline
    # prepare_latents reads only the VAE's compression factors (8 and 4 without a VAE) and the scheduler.
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=None,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX))
    for seed in (0, 42, 2**40 + 3):
        for dt, dtype in DTYPES.items():
            g = torch.Generator("cpu").manual_seed(seed)
            x = pipe.prepare_latents(1, 16, 9, 64, 96, dtype, torch.device("cpu"), g)
            put(out, f"prepare_latents.{seed}.{dt}", x)


def guidance() -> None:
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(num_attention_heads=1, attention_head_dim=16, in_channels=4,
                                              out_channels=4, num_layers=1, time_embed_dim=8, text_embed_dim=8,
                                              max_text_seq_length=2, sample_frames=1, sample_height=2,
                                              sample_width=2).eval()
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX))
    pipe.set_progress_bar_config(disable=True)
    text = torch.randn(1, 2, 8)
    for n in (1, 4, 13, 50):
        for g in (1.5, 6.0, 7.5):
            seen = []

            def record(p, i, t, kwargs):
                seen.append((int(t), p.guidance_scale))
                return kwargs

            pipe(prompt_embeds=text, negative_prompt_embeds=text, num_frames=1, height=16, width=16,
                 num_inference_steps=n, guidance_scale=g, use_dynamic_cfg=True, output_type="latent",
                 callback_on_step_end=record)
            for t, scale in seen:
                print(n, repr(g), t, repr(scale))


def compare(frames_dir: str, npy: str) -> None:
    import numpy as np
    from PIL import Image
    pngs = sorted(Path(frames_dir).glob("frame_*.png"))
    reel = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs]).astype(np.float64)
    ref = np.load(npy).astype(np.float64)
    if reel.shape != ref.shape:
        print("shapes", reel.shape, ref.shape)
        return
    d = np.abs(reel - ref)
    mse = float((d ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    print(f"max {int(d.max())} mean {d.mean():.6f} psnr {psnr:.2f} std {reel.std():.2f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    cmd = sys.argv[1]
    if cmd == "steps":
        steps(Path(sys.argv[2]))
    elif cmd == "latents":
        latents(Path(sys.argv[2]))
    elif cmd == "guidance":
        guidance()
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
