"""Test stand-in for transformers: the T5 mirror under its class name (see ../diffusers/__init__.py)."""

from mirror_t5 import T5EncoderModel  # noqa: F401
