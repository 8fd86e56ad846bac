"""One block at the real widths of CogVideoX-2B, 5B and 5B-I2V (T5-XXL, the transformers, the VAE), built from the
real configs with random weights by diffusers and transformers themselves, exported, and run on the same small inputs:
the rounding of real-width reductions (4096-wide T5 rows, 3072-wide attention, 512-channel convolutions) is what
tiny widths cannot show."""

import unittest

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from export_test_util import randomize, rotary_embeddings  # first: puts the exporter on the path
from exporter import t5, transformer, vae
from test_parts import PartsTest

# CogVideoX's configs (model cards / the Hub's config.json), one layer or block.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=1,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
              dropout_rate=0.1, pad_token_id=0, eos_token_id=1, feed_forward_proj="gated-gelu")
COMMON = dict(attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512, text_embed_dim=4096,
              num_layers=1, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
              temporal_compression_ratio=4, max_text_seq_length=226)
TRANSFORMERS = {
    "2b": dict(COMMON, num_attention_heads=30),
    "5b": dict(COMMON, num_attention_heads=48, use_rotary_positional_embeddings=True),
    # diffusers runs learned positions only at the sample size: here a small one (8×12 latents, 5 frames) so that
    # the test's inputs use the learned table at the real width.
    "5b-i2v": dict(COMMON, num_attention_heads=48, in_channels=32, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True, sample_height=8, sample_width=12, sample_frames=5),
}
VAE = dict(block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, norm_num_groups=32)
TEXT = 226


class RealWidthTest(PartsTest):
    def test_t5_xxl_layer(self):
        te = randomize(T5EncoderModel(T5Config(**T5_XXL)), 11)
        parts = self.export(t5.write_parts, te, t5.read_spec(te))
        ids = torch.randint(3, 32128, (2, TEXT), generator=torch.Generator().manual_seed(0))
        ids[:, 40:] = 0
        with torch.no_grad():
            want = te(ids).last_hidden_state
            h, bias = parts[0][1](ids)
            for _, p in parts[1:-1]:
                h = p(h, bias)
            got = parts[-1][1](h)
        self.assertClose(got, want, what="T5-XXL layer", stage="text_encoder", model="T5-XXL width, 1 layer")

    def denoiser(self, variant, dtype=torch.float32):
        cfg = TRANSFORMERS[variant]
        tr = randomize(CogVideoXTransformer3DModel(**cfg), 12)
        parts = self.export(transformer.write_parts, tr, transformer.read_spec(tr), dtype)
        g = torch.Generator().manual_seed(1)
        f, h, w = 2, 8, 12  # not the sample size of 2B and 5B: positions computed as for any other size
        latents = torch.randn(2, f, cfg["in_channels"], h, w, generator=g)
        text = torch.randn(2, TEXT, 4096, generator=g)
        timestep = torch.tensor([981, 981])
        rope = rotary_embeddings(tr, h * 8, w * 8, f) if cfg.get("use_rotary_positional_embeddings") else None
        with torch.no_grad():
            want = tr(latents, text, timestep, image_rotary_emb=rope).sample
            video, txt, emb, cos, sin = parts[0][1](latents, text.to(dtype), timestep)
            for _, p in parts[1:-1]:
                video, txt = p(video, txt, emb, cos, sin)
            got = parts[-1][1](video, emb, f, h, w)
            if dtype == torch.float32:
                self.assertClose(got, want, what=f"{variant} block", stage="denoiser",
                                 model=f"{variant.upper()} width, 1 block")
                return
            tr = tr.to(dtype)
            lib = tr(latents.to(dtype), text.to(dtype), timestep, image_rotary_emb=rope).sample
        self.assertBf16Close(got, lib, want, f"{variant} block bf16", "denoiser", f"{variant.upper()} width, 1 block")

    def test_2b_block(self):
        self.denoiser("2b")

    def test_5b_block(self):
        self.denoiser("5b")

    def test_5b_i2v_block(self):
        self.denoiser("5b-i2v")

    def test_5b_block_bf16(self):
        self.denoiser("5b", torch.bfloat16)

    def test_vae(self):
        v = randomize(AutoencoderKLCogVideoX(**VAE), 13)
        spec = vae.read_spec(v)
        encoder = self.export(vae.write_encoder, v, spec)[0][1]
        decoder = self.export(vae.write_decoder, v, spec)[0][1]
        g = torch.Generator().manual_seed(2)
        z = torch.randn(1, 16, 3, 4, 6, generator=g)
        video = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
        with torch.no_grad():
            self.assertClose(decoder(z), v.decode(z).sample, what="VAE decode", stage="vae_decoder",
                             model="CogVideoX VAE width")
            self.assertClose(encoder(video)[:, :16], v.encode(video).latent_dist.mean, what="VAE encode",
                             stage="vae_encoder", model="CogVideoX VAE width")


if __name__ == "__main__":
    unittest.main()
