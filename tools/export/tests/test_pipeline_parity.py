"""Whole pipelines against diffusers' own: a CogVideoXPipeline / CogVideoXImageToVideoPipeline built from tiny 2B-,
5B- and 5B-I2V-structured configs with random weights, saved in the Hub's layout, exported with tools/export, and the
same job (prompt, seed, DDIM with classifier-free guidance) run by `reel generate` and by the pipeline itself; the
frames compared level by level."""

import copy
import math
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline, CogVideoXPipeline
from PIL import Image
from transformers import T5Tokenizer

from export_test_util import (TempDirTest, record_parity, run_export, run_reel, tiny_t5, tiny_transformer, tiny_vae,
                              train_spiece)

PROMPT = "a red fox runs through the snowy forest at dawn"
SEED = 42
JOB = dict(frames=9, height=64, width=64, steps=3, guidance=6.0)
# CogVideoX's DDIM settings (the Hub's scheduler_config.json); snr_shift_scale 3 for 2B, 1 for the RoPE models.
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                 timestep_spacing="trailing", rescale_betas_zero_snr=True)
# Issue 17's tolerances: f32 frames within one 8-bit level (rounding of values equal to 1e-4); bf16 frames at least
# 40 dB PSNR from diffusers' bf16 frames (measured 58.6 dB and 58.8 dB, and level for level equal to diffusers' own
# decoded video: see check_bf16).
F32_LEVELS = 1
BF16_FLOOR_DB = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def to_levels(frames) -> np.ndarray:
    """diffusers' output_type="np" frames ([F, H, W, 3] in [0, 1]) as 8-bit levels, rounded as Reel rounds."""
    return np.round(np.asarray(frames, dtype=np.float64) * 255.0).clip(0, 255).astype(np.uint8)


