"""Each exported TorchScript part, saved and loaded back, against the diffusers / transformers module it came from
(the libraries themselves, tiny configs with random weights), on the same inputs: same outputs (float32, to
rounding), Reel's calling convention."""

import unittest

import torch

from export_test_util import (TEXT_TOKENS, TempDirTest, errors, record_parity, rotary_embeddings, tiny_t5,
                              tiny_transformer, tiny_vae)
from exporter import t5, transformer, vae
from exporter.script import class_name_for

# Issue 17's tolerance for f32: 1e-4 of the largest reference value.
REL_F32 = 1e-4
# In bf16 Reel's part and the library's module each round differently; Reel's distance to the f32 reference may be
# at most this many times the library's own (both are recorded).
BF16_FACTOR = 2.0


class PartsTest(TempDirTest):
    def export(self, write, module, spec, dtype=torch.float32):
        """Runs a write_parts function; returns the parts as loaded back from disk, in order."""
        parts = []

        def save(role, file, builder):
            path = self.tmp / file.replace("/", "_")
            builder.finish(class_name_for(file)).save(str(path))
            parts.append((role, torch.jit.load(str(path))))

        write(module, spec, dtype, save)
        return parts

    def assertClose(self, got, want, what="", stage=None, model="tiny", rel=REL_F32):
        """got within rel × max |want| of want (float32); recorded as a parity row when `stage` is given."""
        self.assertEqual(tuple(got.shape), tuple(want.shape), what)
        max_abs, r = errors(got, want)
        if stage:
            record_parity(stage, model, "f32", "diffusers f32" if stage != "text_encoder" else "transformers f32",
                          max_abs, r)
        self.assertLessEqual(r, rel, f"{what}: max error {max_abs} ({r:.2e} of the largest value)")

    def assertBf16Close(self, reel, library, reference, what, stage, model="tiny"):
        """A bf16 part against the library's module run in bf16, both against the f32 reference: Reel's distance to
        the reference at most BF16_FACTOR times the library's. All three recorded."""
        lib = "transformers" if stage == "text_encoder" else "diffusers"
        rows = {"reel_lib": errors(reel, library), "reel_ref": errors(reel, reference),
                "lib_ref": errors(library, reference)}
        record_parity(stage, model, "bf16", f"{lib} bf16", *rows["reel_lib"])
        record_parity(stage, model, "bf16", "f32 reference", *rows["reel_ref"])
        record_parity(stage, f"{model} ({lib} itself)", "bf16", "f32 reference", *rows["lib_ref"])
        self.assertLessEqual(rows["reel_ref"][1], BF16_FACTOR * rows["lib_ref"][1],
                             f"{what}: Reel bf16 {rows['reel_ref'][1]:.2e} from f32, {lib} bf16 {rows['lib_ref'][1]:.2e}")


