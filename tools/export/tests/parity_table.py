#!/usr/bin/env python3
"""Prints the parity table of docs/STAGE_PACKAGE.md from what the export tests measured (the JSON lines file they
write to REEL_PARITY_REPORT; ctest's export_tool_test writes build/parity.jsonl): per stage, model, dtype and
reference, the largest error over the test's inputs.

Usage: parity_table.py [build/parity.jsonl]"""

import json
import sys


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "build/parity.jsonl"
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except OSError as e:
        print(f"parity_table.py: {path}: {e.strerror}; run ctest -R export_tool_test first", file=sys.stderr)
        return 2
    worst = {}
    for r in rows:
        key = (r["stage"], r["model"], r["dtype"], r["against"])
        w = worst.setdefault(key, dict(r, n=0))
        w["n"] += 1
        w["max_abs"] = max(w["max_abs"], r["max_abs"])
        w["rel"] = max(w["rel"], r["rel"])
        if r.get("psnr") is not None:
            w["psnr"] = min(w["psnr"] if w.get("psnr") is not None else float("inf"), r["psnr"])
    order = {"text_encoder": 0, "denoiser": 1, "vae_encoder": 2, "vae_decoder": 3, "pipeline": 4}
    print("| stage | model | dtype | against | inputs | max abs error | relative (of max \\|ref\\|) | PSNR (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    dtypes = {"f32": 0, "bf16": 1, "f16": 2}
    for key in sorted(worst, key=lambda k: (order.get(k[0], 9), dtypes.get(k[2], 9), k[1], k[3])):
        w = worst[key]
        psnr = f"{w['psnr']:.1f}" if w.get("psnr") is not None else ""
        print(f"| {w['stage']} | {w['model']} | {w['dtype']} | {w['against']} | {w['n']} | {w['max_abs']:.3g} | "
              f"{w['rel']:.2e} | {psnr} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
