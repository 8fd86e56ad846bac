#!/usr/bin/env bash
# Time and peak device memory of every memory strategy on the CPU device, side by side in one run, for the tiny
# preset and a reduced-depth cogvideox-2b package; then profiler on (trace + 10 ms sampler + report) against off.
# Usage: bench/strategies.sh [REPS] [THREADS] [ONLY]   (after scripts/build.sh). Prints markdown tables.
# ONLY (optional) keeps the cases whose name starts with it and skips the profiler section.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${2:-2}
ONLY=${3:-}
REEL=build/cli/reel
WORK=$(mktemp -d /tmp/reel-bench-strategies.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

CASES=(
  "tiny|--preset tiny|--frames 9 --height 64 --width 64 --steps 4"
  "cogvideox-2b x4 layers|--preset cogvideox-2b --layers 4|--frames 9 --height 96 --width 96 --steps 3"
)
MODES=("none" "model" "block:1" "block:2" "sequential" "none --vae-slicing" "none --vae-tiling=48")

# Prints "denoise_step_seconds peak_device_bytes wall_seconds" of one run from its report.
run() {
  local pkg=$1 job=$2 extra=$3
  # shellcheck disable=SC2086
  $REEL generate --model "$pkg" --prompt "a red fox" $job --threads "$THREADS" --out "$WORK/o.mp4" \
    --report "$WORK/r.json" --no-profile-db $extra >/dev/null 2>&1
  /usr/bin/python3 - "$WORK/r.json" <<'PY'
import json, sys, statistics
r = json.load(open(sys.argv[1]))
st = {s["stage"]: s for s in r["stages"]}
steps = st["denoiser"]["step_seconds"]
print(statistics.median(steps), max(s["peak_device_bytes"] for s in r["stages"]),
      sum(s["wall_seconds"] for s in r["stages"]))
PY
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

i=0
for c in "${CASES[@]}"; do
  IFS='|' read -r name synth job <<<"$c"
  pkg="$WORK/pkg$i"; i=$((i + 1))
  [ -n "$ONLY" ] && [[ "$name" != "$ONLY"* ]] && continue
  $REEL model synth $synth --out "$pkg" >/dev/null
  echo
  echo "### $name ($job, $THREADS threads, median of $REPS)"
  echo
  echo "| strategy | step time (s) | vs none | stages wall (s) | peak device memory (MiB) | vs none |"
  echo "|---|---|---|---|---|---|"
  declare -A step peak wall
  for r in $(seq "$REPS"); do
    for m in "${MODES[@]}"; do
      read -r s p w < <(run "$pkg" "$job" "--offload $m")
      echo "$s" >>"$WORK/step-$i-${m// /_}"; echo "$p" >"$WORK/peak-$i-${m// /_}"; echo "$w" >>"$WORK/wall-$i-${m// /_}"
    done
  done
  base_s=$(median <"$WORK/step-$i-none"); base_p=$(cat "$WORK/peak-$i-none")
  for m in "${MODES[@]}"; do
    k=${m// /_}
    s=$(median <"$WORK/step-$i-$k"); p=$(cat "$WORK/peak-$i-$k"); w=$(median <"$WORK/wall-$i-$k")
    awk -v m="$m" -v s="$s" -v bs="$base_s" -v p="$p" -v bp="$base_p" -v w="$w" \
      'BEGIN {printf "| %s | %.4f | %.3f | %.3f | %.2f | %.3f |\n", m, s, s / bs, w, p / 1048576, p / bp}'
  done
done

[ -n "$ONLY" ] && exit 0
# Profiler overhead: the same job with the trace, the 10 ms sampler and the report, against neither.
pkg="$WORK/pkg1"
IFS='|' read -r _ _ job <<<"${CASES[1]}"
for r in $(seq "$REPS"); do
  read -r s _ _ < <(run "$pkg" "$job" "--offload block:1 --sample-ms 0"); echo "$s" >>"$WORK/off"
  read -r s _ _ < <(run "$pkg" "$job" "--offload block:1 --sample-ms 10 --trace $WORK/t.json"); echo "$s" >>"$WORK/on"
done
off=$(median <"$WORK/off"); on=$(median <"$WORK/on")
echo
echo "### Profiler on vs off (cogvideox-2b x4 layers, block:1)"
echo
echo "| profiler | step time (s) | ratio |"
echo "|---|---|---|"
awk -v a="$off" -v b="$on" 'BEGIN {printf "| off (no trace, no sampler) | %.4f | 1.000 |\n| on (trace + 10 ms sampler) | %.4f | %.4f |\n", a, b, b / a}'
