"""reel_export.py end to end on checkpoint directories: loading through diffusers' and transformers' own
from_pretrained (checkpoints their save_pretrained wrote), the package written whole, and one error line for each kind of bad input."""

import json
import shutil
import tempfile
import unittest
from pathlib import Path

from export_test_util import TempDirTest, run_export, run_reel, save_checkpoint, train_spiece


class CliTest(TempDirTest):
    @classmethod
    def setUpClass(cls):
        cls.spm_dir = Path(tempfile.mkdtemp(prefix="reel-export-spm-"))
        cls.spiece = train_spiece(cls.spm_dir)
        cls.ckpt = save_checkpoint(cls.spm_dir / "CogVideoX-tiny", "5b", cls.spiece)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.spm_dir, ignore_errors=True)

    def assertOneLineError(self, r, *words):
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        self.assertTrue(lines[0].startswith("reel_export: error: "), lines[0])
        for w in words:
            self.assertIn(w, lines[0])

    def copy_checkpoint(self, name="ckpt"):
        ckpt = self.tmp / name
        shutil.copytree(self.ckpt, ckpt)
        return ckpt

    def test_export_and_generate(self):
        out = self.tmp / "pkg"
        r = run_export(["--checkpoint", self.ckpt, "--out", out, "--dtype", "bf16"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("reel_export: denoiser/block_001.pt", r.stdout)
        self.assertIn(f"reel_export: wrote {out} (CogVideoX-tiny, text-to-video, bf16,", r.stdout)
        self.assertFalse((self.tmp / "pkg.tmp").exists())
        m = json.loads((out / "manifest.json").read_text())
        self.assertEqual(m["name"], "CogVideoX-tiny")
        self.assertEqual(m["stages"]["denoiser"]["dtype"], "bf16")
        r = run_reel(["generate", "--model", str(out), "--prompt", "a red fox", "--frames", "9", "--height", "64",
                      "--width", "64", "--steps", "2", "--threads", "1", "--no-profile-db", "--out",
                      str(self.tmp / "fox.mp4")], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])

    def test_scheduler_config_and_name(self):
        ckpt = self.copy_checkpoint()
        (ckpt / "scheduler").mkdir()
        (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps({
            "_class_name": "CogVideoXDDIMScheduler", "clip_sample": False, "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True, "snr_shift_scale": 3.0, "timestep_spacing": "trailing"}))
        out = self.tmp / "pkg"
        r = run_export(["--checkpoint", ckpt, "--out", out, "--name", "my-model"])
        self.assertEqual(r.returncode, 0, r.stderr)
        m = json.loads((out / "manifest.json").read_text())
        self.assertEqual((m["name"], m["scheduler"]["snr_shift_scale"]), ("my-model", 3.0))

    def test_bad_input(self):
        out = self.tmp / "pkg"
        cases = []

        missing_vae = self.copy_checkpoint("no-vae")
        shutil.rmtree(missing_vae / "vae")
        cases.append((["--checkpoint", missing_vae], ["no vae/ subfolder", "accepted a diffusers CogVideoX"]))

        no_spiece = self.copy_checkpoint("no-spiece")
        (no_spiece / "tokenizer" / "spiece.model").unlink()
        cases.append((["--checkpoint", no_spiece], ["tokenizer/spiece.model is missing"]))

        cases.append((["--checkpoint", self.tmp / "nowhere"], ["not a directory"]))

        def variant(name, rel, **changes):
            ckpt = self.copy_checkpoint(name)
            cfg = json.loads((ckpt / rel).read_text())
            cfg.update(changes)
            (ckpt / rel).write_text(json.dumps(cfg))
            return ckpt

        flux = variant("flux", "transformer/config.json", _class_name="FluxTransformer2DModel")
        cases.append((["--checkpoint", flux],
                      ["FluxTransformer2DModel", "accepted CogVideoXTransformer3DModel"]))
        cases.append((["--checkpoint", variant("v15", "transformer/config.json", patch_size_t=2)],
                      ["patch_size_t 2", "CogVideoX 1.5 is not supported"]))
        cases.append((["--checkpoint", variant("t5v10", "text_encoder/config.json", feed_forward_proj="relu")],
                      ["feed_forward_proj 'relu'", "accepted 'gated-gelu'"]))
        cases.append((["--checkpoint", variant("clip", "text_encoder/config.json", model_type="clip_text_model")],
                      ["model_type 'clip_text_model'", "accepted a T5 encoder"]))
        cases.append((["--checkpoint", variant("quant", "vae/config.json", use_quant_conv=True)],
                      ["use_quant_conv True", "accepted false"]))
        sched = self.copy_checkpoint("bad-scheduler")
        (sched / "scheduler").mkdir()
        (sched / "scheduler" / "scheduler_config.json").write_text("{not json")
        cases.append((["--checkpoint", sched], ["scheduler/scheduler_config.json is not valid JSON"]))
        cases.append((["--checkpoint", self.ckpt, "--dtype", "fp8"], ["--dtype", "'fp8'", "f32"]))

        for args, words in cases:
            with self.subTest(args=[str(a) for a in args]):
                r = run_export([*args, "--out", out])
                self.assertOneLineError(r, *words)
                self.assertFalse(out.exists())
                self.assertFalse((self.tmp / "pkg.tmp").exists())

        out.mkdir()
        (out / "keep").write_text("user data")
        r = run_export(["--checkpoint", self.ckpt, "--out", out])
        self.assertOneLineError(r, f"--out {out}: already exists")
        self.assertEqual((out / "keep").read_text(), "user data")

    def test_without_diffusers(self):
        r = run_export(["--checkpoint", self.ckpt, "--out", self.tmp / "pkg"], with_diffusers=False)
        self.assertOneLineError(r, "needs the Python packages diffusers and transformers")
        self.assertEqual(sorted(p.name for p in self.tmp.iterdir()), [])


if __name__ == "__main__":
    unittest.main()
