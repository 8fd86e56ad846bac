"""Converts a CogVideoX diffusers checkpoint into a Reel stage package (docs/STAGE_PACKAGE.md).

The conversion reads weights and config by diffusers' attribute names, so it works on any nn.Module that has them
(diffusers' own classes, or the small mirrors the tests build). Only the CLI (reel_export.py) imports diffusers.
"""

from .errors import ExportError
from .package import ExportOptions, export_package

__all__ = ["ExportError", "ExportOptions", "export_package"]
