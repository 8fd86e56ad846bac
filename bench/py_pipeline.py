#!/usr/bin/python3
"""The baseline for bench/runtime_vs_python.sh: a plain Python loop over a Reel stage package's TorchScript
files with Debian's python3-torch (the same LibTorch 1.13), doing the work `reel generate` does for a
text-to-video job: byte tokens, text encoder, DDIM with CFG, VAE decode. Prints stage seconds as JSON."""
import argparse
import json
import math
import time

import torch


def alphas_cumprod(s):
    n = s["num_train_timesteps"]
    b0, b1 = math.sqrt(s["beta_start"]), math.sqrt(s["beta_end"])
    prod, out = 1.0, []
    for i in range(n):
        beta = (b0 + (b1 - b0) * i / (n - 1)) ** 2
        prod *= 1.0 - beta
        out.append(prod)
    k = s["snr_shift_scale"]
    out = [a / (k + (1 - k) * a) for a in out]
    r0, rt = math.sqrt(out[0]), math.sqrt(out[-1])
    return [((math.sqrt(a) - rt) * r0 / (r0 - rt)) ** 2 for a in out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", required=True)
    ap.add_argument("--frames", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt", default="a red fox")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = json.load(open(f"{a.package}/manifest.json"))
    load = lambda stage: [torch.jit.load(f"{a.package}/{p['file']}").eval() for p in m["stages"][stage]["parts"]]
    te, dn, vd = load("text_encoder"), load("denoiser"), load("vae_decoder")[0]
    tok = m["tokenizer"]
    L = tok["max_length"]

    def encode(text):
        ids = [b + 3 for b in text.encode()][: L - 1] + [tok["eos_id"]]
        return ids + [tok["pad_id"]] * (L - len(ids))

    times = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        ids = torch.tensor([encode(""), encode(a.prompt)], dtype=torch.int64)
        h, bias = te[0](ids)
        for blk in te[1:-1]:
            h = blk(h, bias)
        text = te[-1](h)
        times["text_encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        vae = m["vae"]
        f = (a.frames - 1) // vae["temporal_compression"] + 1
        hh, ww = a.height // vae["spatial_compression"], a.width // vae["spatial_compression"]
        lc = vae["latent_channels"]
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(1, f, lc, hh, ww, generator=gen)
        ac = alphas_cumprod(m["scheduler"])
        n = m["scheduler"]["num_train_timesteps"]
        steps = [int(round(n - i * n / a.steps)) - 1 for i in range(a.steps)]
        for t in steps:
            prev = t - n // a.steps
            at, ap_ = ac[t], (ac[prev] if prev >= 0 else 1.0)
            ca = math.sqrt((1 - ap_) / (1 - at))
            cb = math.sqrt(ap_) - math.sqrt(at) * ca
            x = torch.cat([latents, latents])
            video, txt, emb, cos, sin = dn[0](x, text, torch.full((2,), t, dtype=torch.int64))
            for blk in dn[1:-1]:
                video, txt = blk(video, txt, emb, cos, sin)
            v = dn[-1](video, emb, f, hh, ww)
            vu, vc = v.chunk(2)
            v = vu + a.guidance * (vc - vu)
            latents = latents * (ca + cb * math.sqrt(at)) + v * (-cb * math.sqrt(1 - at))
        times["denoise"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = vd((latents.permute(0, 2, 1, 3, 4) / vae["scaling_factor"]).contiguous())
        frames = (out[0] * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
        times["decode"] = time.perf_counter() - t0
    print(json.dumps(times))


if __name__ == "__main__":
    main()
