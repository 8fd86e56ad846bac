#!/usr/bin/env bash
# Prints docs/FUZZING.md's table of inputs and what Reel answers them, from real runs: each corpus file goes
# through its fuzz target once with REEL_FUZZ_EXPLAIN=1 (fuzz/fuzz_check.h), which prints the target's verdict.
#   fuzz/error_table.sh [--build-dir DIR]      (default build-fuzz; fuzz/run.sh builds it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
[ "${1:-}" = --build-dir ] && build=$2
echo "| target | input | verdict | what Reel says |"
echo "|---|---|---|---|"
for t in manifest job_request tensor_stream metrics_http; do
  for f in "$root/fuzz/corpus/$t"/*; do
    line=$(REEL_FUZZ_EXPLAIN=1 "$build/fuzz/${t}_fuzzer" "$f" 2>&1 >/dev/null | grep -m1 '^REEL_FUZZ_RESULT' || true)
    [ -n "$line" ] || line=$'REEL_FUZZ_RESULT\tnot parsed\t(the bytes are not a message of the target\'s input type)'
    verdict=$(cut -f2 <<<"$line")
    text=$(cut -f3- <<<"$line" | sed 's/|/\\|/g; s/`/'"'"'/g')
    echo "| $t | \`$(basename "$f")\` | $verdict | \`$text\` |"
  done
done
