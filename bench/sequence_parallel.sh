#!/usr/bin/env bash
# One job's denoise on 2 processes with sequence parallelism against 1 process, the same threads per process, side by
# side in one run (issue 20's target: >= 1.6x on the 2-core machine), then the planner's predicted speedups.
# Usage: bench/sequence_parallel.sh [REPS] [THREADS] [PRESET] [LAYERS] [FRAMES HEIGHT WIDTH STEPS]
#   defaults: 3 reps, 1 thread a process, cogvideox-2b with 2 blocks, 25 frames at 240x352 (2,310 video tokens), 2 steps
# Prints a markdown table: median denoise seconds of each, their ratio, the bytes rank 0 sent, and the link as the
# coordinator measures it (the rank that spent least time in the collectives: its bytes over its seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${2:-1}
PRESET=${3:-cogvideox-2b}
LAYERS=${4:-2}
FRAMES=${5:-25}
HEIGHT=${6:-240}
WIDTH=${7:-352}
STEPS=${8:-2}
BIN=build/bench/reel_sp_denoise
WORK=${WORK:-$(mktemp -d /tmp/reel-bench-sp.XXXXXX)}
mkdir -p "$WORK"
PKG=$WORK/$PRESET-$LAYERS
[ -f "$PKG/manifest.json" ] || build/cli/reel model synth --preset "$PRESET" --layers "$LAYERS" \
  --out "$PKG" >/dev/null
JOB=(--package "$PKG" --frames "$FRAMES" --height "$HEIGHT" --width "$WIDTH" --steps "$STEPS" --threads "$THREADS")

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

one=() two=() sent=0 rates=()
for _ in $(seq "$REPS"); do
  one+=("$("$BIN" "${JOB[@]}" 2>/dev/null | field denoise_seconds)")
  p=$(port)
  "$BIN" "${JOB[@]}" --group "1/2@127.0.0.1:$p" >"$WORK/r1.json" 2>"$WORK/r1.err" &
  r0=$("$BIN" "${JOB[@]}" --group "0/2@127.0.0.1:$p" 2>"$WORK/r0.err")
  wait $! || { cat "$WORK/r1.err"; exit 1; }
  two+=("$(field denoise_seconds <<<"$r0")")
  sent=$(field bytes_sent <<<"$r0")
  r1=$(cat "$WORK/r1.json")
  rates+=("$(/usr/bin/python3 -c "import json,sys
a,b=(json.loads(x) for x in sys.argv[1:])
m=min((a,b),key=lambda r: r['exchange_seconds'])
print(m['bytes_sent']/m['exchange_seconds']/1e9, m['exchange_seconds'])" "$r0" "$r1")")
done
a=$(printf '%s\n' "${one[@]}" | median)
b=$(printf '%s\n' "${two[@]}" | median)
rate=$(printf '%s\n' "${rates[@]}" | cut -d' ' -f1 | median)
xs=$(printf '%s\n' "${rates[@]}" | cut -d' ' -f2 | median)
echo "| package | job | 1 process (s) | 2 processes (s) | speedup | rank 0 sent | exchanges (s) | link (GB/s) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '| %s x%s blocks | %sx%sx%s, %s steps, %s thread(s) each | %.2f | %.2f | %.2f | %.1f MiB | %.2f | %.2f |\n' \
  "$PRESET" "$LAYERS" "$FRAMES" "$HEIGHT" "$WIDTH" "$STEPS" "$THREADS" "$a" "$b" "$(echo "$a / $b" | bc -l)" \
  "$(echo "$sent / 1048576" | bc -l)" "$xs" "$rate"
echo "(reps: 1 process ${one[*]}; 2 processes ${two[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg))"
