"""The exporter's TorchScript (a Python port of models/*_script.cc) against Reel's own synthetic parts: exported at the
`tiny` / `tiny-i2v` preset sizes, each part has the synthetic part's weight names and shapes, and with the synthetic
weights copied in it computes the same outputs. Fails when the two sources drift apart."""

import unittest

import torch

from export_test_util import TEXT_TOKENS, TempDirTest, run_reel, tiny_t5, tiny_transformer, tiny_vae
from exporter import t5, transformer, vae
from exporter.script import class_name_for


class SynthParityTest(TempDirTest):
    def synth(self, preset):
        out = self.tmp / preset
        r = run_reel(["model", "synth", "--preset", preset, "--out", str(out)], self.tmp / "cache")
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def export(self, write, module, spec):
        parts = {}

        def save(role, file, builder):
            path = self.tmp / ("export-" + file.replace("/", "_"))
            builder.finish(class_name_for(file)).save(str(path))
            parts[file] = torch.jit.load(str(path))

        write(module, spec, torch.float32, save)
        return parts

    def paired(self, synth_dir, exported):
        """(synthetic, exported) per file, the exported part holding the synthetic part's weights."""
        pairs = {}
        for file, ours in exported.items():
            theirs = torch.jit.load(str(synth_dir / file))
            want = {n: tuple(p.shape) for n, p in theirs.named_parameters()}
            got = {n: tuple(p.shape) for n, p in ours.named_parameters()}
            self.assertEqual(got, want, f"{file}: weight names and shapes")
            for n, p in theirs.named_parameters():
                ours._c.setattr(n, p.detach().clone())
            pairs[file] = (theirs, ours)
        return pairs

    def assertSame(self, a, b, what):
        self.assertEqual(a.shape, b.shape, what)
        self.assertLessEqual((a - b).abs().max().item(), 1e-5 * max(1.0, b.abs().max().item()), what)

    def test_text_encoder_and_denoiser(self):
        synth = self.synth("tiny")
        te = tiny_t5()
        pairs = self.paired(synth, self.export(t5.write_parts, te, t5.read_spec(te)))
        ids = torch.randint(3, 384, (2, TEXT_TOKENS), generator=torch.Generator().manual_seed(0))
        outs = []
        for k in (0, 1):
            h, bias = pairs["text_encoder/embed.pt"][k](ids)
            for i in range(2):
                h = pairs[f"text_encoder/block_{i:03d}.pt"][k](h, bias)
            outs.append(pairs["text_encoder/head.pt"][k](h))
        self.assertSame(outs[1], outs[0], "text encoder")

        tr = tiny_transformer("5b")
        pairs = self.paired(synth, self.export(transformer.write_parts, tr, transformer.read_spec(tr)))
        g = torch.Generator().manual_seed(1)
        for f, h, w in ((3, 8, 8), (2, 16, 8)):
            latents = torch.randn(2, f, 16, h, w, generator=g)
            text = torch.randn(2, TEXT_TOKENS, 64, generator=g)
            timestep = torch.tensor([999, 40])
            outs = []
            for k in (0, 1):
                video, txt, emb, cos, sin = pairs["denoiser/embed.pt"][k](latents, text, timestep)
                for i in range(2):
                    video, txt = pairs[f"denoiser/block_{i:03d}.pt"][k](video, txt, emb, cos, sin)
                outs.append(pairs["denoiser/head.pt"][k](video, emb, f, h, w))
            self.assertSame(outs[1], outs[0], f"denoiser at {f}x{h}x{w}")

    def test_vae(self):
        synth = self.synth("tiny-i2v")
        v = tiny_vae()
        spec = vae.read_spec(v)
        exported = self.export(vae.write_encoder, v, spec)
        exported.update(self.export(vae.write_decoder, v, spec))
        pairs = self.paired(synth, exported)
        g = torch.Generator().manual_seed(2)
        video = torch.rand(1, 3, 9, 32, 32, generator=g) * 2 - 1
        z = torch.randn(1, 16, 3, 4, 4, generator=g)
        enc, dec = pairs["vae_encoder/module.pt"], pairs["vae_decoder/module.pt"]
        self.assertSame(enc[1](video), enc[0](video), "vae encoder")
        self.assertSame(dec[1](z), dec[0](z), "vae decoder")


if __name__ == "__main__":
    unittest.main()
