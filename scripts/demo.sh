#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install what is missing, build, and generate a demo
# video with the built-in tiny model into demo.mp4.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
build/cli/reel generate --model tiny --prompt "a red fox running through snow" \
  --frames 9 --height 64 --width 64 --steps 4 --seed 42 --out demo.mp4
ffprobe -v error -count_frames -select_streams v:0 \
  -show_entries stream=codec_name,width,height,nb_read_frames -of default=noprint_wrappers=1 demo.mp4
