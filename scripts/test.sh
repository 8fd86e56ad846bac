#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install what is missing, build, and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
# Synthesized preset packages go to a cache private to this run, so tests never see a stale package.
export REEL_CACHE_DIR=${REEL_CACHE_DIR:-$(mktemp -d /tmp/reel-test-cache.XXXXXX)}
ctest --test-dir "${BUILD_DIR:-build}" -j 2 --output-on-failure
