#!/usr/bin/env bash
# Reel against diffusers itself, on the CPU, side by side in one run.
#
# For each case, diffusers' CogVideoXPipeline is built from configs with seeded random weights and saved in the
# Hub's layout (bench/diffusers_pipeline.py checkpoint), the same checkpoint is exported with tools/export into a
# Reel stage package per dtype, and then `reel generate` and diffusers' pipeline run the same text-to-video job
# (frames, size, steps, guidance, seed, prompt, dtype, intra-op threads) REPS times each, alternating (the order
# flips every rep). Prints markdown: per stage (text encode, one denoising step, VAE decode) and in total, the
# median seconds of each side and Reel / diffusers; and how far Reel's frames are from diffusers' (first rep).
# Model loading and writing the video are outside every figure on both sides.
#
# Usage: bench/reel_vs_diffusers.sh [REPS] [THREADS] [DTYPES] [CASES]
#   REPS     runs per side (default 3)
#   THREADS  intra-op threads on both sides (default 2)
#   DTYPES   space-separated, of f32 bf16 (default "f32")
#   CASES    space-separated, of tiny 2b 5b (default "tiny 2b 5b")
# Environment: REEL (default build/cli/reel), PY (default .venv/bin/python, with torch, diffusers, transformers,
#   sentencepiece), REEL_EXPORT (default tools/export/reel_export.py), WORK (keep checkpoints, packages and JSON
#   there instead of a temporary directory that is removed at exit).
# Needs a built tree (scripts/build.sh or cmake --build build --target reel) and free disk for the 2b and 5b
# checkpoints and packages: 14 GB in f32, 17 GB with bf16. On the 2-core development machine, when nothing else
# runs, the default run takes about 7 minutes (2 of them building and exporting the checkpoints, which WORK keeps
# for later runs); under other load either side can be several times slower at random: the table says the load.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${2:-2}
DTYPES=${3:-f32}
CASES=${4:-tiny 2b 5b}
REEL=${REEL:-build/cli/reel}
PY=${PY:-.venv/bin/python}
REEL_EXPORT=${REEL_EXPORT:-tools/export/reel_export.py}
HELPER=bench/diffusers_pipeline.py
if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d /tmp/reel-vs-diffusers.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT
fi

# The job of each case: frames, size and steps small enough for a 2-core machine, guidance on (CFG batch 2).
job_of() {
  case "$1" in
    tiny) echo "--frames 9 --height 64 --width 64 --steps 4 --guidance 6" ;;
    *) echo "--frames 9 --height 128 --width 128 --steps 4 --guidance 6" ;;
  esac
}
PROMPT="a red fox running through fresh snow"
SEED=42

log() { echo "[$(date +%T)] $* (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

for c in $CASES; do
  ckpt="$WORK/$c/ckpt"
  if [ ! -f "$ckpt/model_index.json" ]; then
    log "$c: building diffusers' pipeline with random weights"
    "$PY" "$HELPER" checkpoint --case "$c" --out "$ckpt" >"$WORK/$c.checkpoint.log" 2>&1 ||
      { cat "$WORK/$c.checkpoint.log" >&2; exit 1; }
  fi
  read -r -a jobv <<<"$(job_of "$c")"
  steps=$(job_of "$c" | sed 's/.*--steps \([0-9]*\).*/\1/')
  for dt in $DTYPES; do
    pkg="$WORK/$c/pkg-$dt"
    if [ ! -f "$pkg/manifest.json" ]; then
      log "$c: exporting the checkpoint ($dt)"
      "$PY" "$REEL_EXPORT" --checkpoint "$ckpt" --out "$pkg" --dtype "$dt" --name "$c-$dt" \
        >"$WORK/$c.export-$dt.log" 2>&1 ||
        { cat "$WORK/$c.export-$dt.log" >&2; exit 1; }
    fi
    # Which attention the package's denoiser blocks run (the TorchScript source is inside the .pt zip).
    if unzip -p "$pkg/denoiser/block_000.pt" '*/code/*' 2>/dev/null | grep scaled_dot_product_attention >/dev/null; then
      attention=sdpa
    else
      attention=chunked
    fi
    run="$WORK/$c/$dt"
    mkdir -p "$run"
    rm -f "$run"/reel-*.json "$run"/diffusers-*.json
    printf '{"case": "%s", "job": "%s", "dtype": "%s", "attention": "%s", "steps": %s, "threads": %s}\n' \
      "$c" "$(job_of "$c")" "$dt" "$attention" "$steps" "$THREADS" >"$run/job.json"
    for r in $(seq "$REPS"); do
      extra_reel=() extra_py=()
      if [ "$r" = 1 ]; then  # frames of the first rep, for the agreement table
        rm -rf "$run/reel-frames"
        extra_reel=(--frames-dir "$run/reel-frames")
        extra_py=(--frames-out "$run/diffusers-frames.npy")
      fi
      reel_run() {
        "$REEL" generate --model "$pkg" --prompt "$PROMPT" "${jobv[@]}" --seed $SEED --threads "$THREADS" \
          --no-profile-db --sample-ms 0 --out "$run/out.mp4" --report "$run/reel-$r.json" "${extra_reel[@]}" \
          >"$run/reel-$r.log" 2>&1 || { cat "$run/reel-$r.log" >&2; exit 1; }
      }
      py_run() {
        "$PY" "$HELPER" run --checkpoint "$ckpt" --dtype "$dt" "${jobv[@]}" --seed $SEED --threads "$THREADS" \
          --prompt "$PROMPT" --json "$run/diffusers-$r.json" "${extra_py[@]}" >"$run/diffusers-$r.log" 2>&1 ||
          { cat "$run/diffusers-$r.log" >&2; exit 1; }
      }
      log "$c $dt: rep $r of $REPS"
      if [ $((r % 2)) = 1 ]; then reel_run; py_run; else py_run; reel_run; fi
    done
  done
done

versions=$("$PY" -c 'import torch, diffusers, transformers
print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")')
tree="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+changes')"
echo "Reel $tree, $versions, $THREADS threads, $(nproc) cores, load average $LOAD_START at the start and" \
  "$(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo
"$PY" "$HELPER" table --work "$WORK"
