#!/usr/bin/env bash
# Reel's C++ runtime against a plain Python loop over the same TorchScript files (python3-torch, same LibTorch,
# same thread count), alternating runs, median of REPS. Prints a markdown table of stage seconds and the ratio.
# Usage: bench/runtime_vs_python.sh [REPS] [THREADS]   (after scripts/build.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${2:-2}
REEL=build/cli/reel
WORK=$(mktemp -d /tmp/reel-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# name | synth flags | job flags
CASES=(
  "tiny|--preset tiny|--frames 9 --height 64 --width 64 --steps 4"
  "cogvideox-2b x2 layers|--preset cogvideox-2b --layers 2|--frames 9 --height 128 --width 128 --steps 4"
  "cogvideox-5b x2 layers|--preset cogvideox-5b --layers 2|--frames 9 --height 128 --width 128 --steps 4"
)

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| package | job | stage | Reel C++ (s) | Python loop (s) | ratio |"
echo "|---|---|---|---|---|---|"
i=0
for c in "${CASES[@]}"; do
  IFS='|' read -r name synth job <<<"$c"
  pkg="$WORK/pkg$i"; i=$((i + 1))
  $REEL model synth $synth --out "$pkg" >/dev/null
  read -r -a jobv <<<"$job"
  for r in $(seq "$REPS"); do
    $REEL generate --model "$pkg" --prompt "a red fox" "${jobv[@]}" --threads "$THREADS" --no-profile-db \
      --sample-ms 0 --out "$WORK/out.mp4" --report "$WORK/report.json" >/dev/null 2>&1
    /usr/bin/python3 -c 'import json,sys; s={x["stage"]: x["wall_seconds"] for x in json.load(open(sys.argv[1]))["stages"]}
print(s["text_encoder"], s["denoiser"], s["vae_decoder"])' "$WORK/report.json" >>"$WORK/reel$i"
    /usr/bin/python3 bench/py_pipeline.py --package "$pkg" "${jobv[@]}" --threads "$THREADS" |
      /usr/bin/python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["text_encode"], t["denoise"], t["decode"])' >>"$WORK/py$i"
  done
  for col in 1 2 3 4; do
    stage=$(echo "text denoise decode total" | cut -d' ' -f$col)
    if [ "$col" = 4 ]; then
      a=$(awk '{print $1+$2+$3}' "$WORK/reel$i" | median); b=$(awk '{print $1+$2+$3}' "$WORK/py$i" | median)
    else
      a=$(awk -v c=$col '{print $c}' "$WORK/reel$i" | median); b=$(awk -v c=$col '{print $c}' "$WORK/py$i" | median)
    fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", (b > 0 ? a / b : 0)}')
    echo "| $name | $job | $stage | $a | $b | $ratio |"
  done
done