class TextEncoderPartsTest(PartsTest):
    def run_t5(self, parts, ids):
        h, bias = parts[0][1](ids)
        for _, p in parts[1:-1]:
            h = p(h, bias)
        return parts[-1][1](h)

    def test_matches_t5_encoder(self):
        te = tiny_t5()
        spec = t5.read_spec(te)
        parts = self.export(t5.write_parts, te, spec)
        self.assertEqual([r for r, _ in parts], ["embed", "block", "block", "head"])
        ids = torch.randint(0, 384, (2, TEXT_TOKENS), generator=torch.Generator().manual_seed(0))
        ids[:, 20:] = 0  # pads, attended to as CogVideoX calls the encoder without a mask
        with torch.no_grad():
            want = te(ids).last_hidden_state
            got = self.run_t5(parts, ids)
        self.assertClose(got, want, what="T5 last_hidden_state", stage="text_encoder")
        # The relative position bias comes out of the embed part for all blocks, [1, heads, T, T] float32.
        bias = parts[0][1](ids)[1]
        self.assertEqual(tuple(bias.shape), (1, 4, TEXT_TOKENS, TEXT_TOKENS))
        self.assertEqual(bias.dtype, torch.float32)

    def test_bf16_weights_stay_close(self):
        te = tiny_t5()
        parts = self.export(t5.write_parts, te, t5.read_spec(te), torch.bfloat16)
        for _, p in parts:
            self.assertTrue(all(w.dtype == torch.bfloat16 for w in p.parameters()))
        ids = torch.randint(0, 384, (1, TEXT_TOKENS), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = te(ids).last_hidden_state
            library = tiny_t5().to(torch.bfloat16)(ids).last_hidden_state
            got = self.run_t5(parts, ids)
        self.assertEqual(got.dtype, torch.bfloat16)
        self.assertBf16Close(got, library, want, "bf16 T5", "text_encoder")
        # transformers' ops in its order (gelu_new op by op): its bits, not merely as close to float32.
        self.assertTrue(torch.equal(got, library), f"bf16 T5 {errors(got, library)} from transformers' bf16")


class DenoiserPartsTest(PartsTest):
    def run_denoiser(self, parts, latents, text, timestep):
        video, txt, emb, cos, sin = parts[0][1](latents, text, timestep)
        for _, p in parts[1:-1]:
            video, txt = p(video, txt, emb, cos, sin)
        f, h, w = latents.shape[1], latents.shape[3], latents.shape[4]
        return parts[-1][1](video, emb, f, h, w), cos

    def check(self, variant, sizes, dtype=torch.float32):
        tr = tiny_transformer(variant)
        spec = transformer.read_spec(tr)
        parts = self.export(transformer.write_parts, tr, spec, dtype)
        self.assertEqual([r for r, _ in parts], ["embed", "block", "block", "head"])
        library = tiny_transformer(variant).to(dtype) if dtype != torch.float32 else None
        g = torch.Generator().manual_seed(7)
        for f, h, w in sizes:
            latents = torch.randn(2, f, spec.in_channels, h, w, generator=g)
            text = torch.randn(2, TEXT_TOKENS, 64, generator=g)
            timestep = torch.tensor([999, 321])
            rope = rotary_embeddings(tr, h * 8, w * 8, f) if spec.rotary else None
            what = f"{variant} velocity at {f}x{h}x{w} latents"
            with torch.no_grad():
                want = tr(latents, text, timestep, image_rotary_emb=rope).sample
                got, cos = self.run_denoiser(parts, latents, text.to(dtype), timestep)
                if library is not None:
                    # As the pipeline runs it: latents and text in the transformer's dtype.
                    lib = library(latents.to(dtype), text.to(dtype), timestep, image_rotary_emb=rope).sample
            self.assertEqual(got.dtype, torch.float32)
            if library is not None:
                self.assertBf16Close(got, lib, want, what, "denoiser", f"tiny {variant}")
                self.assertTrue(torch.equal(got, lib.float()), f"{what}: {errors(got, lib)} from diffusers' bf16")
                continue
            self.assertClose(got, want, what=what, stage="denoiser", model=f"tiny {variant}")
            if spec.rotary:
                self.assertClose(cos, rope[0], what=f"{variant} RoPE cos at {f}x{h}x{w}")
            else:
                self.assertEqual(cos.numel(), 0)

    def test_2b_sincos_positions(self):
        # Sample size (the table diffusers precomputes) and other sizes (recomputed).
        self.check("2b", [(3, 8, 8), (2, 8, 8), (3, 16, 8)])

    def test_5b_rope(self):
        # 16x8 latents fit the 8x8 base grid with a crop offset (left = 1), as non-sample aspect ratios do.
        self.check("5b", [(3, 8, 8), (2, 8, 12), (3, 16, 8)])

    def test_5b_i2v_learned_positions(self):
        # The learned table at the sample size; sin-cos for other frame counts, as diffusers does.
        self.check("5b-i2v", [(3, 8, 8), (2, 8, 8)])

    def test_bf16_weights_stay_close(self):
        self.check("5b", [(3, 8, 8)], dtype=torch.bfloat16)

    def test_bf16_layer_norm_as_diffusers(self):
        # diffusers' nn.LayerNorm runs in the activations' dtype. ATen's bf16 kernel accumulates the statistics in
        # another order than its float32 one, so normalising a float32 copy and rounding it differs in a few elements
        # per million: enough for one element of a guided I2V step to move (docs/STAGE_PACKAGE.md, Parity).
        tr = tiny_transformer("5b")
        block = self.export(transformer.write_parts, tr, transformer.read_spec(tr), torch.bfloat16)[1][1]
        g = torch.Generator().manual_seed(11)
        x = (torch.randn(1 << 16, 64, generator=g) * 3 + 1).to(torch.bfloat16)
        w, b = block.norm1_w, block.norm1_b
        want = torch.nn.functional.layer_norm(x, [64], w, b, 1e-5)
        f32_route = torch.nn.functional.layer_norm(x.float(), [64], w.float(), b.float(), 1e-5).to(torch.bfloat16)
        self.assertFalse(torch.equal(f32_route, want), "the data does not tell the float32 route apart")
        self.assertTrue(torch.equal(block.ln(x, w, b, 1e-5), want))


class VaePartsTest(PartsTest):
    def setUp(self):
        super().setUp()
        self.vae = tiny_vae()
        self.spec = vae.read_spec(self.vae)
        self.encoder = self.export(vae.write_encoder, self.vae, self.spec)[0][1]
        self.decoder = self.export(vae.write_decoder, self.vae, self.spec)[0][1]

    def test_encoder_moments(self):
        g = torch.Generator().manual_seed(3)
        for frames in (1, 9, 17):  # 17 frames: chunks [0, 9) and [9, 17) share the causal cache
            video = torch.rand(1, 3, frames, 32, 48, generator=g) * 2 - 1
            with torch.no_grad():
                dist = self.vae.encode(video).latent_dist
                moments = self.encoder(video)
            self.assertClose(moments[:, :16], dist.mean, what=f"posterior mean, {frames} frames", stage="vae_encoder")
            self.assertClose(moments[:, 16:], dist.logvar, what=f"clamped log-variance, {frames} frames")

    def test_decoder_video(self):
        g = torch.Generator().manual_seed(4)
        for latent_frames in (1, 3, 4, 5):  # chunks 3 | 2,2 | 3,2 with the causal cache carried over
            z = torch.randn(2, 16, latent_frames, 4, 6, generator=g)
            with torch.no_grad():
                want = self.vae.decode(z).sample
                got = self.decoder(z)
            self.assertClose(got, want, what=f"decoded video, {latent_frames} latent frames", stage="vae_decoder")

    def test_bf16_as_diffusers_bf16(self):
        # As the image-to-video pipeline encodes its image (bytes to [-1, 1], then the VAE's dtype) and as it decodes.
        lib = tiny_vae().to(torch.bfloat16)
        encoder = self.export(vae.write_encoder, self.vae, self.spec, torch.bfloat16)[0][1]
        decoder = self.export(vae.write_decoder, self.vae, self.spec, torch.bfloat16)[0][1]
        g = torch.Generator().manual_seed(5)
        image = (torch.rand(64, 64, 3, generator=g) * 255).byte().permute(2, 0, 1).float() / 127.5 - 1
        image = image[None, :, None].contiguous()
        z = torch.randn(1, 16, 3, 8, 8, generator=g)
        with torch.no_grad():
            moments, want_moments = encoder(image), lib.encode(image.to(torch.bfloat16)).latent_dist.parameters
            video, want_video = decoder(z), lib.decode(z.to(torch.bfloat16)).sample
            ref_moments, ref_video = self.vae.encode(image).latent_dist.parameters, self.vae.decode(z).sample
        self.assertBf16Close(moments, want_moments, ref_moments, "bf16 posterior moments", "vae_encoder")
        self.assertBf16Close(video, want_video, ref_video, "bf16 decoded video", "vae_decoder")
        self.assertTrue(torch.equal(moments, want_moments.float()), f"moments {errors(moments, want_moments)}")
        self.assertTrue(torch.equal(video, want_video.float()), f"video {errors(video, want_video)}")

    def test_bf16_group_norm_as_diffusers(self):
        # nn.GroupNorm in the activations' dtype, as diffusers runs it (the float32 route differs in rare elements;
        # see DenoiserPartsTest.test_bf16_layer_norm_as_diffusers). The tiny VAE's 8 groups, eps 1e-6.
        decoder = self.export(vae.write_decoder, self.vae, self.spec, torch.bfloat16)[0][1]
        g = torch.Generator().manual_seed(0)
        # 2 channels of 64x64 per group, as the encoder's first norms see an image: ~10 in a million differ there
        # (groups of 2^17 elements showed none).
        x = (torch.randn(64, 16, 1, 64, 64, generator=g) * 3 + 1).to(torch.bfloat16)
        w = (1 + 0.1 * torch.randn(16, generator=g)).to(torch.bfloat16)
        b = (0.1 * torch.randn(16, generator=g)).to(torch.bfloat16)
        want = torch.nn.functional.group_norm(x, 8, w, b, 1e-6)
        f32_route = torch.nn.functional.group_norm(x.float(), 8, w.float(), b.float(), 1e-6).to(torch.bfloat16)
        self.assertFalse(torch.equal(f32_route, want), "the data does not tell the float32 route apart")
        self.assertTrue(torch.equal(decoder._gn(x, w, b), want))

    def test_chunk_methods_thread_the_cache(self):
        # What Reel's VAE slicing and tiling call: decode_chunk over diffusers' chunks with one cache dict, which
        # TorchScript updates in place (a ScriptDict here, a c10::Dict in Reel).
        def script_dict():
            d = torch.jit.script({"": torch.zeros(0)})
            del d[""]
            return d

        z = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(5))
        video = torch.rand(1, 3, 17, 16, 16, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            cache = script_dict()
            pieces = [self.decoder.decode_chunk(z[:, :, a:b], cache) for a, b in ((0, 3), (3, 5))]
            self.assertGreater(len(cache), 0)
            self.assertTrue(torch.equal(torch.cat(pieces, 2), self.decoder(z)))
            cache = script_dict()
            pieces = [self.encoder.encode_chunk(video[:, :, a:b], cache) for a, b in ((0, 9), (9, 17))]
            self.assertTrue(torch.equal(torch.cat(pieces, 2), self.encoder(video)))

if __name__ == "__main__":
    unittest.main()
