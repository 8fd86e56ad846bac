"""diffusers' I2V image preprocessing for image_parity_test.cc. Usage: reference.py DIR HEIGHT WIDTH

Writes DIR/orientation_N.jpg for EXIF orientations 1-8 (one photo-like picture, the same stored pixels, only the tag
differs; made with PIL), and DIR/orientation_N.rgb: what CogVideoXImageToVideoPipeline conditions on, from
`diffusers.utils.load_image` (which applies the orientation) and the pipeline's own VideoProcessor.preprocess to
HEIGHT x WIDTH, mapped from [-1, 1] back to the 8-bit RGB that PIL's resize produced (exact: x = u/255*2 - 1)."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from diffusers.utils import load_image
from diffusers.video_processor import VideoProcessor


def picture(height: int, width: int) -> Image.Image:
    """Smooth gradients, hard edges and some texture: what a photo holds, and asymmetric so that every orientation
    looks different."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / (width - 1)
    g = 255 * y / (height - 1)
    b = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    disc = (x - width * 0.3) ** 2 + (y - height * 0.35) ** 2 < (min(height, width) * 0.2) ** 2
    b[disc] = 20
    r[int(height * 0.7):, int(width * 0.6):] = 240
    noise = np.random.default_rng(0).normal(0, 6, (height, width, 3))
    rgb = np.clip(np.stack([r, g, b], -1) + noise, 0, 255).round().astype(np.uint8)
    return Image.fromarray(rgb)


def main() -> None:
    out, height, width = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    stored = picture(150, 200)  # landscape as stored; orientations 5-8 make it portrait
    processor = VideoProcessor(vae_scale_factor=8)  # as CogVideoXImageToVideoPipeline builds it
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = out / f"orientation_{orientation}.jpg"
        stored.save(path, quality=95, exif=exif.tobytes())
        x = processor.preprocess(load_image(str(path)), height=height, width=width)  # [1, 3, H, W] in [-1, 1]
        u = ((x[0].permute(1, 2, 0).double().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        (out / f"orientation_{orientation}.rgb").write_bytes(u.tobytes())


if __name__ == "__main__":
    main()
