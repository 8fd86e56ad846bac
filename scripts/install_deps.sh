#!/usr/bin/env bash
# Installs what Reel needs, only what is missing: Debian 12's packages (run as root), then the project's Python
# environment (.venv, or $REEL_VENV) with PyTorch's wheel, whose LibTorch is the one Reel builds against, and the
# libraries the export tool, the parity tests and the benchmarks use (scripts/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git
  python3 python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus-cpp-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev sqlite3
  libavcodec-dev libavformat-dev libswscale-dev libavutil-dev ffmpeg
  libxxhash-dev sentencepiece util-linux prometheus
  libssl-dev openssl libmicrohttpd-dev libgloo-dev
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

# Debian's LibTorch is not used: two LibTorch builds in one process (or one build tree) clash.
for p in libtorch-dev python3-torch; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "install_deps: note: Debian's $p is installed; Reel ignores it and builds against the LibTorch in .venv" >&2
  fi
done

# The Python environment, reinstalled only when scripts/requirements.txt changed (about 5 GiB: the CUDA wheel of
# torch with its nvidia-* libraries, which also runs on a CPU-only machine; PyPI has no CPU-only wheel of it).
venv=${REEL_VENV:-$PWD/.venv}
stamp="$venv/.reel-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/requirements.txt "$stamp"; then
  echo "install_deps: setting up the Python environment in $venv (torch, diffusers, transformers; about 5 GiB)"
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
