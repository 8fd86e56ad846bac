"""Test stand-in for diffusers (not installable here): the mirrors under diffusers' class names, so the CLI's
loading path (from_pretrained per subfolder) runs end to end."""

from mirror_transformer import CogVideoXTransformer3DModel  # noqa: F401
from mirror_vae import AutoencoderKLCogVideoX  # noqa: F401
