#!/usr/bin/env bash
# Installs what Reel needs from Debian 12's packages, only what is missing. Run as root.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev python3-torch libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev sqlite3
  libavcodec-dev libavformat-dev libswscale-dev libavutil-dev ffmpeg
  libxxhash-dev sentencepiece util-linux prometheus
  libssl-dev openssl
  clang libclang-rt-14-dev
  docker-compose python3-kubernetes python3-yaml
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install_deps: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "install_deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's LibTorch calls whichever BLAS the libblas.so.3 alternative names. The reference BLAS is ~30x slower
# than OpenBLAS; the OpenMP build of OpenBLAS honours LibTorch's intra-op thread count (the pthread build does not).
openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp
if [ "$(id -u)" -eq 0 ] && [ -e "$openblas/libblas.so.3" ]; then
  current=$(readlink -f /etc/alternatives/libblas.so.3-x86_64-linux-gnu 2>/dev/null || true)
  if [ "$current" != "$openblas/libblas.so.3" ]; then
    update-alternatives --quiet --set libblas.so.3-x86_64-linux-gnu "$openblas/libblas.so.3"
    [ -e "$openblas/liblapack.so.3" ] &&
      update-alternatives --quiet --set liblapack.so.3-x86_64-linux-gnu "$openblas/liblapack.so.3" || true
  fi
fi
