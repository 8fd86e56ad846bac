#!/usr/bin/env python3
"""Converts a CogVideoX diffusers checkpoint into a Reel stage package.

  python3 tools/export/reel_export.py --checkpoint DIR --out PKG [--dtype f32|bf16|f16] [--name NAME]

Needs torch, diffusers and transformers where it runs. See docs/STAGE_PACKAGE.md, "Exporting real CogVideoX weights".
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from exporter.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
