#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install what is missing, build, then generate a demo video
# with the built-in tiny model the way Reel is meant to run: `reel serve` (a coordinator and two local workers)
# and `reel submit --wait`, into demo.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh

data=$(mktemp -d)
build/cli/reel serve --workers 2 --listen 127.0.0.1:0 --data "$data" &
serve=$!
trap 'kill $serve 2>/dev/null; wait $serve 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 600); do [ -s "$data/coordinator.address" ] && break; sleep 0.1; done
address=$(cat "$data/coordinator.address")
# The workers register and load their stages; submit waits in the queue meanwhile.
build/cli/reel submit --coordinator "$address" --model tiny --prompt "a red fox running through snow" \
  --frames 9 --height 64 --width 64 --steps 4 --seed 42 --wait --out demo.mp4
build/cli/reel job job-1 --coordinator "$address"
ffprobe -v error -count_frames -select_streams v:0 \
  -show_entries stream=codec_name,width,height,nb_read_frames -of default=noprint_wrappers=1 demo.mp4
