"""`reel_export.py`: the command line around export_package. Bad input gets one line naming the input, the value and
what is accepted, and exit code 2; nothing is left at --out."""

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from .checkpoint import diffusers_components, open_checkpoint
from .errors import ExportError
from .package import ExportOptions, export_package
from .script import DTYPES

PROG = "reel_export"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage block
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Convert a CogVideoX diffusers checkpoint directory (text_encoder/, "
                "transformer/, vae/, tokenizer/ [, scheduler/]) into a Reel stage package (docs/STAGE_PACKAGE.md).")
    p.add_argument("--checkpoint", required=True, type=Path, help="diffusers checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="package directory to write (must not exist, or be empty)")
    p.add_argument("--dtype", default="f32", choices=list(DTYPES), help="weight dtype of every stage (default f32)")
    p.add_argument("--name", default=None, help="package name (default: the checkpoint directory's name)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    start = time.monotonic()

    def progress(file: str, params: int) -> None:
        print(f"{PROG}: {file} ({params:,} params)", flush=True)

    try:
        ckpt = open_checkpoint(args.checkpoint)
        text_encoder, transformer, vae = diffusers_components(ckpt, DTYPES[args.dtype])
        name = args.name if args.name is not None else ckpt.root.resolve().name
        options = ExportOptions(out=args.out, name=name, dtype=args.dtype, scheduler_config=ckpt.scheduler,
                                scheduler_source=str(ckpt.root / "scheduler" / "scheduler_config.json"),
                                on_part=progress)
        manifest = export_package(text_encoder, transformer, vae, ckpt.tokenizer_file, options)
    except ExportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    params = sum(st["params"] for st in manifest["stages"].values())
    kind = "image-to-video" if manifest["image_conditioned"] else "text-to-video"
    print(f"{PROG}: wrote {args.out} ({name}, {kind}, {args.dtype}, {params:,} params) in "
          f"{time.monotonic() - start:.1f} s")
    return 0