def levels_in_f32(video: torch.Tensor) -> np.ndarray:
    """A decoded video [1, 3, F, H, W] as 8-bit levels [F, H, W, 3] the way Reel's DecodeVideo makes them: in float32,
    (x * 0.5 + 0.5) clamped, times 255, rounded. diffusers' postprocess computes x * 0.5 + 0.5 in the VAE's dtype, so
    in bf16 its frames carry one more rounding (8 significant bits, about one level in the upper half)."""
    return (video[0].float() * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


class PipelineParityTest(TempDirTest):
    @classmethod
    def setUpClass(cls):
        cls.root = Path(tempfile.mkdtemp(prefix="reel-pipeline-parity-"))
        cls.spiece = train_spiece(cls.root)
        sp = spm.SentencePieceProcessor(model_file=str(cls.spiece))
        # transformers 5 builds T5Tokenizer from the pieces (as the Hub's tokenizer files would give it).
        cls.tokenizer = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())],
                                    extra_ids=100)
        g = torch.Generator().manual_seed(5)
        cls.image = Image.fromarray((torch.rand(JOB["height"], JOB["width"], 3, generator=g) * 255).byte().numpy())
        cls.image_path = cls.root / "image.png"
        cls.image.save(cls.image_path)
        cls.pipes = {}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def pipeline(self, variant):
        """The variant's diffusers pipeline (f32) and its checkpoint directory, built once."""
        if variant not in self.pipes:
            i2v = variant.endswith("i2v")
            cls = CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline
            scheduler = CogVideoXDDIMScheduler(**SCHEDULER, snr_shift_scale=3.0 if variant == "2b" else 1.0)
            pipe = cls(tokenizer=self.tokenizer, text_encoder=tiny_t5(), vae=tiny_vae(),
                       transformer=tiny_transformer(variant), scheduler=scheduler)
            ckpt = self.root / f"ckpt-{variant}"
            pipe.save_pretrained(str(ckpt))
            shutil.copyfile(self.spiece, ckpt / "tokenizer" / "spiece.model")  # what Hub checkpoints ship
            self.pipes[variant] = (pipe, ckpt)
        return self.pipes[variant]

    def reel_frames(self, variant, dtype, extra=()):
        _, ckpt = self.pipeline(variant)
        pkg = self.root / f"pkg-{variant}-{dtype}"
        if not pkg.exists():
            r = run_export(["--checkpoint", ckpt, "--out", pkg, "--dtype", dtype])
            self.assertEqual(r.returncode, 0, r.stderr)
        frames_dir = self.tmp / f"frames-{variant}-{dtype}-{len(extra)}"
        args = ["generate", "--model", str(pkg), "--prompt", PROMPT, "--frames", str(JOB["frames"]), "--height",
                str(JOB["height"]), "--width", str(JOB["width"]), "--steps", str(JOB["steps"]), "--guidance",
                str(JOB["guidance"]), "--seed", str(SEED), "--threads", "1", "--no-profile-db", "--out",
                str(self.tmp / "out.mp4"), "--frames-dir", str(frames_dir)]
        if variant.endswith("i2v"):
            args += ["--image", str(self.image_path)]
        args += list(extra)
        r = run_reel(args, self.root / "cache")
        self.assertEqual(r.returncode, 0, r.stderr)
        files = sorted(frames_dir.glob("*.png"))
        self.assertEqual(len(files), JOB["frames"], [f.name for f in files])
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])

    def diffusers_frames(self, variant, dtype=torch.float32, tiling=None, decoded=False):
        """The pipeline's frames as 8-bit levels; with decoded=True also its decoded video before the postprocess
        (output_type "latent", then the pipeline's own decode_latents and postprocess_video: the same calls)."""
        pipe, _ = self.pipeline(variant)
        if dtype != torch.float32 or tiling:
            pipe = copy.deepcopy(pipe).to(dtype)  # a copy: casting back would leave the f32 weights rounded
        if tiling:
            pipe.vae.enable_tiling(*tiling)
        kwargs = dict(prompt=PROMPT, negative_prompt="", num_frames=JOB["frames"], height=JOB["height"],
                      width=JOB["width"], num_inference_steps=JOB["steps"], guidance_scale=JOB["guidance"],
                      max_sequence_length=pipe.transformer.config.max_text_seq_length,
                      output_type="latent" if decoded else "np", generator=torch.Generator().manual_seed(SEED))
        if variant.endswith("i2v"):
            kwargs["image"] = self.image
        with torch.no_grad():
            out = pipe(**kwargs).frames
            if not decoded:
                return to_levels(out[0])
            video = pipe.decode_latents(out)
            frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        return to_levels(frames), video

    def check_f32(self, variant):
        reel = self.reel_frames(variant, "f32")
        ref = self.diffusers_frames(variant)
        self.assertEqual(reel.shape, ref.shape)
        diff = np.abs(reel.astype(int) - ref.astype(int))
        record_parity("pipeline", f"tiny {variant}, DDIM + CFG, {JOB['steps']} steps", "f32", "diffusers f32",
                      float(diff.max()), float(diff.max()) / 255.0, psnr(reel, ref))
        self.assertLessEqual(diff.max(), F32_LEVELS, f"{variant}: frames {diff.max()} levels apart, mean {diff.mean()}")
        # Not a trivial video: the frames vary.
        self.assertGreater(ref.std(), 10.0)
        return ref

    def check_bf16(self, variant):
        ref = self.diffusers_frames(variant)
        reel = self.reel_frames(variant, "bf16")
        lib, lib_video = self.diffusers_frames(variant, torch.bfloat16, decoded=True)
        model = f"tiny {variant}, DDIM + CFG, {JOB['steps']} steps"
        record_parity("pipeline", model, "bf16", "diffusers bf16", float(np.abs(reel.astype(int) - lib).max()),
                      float(np.abs(reel.astype(int) - lib).max()) / 255.0, psnr(reel, lib))
        record_parity("pipeline", model, "bf16", "f32 reference", float(np.abs(reel.astype(int) - ref).max()),
                      float(np.abs(reel.astype(int) - ref).max()) / 255.0, psnr(reel, ref))
        record_parity("pipeline", f"{model} (diffusers itself)", "bf16", "f32 reference",
                      float(np.abs(lib.astype(int) - ref).max()), float(np.abs(lib.astype(int) - ref).max()) / 255.0,
                      psnr(lib, ref))
        # Same noise (diffusers' bf16 draw from the seed) and latents policy (bf16 between steps) as the pipeline,
        # and every part computing the library's ops in its dtypes (T5's gelu_new op by op, the VAE's group norms and
        # the denoiser's layer norms in bf16): text embeddings, image latents, each step's prediction and latents and
        # the decoded video are diffusers' bits. What remains is diffusers' postprocess rounding x * 0.5 + 0.5 to bf16
        # before the 8-bit levels, where Reel stays in float32 (docs/STAGE_PACKAGE.md, Parity).
        exact = levels_in_f32(lib_video)
        diff = np.abs(reel.astype(int) - exact.astype(int))
        record_parity("pipeline", model, "bf16", "diffusers bf16, decoded video levelled in f32", float(diff.max()),
                      float(diff.max()) / 255.0, psnr(reel, exact))
        self.assertEqual(diff.max(), 0, f"{variant}: {np.count_nonzero(diff)} levels differ from diffusers' decoded "
                                         f"video, mean {diff.mean()}")
        self.assertGreaterEqual(psnr(reel, lib), BF16_FLOOR_DB, f"{variant}: bf16 frames against diffusers' bf16")

    def test_2b_f32(self):
        self.check_f32("2b")

    def test_5b_f32(self):
        self.check_f32("5b")

    def test_5b_i2v_f32(self):
        self.check_f32("5b-i2v")

    def test_vae_tiling_as_enable_tiling(self):
        # Tiles of 48x40 pixels (6x5 latents) with enable_tiling()'s overlaps (1/6, 1/5): 2x2 tiles over the 64x64
        # frames, blended. At these sizes diffusers' own tiles cover the frame exactly (8 x stride = tile - blend, as
        # at its default 240x360), so the two must agree.
        reel = self.reel_frames("5b", "f32", ["--vae-tiling", "48x40"])
        ref = self.diffusers_frames("5b", tiling=(48, 40))
        untiled = self.diffusers_frames("5b")
        diff = np.abs(reel.astype(int) - ref.astype(int))
        record_parity("pipeline", "tiny 5b, VAE tiling 48x40 as enable_tiling(48, 40)", "f32", "diffusers f32",
                      float(diff.max()), float(diff.max()) / 255.0, psnr(reel, ref))
        self.assertLessEqual(diff.max(), F32_LEVELS, f"tiled frames {diff.max()} levels apart, mean {diff.mean()}")
        # Tiling changed the video (the seams are blended, not identical), so the comparison saw the tiled path.
        self.assertGreater(np.abs(ref.astype(int) - untiled.astype(int)).max(), F32_LEVELS)

    def test_5b_bf16(self):
        self.check_bf16("5b")

    def test_5b_i2v_bf16(self):
        self.check_bf16("5b-i2v")


if __name__ == "__main__":
    unittest.main()
