"""Whole packages from export_package: the manifest (fields, params/bytes against the files, the same layout as
`reel model synth` writes), the SentencePiece tokenizer, and Reel loading and generating with them."""

import filecmp
import json
import shutil
import unittest
from pathlib import Path

import torch

from export_test_util import (TEXT_TOKENS, TempDirTest, run_reel, spm_ids, tiny_t5, tiny_transformer, tiny_vae,
                              train_spiece)
from exporter import ExportError, ExportOptions, export_package
from exporter.package import LazyComponent
from exporter.scheduler import scheduler_settings

GENERATE = ["--prompt", "a red fox runs through the snowy forest", "--frames", "9", "--height", "64", "--width",
            "64", "--steps", "2", "--threads", "1", "--no-profile-db"]


def key_tree(value):
    """The nested key structure of a manifest, list items collapsed to their first element's structure."""
    if isinstance(value, dict):
        return {k: key_tree(v) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return [key_tree(value[0])]
    return type(value).__name__ if not isinstance(value, bool) else "bool"


class PackageTest(TempDirTest):
    @classmethod
    def setUpClass(cls):
        cls.spm_dir = Path(__import__("tempfile").mkdtemp(prefix="reel-export-spm-"))
        cls.spiece = train_spiece(cls.spm_dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.spm_dir, ignore_errors=True)

    def export(self, variant, dtype="f32", name=None, scheduler=None, **kw):
        out = self.tmp / f"pkg-{variant}-{dtype}"
        manifest = export_package(tiny_t5(), tiny_transformer(variant), tiny_vae(), self.spiece,
                                  ExportOptions(out=out, name=name or f"tiny-{variant}", dtype=dtype,
                                                scheduler_config=scheduler, **kw))
        self.assertFalse(Path(str(out) + ".tmp").exists())
        self.assertEqual(json.loads((out / "manifest.json").read_text()), manifest)
        return out, manifest

    def check_parts(self, out, manifest, dtype):
        """Every part's params/bytes/dtype as Reel's loader counts them, and the stage totals."""
        torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
        for kind, stage in manifest["stages"].items():
            self.assertEqual(stage["dtype"], dtype)
            for part in stage["parts"]:
                module = torch.jit.load(str(out / part["file"]))
                weights = list(module.parameters())
                self.assertEqual(part["params"], sum(w.numel() for w in weights), part["file"])
                self.assertEqual(part["bytes"], sum(w.numel() * w.element_size() for w in weights), part["file"])
                # float16 keeps what the part lists in keep_in_f32() in float32 (T5's wo, as transformers does)
                kept = module.keep_in_f32() if dtype == "f16" and hasattr(module, "keep_in_f32") else []
                self.assertTrue(all(w.dtype == (torch.float32 if n in kept else torch_dtype)
                                    for n, w in module.named_parameters()), part["file"])
                if kind == "text_encoder" and part["role"] == "block" and dtype == "f16":
                    self.assertEqual(kept, ["wo_w"])
                self.assertEqual(len(list(module.children())), 0, f"{part['file']}: weights must be top-level")
                self.assertEqual(len(list(module.buffers())), 0, f"{part['file']}: no buffers")
            self.assertEqual(stage["params"], sum(p["params"] for p in stage["parts"]), kind)
            self.assertEqual(stage["bytes"], sum(p["bytes"] for p in stage["parts"]), kind)

    def generate(self, out, *extra):
        video = self.tmp / f"{out.name}.mp4"
        r = run_reel(["generate", "--model", str(out), *GENERATE, "--out", str(video), *extra], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertGreater(video.stat().st_size, 0)
        return video

    def test_text_to_video_package(self):
        out, m = self.export("5b")
        self.assertEqual(m["format"], "reel-stage-package")
        self.assertEqual(m["format_version"], 1)
        self.assertEqual(m["name"], "tiny-5b")
        self.assertFalse(m["image_conditioned"])
        added = m["tokenizer"].pop("added_tokens")  # transformers' T5Tokenizer: its specials and <extra_id_N>
        self.assertEqual(m["tokenizer"], {"kind": "sentencepiece", "file": "tokenizer/spiece.model",
                                          "max_length": TEXT_TOKENS, "vocab_size": 384, "pad_id": 0, "eos_id": 1})
        self.assertEqual(added[:3], [{"content": "<pad>", "id": 0}, {"content": "</s>", "id": 1},
                                     {"content": "<unk>", "id": 2}])
        self.assertEqual(len(added), 103)
        self.assertEqual(m["vae"], {"spatial_compression": 8, "temporal_compression": 4, "latent_channels": 16,
                                    "scaling_factor": 0.7})
        self.assertEqual(m["scheduler"]["snr_shift_scale"], 1.0)  # RoPE model, no scheduler config: 5B settings
        self.assertEqual(m["defaults"], {"frames": 9, "height": 64, "width": 64, "steps": 50, "guidance": 6.0,
                                         "fps": 8})
        self.assertEqual(list(m["stages"]), ["text_encoder", "denoiser", "vae_decoder"])
        self.assertEqual([p["role"] for p in m["stages"]["denoiser"]["parts"]], ["embed", "block", "block", "head"])
        self.assertEqual(m["stages"]["denoiser"]["config"]["rotary"], 1.0)
        self.check_parts(out, m, "f32")

        # The tokenizer is the checkpoint's file, and spm_encode (what Reel runs) reads it.
        self.assertTrue(filecmp.cmp(out / "tokenizer" / "spiece.model", self.spiece, shallow=False))
        ids = spm_ids(out / "tokenizer" / "spiece.model", "a red fox at dawn")
        self.assertTrue(ids and all(2 < i < m["tokenizer"]["vocab_size"] for i in ids), ids)

        # Same manifest layout as Reel's own synthetic packages (less preset and seed, plus the tokenizer file).
        synth = self.tmp / "synth"
        r = run_reel(["model", "synth", "--preset", "tiny", "--out", str(synth)], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr)
        theirs = key_tree(json.loads((synth / "manifest.json").read_text()))
        for key in ("preset", "seed"):
            theirs.pop(key)
        theirs["tokenizer"]["file"] = "str"
        self.assertEqual(key_tree(m), theirs)

        r = run_reel(["model", "info", "--model", str(out)], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("tiny-5b (text-to-video)", r.stdout)
        frames = self.tmp / "frames"
        self.generate(out, "--frames-dir", str(frames))
        # VAE slicing decodes through decode_chunk with the causal cache: the same frames as forward.
        sliced = self.tmp / "frames-sliced"
        self.generate(out, "--frames-dir", str(sliced), "--vae-slicing", "--offload", "block:1")
        names = sorted(p.name for p in frames.iterdir())
        self.assertEqual(len(names), 9)
        for n in names:
            self.assertTrue(filecmp.cmp(frames / n, sliced / n, shallow=False), n)

    def test_image_to_video_package(self):
        out, m = self.export("5b-i2v", dtype="bf16")
        self.assertTrue(m["image_conditioned"])
        self.assertEqual(list(m["stages"]), ["text_encoder", "vae_encoder", "denoiser", "vae_decoder"])
        self.assertEqual(m["stages"]["vae_encoder"]["outputs"][0]["shape"], ["B", 32, 1, "h", "w"])
        self.assertEqual(m["stages"]["denoiser"]["inputs"][0]["shape"], ["B", "f", 32, "h", "w"])
        # Learned positions: exactly the sample size.
        self.assertEqual((m["limits"]["min_height"], m["limits"]["max_height"]), (64, 64))
        self.assertEqual((m["limits"]["min_width"], m["limits"]["max_width"]), (64, 64))
        self.check_parts(out, m, "bf16")
        image = self.tmp / "image.png"
        r = run_reel(["generate", "--model", "tiny", *GENERATE, "--out", str(self.tmp / "seed.mp4"), "--frames-dir",
                      str(self.tmp / "seed")], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        shutil.copyfile(sorted((self.tmp / "seed").iterdir())[0], image)
        self.generate(out, "--image", str(image))

    def test_2b_package_in_f16(self):
        out, m = self.export("2b", dtype="f16")
        self.assertEqual(m["scheduler"]["snr_shift_scale"], 3.0)  # sin-cos model, no scheduler config: 2B settings
        self.assertEqual(m["stages"]["denoiser"]["config"]["rotary"], 0.0)
        self.assertEqual(m["stages"]["text_encoder"]["outputs"][0]["dtype"], "f16")
        self.check_parts(out, m, "f16")
        # LibTorch's CPU kernels lack f16 matmuls: Reel loads and checks the f16 files, then computes in f32.
        self.generate(out, "--dtype", "f32")

    def test_scheduler_config_is_read(self):
        cfg = {"_class_name": "CogVideoXDDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
               "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "set_alpha_to_one": True,
               "snr_shift_scale": 2.5, "steps_offset": 0, "timestep_spacing": "linspace", "trained_betas": None}
        s = scheduler_settings(cfg, rotary=True, source="s.json")
        self.assertEqual(s, {"kind": "cogvideox_ddim", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                             "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
                             "timestep_spacing": "linspace", "rescale_betas_zero_snr": True,
                             "set_alpha_to_one": True, "snr_shift_scale": 2.5})
        # Missing keys take diffusers' class defaults, as from_config does.
        partial = scheduler_settings({"_class_name": "CogVideoXDPMScheduler", "clip_sample": False}, True, "s.json")
        self.assertEqual((partial["kind"], partial["prediction_type"], partial["timestep_spacing"],
                          partial["snr_shift_scale"]), ("cogvideox_dpm", "epsilon", "leading", 3.0))
        for bad, word in (({"clip_sample": True}, "clip_sample"), ({"_class_name": "DDPMScheduler"}, "_class_name"),
                          ({"clip_sample": False, "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
                          ({"clip_sample": False, "prediction_type": "sample"}, "prediction_type")):
            with self.assertRaises(ExportError) as e:
                scheduler_settings(bad, True, "scheduler/scheduler_config.json")
            self.assertIn(word, str(e.exception))
            self.assertIn("accepted", str(e.exception))
        out, m = self.export("5b", scheduler=cfg)
        self.assertEqual(m["scheduler"], s)

    def test_bad_input_leaves_nothing(self):
        out = self.tmp / "pkg"

        def attempt(text_encoder=None, tr=None, vae_module=None, **opts):
            with self.assertRaises(ExportError) as e:
                export_package(text_encoder or tiny_t5(), tr or tiny_transformer("5b"), vae_module or tiny_vae(),
                               opts.pop("tokenizer", self.spiece), ExportOptions(out=out, name="x", **opts))
            self.assertFalse(Path(str(out) + ".tmp").exists())
            return str(e.exception)

        self.assertIn("text_embed_dim 96", attempt(tr=tiny_transformer("5b", text_embed_dim=96)))
        self.assertIn("in_channels 24", attempt(tr=tiny_transformer("5b", in_channels=24)))
        self.assertIn("patch_size_t", attempt(tr=LazyComponent(dict(tiny_transformer("5b").config, patch_size_t=2),
                                                                lambda: None)))
        self.assertIn("tokenizer", attempt(tokenizer=self.tmp / "missing.model"))
        self.assertIn("--dtype", attempt(dtype="fp8"))
        # A config that disagrees with the weights fails on the weight, after parts were written: no package.
        wrong = tiny_transformer("5b")
        msg = attempt(tr=LazyComponent(dict(wrong.config, num_attention_heads=4, attention_head_dim=16),
                                       lambda: wrong))
        self.assertIn("transformer: weight 'transformer_blocks.0.attn1.norm_q.weight' has shape [32]", msg)
        self.assertFalse(out.exists())
        out.mkdir()
        (out / "x").write_text("x")
        self.assertIn("already exists", attempt())


if __name__ == "__main__":
    unittest.main()
