#!/usr/bin/env bash
# Run on a development machine (Debian 12, with its package registry) before a GPU check: fetches the Debian
# packages the runtime-only build needs beyond LibTorch and unpacks them into .gpu-deps/ (git ignores it), which
# the device call carries to a GPU machine that has PyTorch's LibTorch, CMake and nvcc but no package registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEPS=.gpu-deps
PACKAGES=(
  nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  prometheus-cpp-dev libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0
  libsqlite3-dev libsqlite3-0 libgtest-dev libgmock-dev
)
rm -rf "$DEPS"
mkdir -p "$DEPS/debs"
(cd "$DEPS/debs" && apt-get download "${PACKAGES[@]}" 2>/dev/null)
for f in "$DEPS"/debs/*.deb; do dpkg -x "$f" "$DEPS/root"; done
rm -rf "$DEPS/debs" "$DEPS/root/usr/share/doc" "$DEPS/root/usr/share/lintian" "$DEPS/root/usr/lib/x86_64-linux-gnu/libsqlite3.a"
# The runtime uses prometheus-cpp's core only; its pull and push parts would need civetweb, zlib and curl there.
sed -i -e 's/set(PROMETHEUS_CPP_ENABLE_PULL ON)/set(PROMETHEUS_CPP_ENABLE_PULL OFF)/' \
       -e 's/set(PROMETHEUS_CPP_ENABLE_PUSH ON)/set(PROMETHEUS_CPP_ENABLE_PUSH OFF)/' \
  "$DEPS/root/usr/lib/x86_64-linux-gnu/cmake/prometheus-cpp/prometheus-cpp-config.cmake"
echo "prepare: $(du -sh "$DEPS" | cut -f1) in $DEPS ($(ls "$DEPS/root/usr/lib/x86_64-linux-gnu" | wc -l) library entries)"
