#!/usr/bin/env bash
# Run on a development machine (Debian 12, with its package registry) before a GPU check: fetches the Debian
# packages the runtime-only build needs beyond LibTorch and unpacks them into .gpu-deps/ (git ignores it), which
# the device call carries to a GPU machine that has PyTorch's LibTorch, CMake and nvcc but no package registry.
# Also diffusers' wheel into .gpu-deps/wheels/ for the check's comparison against diffusers (the GPU machine's
# Python has torch and transformers, not diffusers). diffusers 0.42.1 is pure Python; of what it requires, the GPU
# machine already has huggingface-hub 1.33 (>= 1.32), safetensors 0.8.0, numpy, regex, requests, filelock and
# Pillow, and importlib_metadata is only imported on Python < 3.8 (that machine: 3.12), so it travels alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEPS=.gpu-deps
PACKAGES=(
  nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0
  libsqlite3-dev libsqlite3-0 libgtest-dev libgmock-dev
)
WHEELS=(diffusers==0.42.1)
PY=${REEL_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
rm -rf "$DEPS"
mkdir -p "$DEPS/debs" "$DEPS/wheels"
# For the GPU machine's Python (3.12, x86-64), whatever this machine runs.
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEPS/wheels" "${WHEELS[@]}"
(cd "$DEPS/debs" && apt-get download "${PACKAGES[@]}" 2>/dev/null)
for f in "$DEPS"/debs/*.deb; do dpkg -x "$f" "$DEPS/root"; done
rm -rf "$DEPS/debs" "$DEPS/root/usr/share/doc" "$DEPS/root/usr/share/lintian" "$DEPS/root/usr/lib/x86_64-linux-gnu/libsqlite3.a"
# The runtime uses prometheus-cpp's core only; its pull and push parts would need civetweb, zlib and curl there.
sed -i -e 's/set(PROMETHEUS_CPP_ENABLE_PULL ON)/set(PROMETHEUS_CPP_ENABLE_PULL OFF)/' \
       -e 's/set(PROMETHEUS_CPP_ENABLE_PUSH ON)/set(PROMETHEUS_CPP_ENABLE_PUSH OFF)/' \
  "$DEPS/root/usr/lib/x86_64-linux-gnu/cmake/prometheus-cpp/prometheus-cpp-config.cmake"
echo "prepare: $(du -sh "$DEPS" | cut -f1) in $DEPS ($(ls "$DEPS/root/usr/lib/x86_64-linux-gnu" | wc -l) library entries;" \
  "wheels: $(ls "$DEPS/wheels" | tr '\n' ' '))"
