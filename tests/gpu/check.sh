#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and PyTorch's LibTorch but no package registry, builds the
# runtime-only tree (stage runtime, models, profiler, their tests, the GPU benchmark) against that LibTorch, runs
# the tests (GPU ones included) and the strategy benchmark at CogVideoX shapes, and writes a results table.
# Without a GPU (or with --cpu-fallback) it runs the same tests and a small benchmark on the simulated device from
# an existing build, so the script itself is exercised by the test suite.
#
# Usage: tests/gpu/check.sh [--cpu-fallback] [--build-dir DIR] [--out DIR] [--quick]
# Before a GPU run, on a development machine: tests/gpu/prepare.sh (fills .gpu-deps/ from Debian's packages).
# Environment: REEL_GPU_BENCH_STEPS (default 1), REEL_GPU_PRESETS (default "cogvideox-5b cogvideox-2b"),
# REEL_GPU_STRATEGIES, REEL_GPU_DECODE (set and empty: no decode rows), REEL_GPU_BENCH_TIMEOUT (s per preset, default 900), REEL_GPU_TEST_TIMEOUT
# (s per test, default 600).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
MODE=gpu
BUILD=""
OUT_DIR=${OUT:-$ROOT/gpu-check-out}
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-fallback) MODE=cpu ;;
    --build-dir) BUILD=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --quick) QUICK=1 ;;
    *) echo "check.sh: unknown argument '$1'; accepted --cpu-fallback, --build-dir DIR, --out DIR, --quick" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/check.log
RESULTS=$OUT_DIR/results.md
: >"$LOG"
START=$(date +%s)
SKIPPED=()
say() { echo "[check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
skip() { SKIPPED+=("$1"); say "SKIP: $1"; }

# --- environment ---------------------------------------------------------------------------------------------
GPU_NAME=""
if [ "$MODE" = gpu ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
    say "GPU: $GPU_NAME"
  else
    say "no NVIDIA GPU answers nvidia-smi: running the CPU fallback"
    MODE=cpu
  fi
fi
TORCH_PREFIX=""
if [ "$MODE" = gpu ]; then
  PY=${PYTHON:-python3}
  TORCH_PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
  TORCH_INFO=$($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)' 2>/dev/null || true)
  if [ -z "$TORCH_PREFIX" ]; then
    say "no PyTorch with LibTorch found by $PY: running the CPU fallback"
    MODE=cpu
  else
    say "LibTorch: $TORCH_INFO at $TORCH_PREFIX"
  fi
fi
say "compilers: $(g++ --version | head -1); $(cmake --version | head -1); $(nvcc --version 2>/dev/null | tail -1)"

# --- build ---------------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
  BUILD=${BUILD:-$ROOT/build-gpu}
  DEPS=$ROOT/.gpu-deps/root/usr
  if [ ! -d "$DEPS" ]; then
    say "FAIL: $DEPS is missing: run tests/gpu/prepare.sh on a development machine and carry .gpu-deps"
    exit 1
  fi
  export LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  # PyTorch's wheels bring NCCL as a Python package (nvidia-nccl-*): headers and libnccl.so.2 without the link.
  NCCL_FLAGS=()
  NCCL_ROOT=$($PY -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
  NCCL_LIB=$(ls "$NCCL_ROOT"/lib/libnccl.so* 2>/dev/null | head -1)
  if [ ! -e "$CUDA_HOME/include/nccl.h" ] && [ -e "$NCCL_ROOT/include/nccl.h" ] && [ -n "$NCCL_LIB" ]; then
    NCCL_FLAGS=(-DNCCL_INCLUDE_DIR="$NCCL_ROOT/include" -DNCCL_LIBRARY="$NCCL_LIB")
    say "NCCL: $NCCL_LIB"
  fi
  say "configure $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREEL_RUNTIME_ONLY=ON -DREEL_WITH_CUDA=ON \
    -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$DEPS" -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES=native "${NCCL_FLAGS[@]}" >>"$LOG" 2>&1 ||
    { say "FAIL: configure (see $LOG)"; tail -40 "$LOG"; exit 1; }
  say "build"
  if ! cmake --build "$BUILD" -j "$(nproc)" -- -k 0 >>"$LOG" 2>&1; then
    say "FAIL: build (errors follow)"
    grep -E "error:|Error " "$LOG" | sort -u | head -60
    exit 1
  fi
else
  BUILD=${BUILD:-$ROOT/build}
  if [ ! -d "$BUILD/tests" ]; then
    say "FAIL: no build at $BUILD (run scripts/build.sh first)"
    exit 1
  fi
  skip "GPU build and GPU tests: no GPU (CPU fallback on the simulated device from $BUILD)"
fi
say "build ready: $BUILD"
if [ "$MODE" = gpu ] && [ -x "$BUILD/tests/runtime_memory_test" ]; then
  # libstdc++ must precede libtorch (CMakeLists.txt says why); the first libraries a test binary asks for:
  needed=$(readelf -d "$BUILD/tests/runtime_memory_test" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  say "runtime_memory_test needs, in order: $needed"
  case "$needed" in libstdc++*) ;; *) say "WARNING: libstdc++ is not first: std::filesystem calls may bind to libtorch's" ;; esac
fi

# --- tests ---------------------------------------------------------------------------------------------------
# The GPU tests (runtime on the device, CUDA/NVML/NCCL host code); on a GPU also the runtime's memory, VAE and
# scheduler suites, which then run against the CUDA LibTorch. Cases that need a GPU skip on the fallback.
TEST_REGEX="GpuRuntime|CudaHost|Nvml|Nccl"
[ "$MODE" = gpu ] && TEST_REGEX="$TEST_REGEX|RuntimeMemory|VaeDecode|Scheduler|Manifest"
say "tests matching $TEST_REGEX"
if [ "$MODE" = gpu ]; then
  ctest --test-dir "$BUILD" -j "$(nproc)" --timeout "${REEL_GPU_TEST_TIMEOUT:-600}" -R "$TEST_REGEX" >"$OUT_DIR/ctest.log" 2>&1
  TEST_RC=$?
else
  # The test binaries directly: a nested ctest would overwrite the log of the ctest run this fallback is part of.
  TEST_RC=0
  : >"$OUT_DIR/ctest.log"
  for t in gpu_runtime_test gpu_host_test; do
    if [ ! -x "$BUILD/tests/$t" ]; then
      skip "test: $t was not built (no CUDA toolkit here)"
      continue
    fi
    "$BUILD/tests/$t" >>"$OUT_DIR/ctest.log" 2>&1 || TEST_RC=1
  done
  passed=$(grep -c "^\[       OK \]" "$OUT_DIR/ctest.log")
  failed=$(grep -c "^\[  FAILED  \] [A-Za-z]*\." "$OUT_DIR/ctest.log")
  echo "$passed tests passed, $failed tests failed (gtest, run directly)" >>"$OUT_DIR/ctest.log"
fi
grep -E "tests passed|tests failed|\*\*\*Failed|Not Run|\(Failed\)|Timeout" "$OUT_DIR/ctest.log" | tee -a "$LOG"
# What skipped, and why: the line after each GTEST_SKIP's "file:line: Skipped".
LOGS=("$OUT_DIR/ctest.log")
[ "$MODE" = gpu ] && LOGS+=("$BUILD/Testing/Temporary/LastTest.log")
mapfile -t WHY < <(grep -h -A1 ": Skipped$" "${LOGS[@]}" 2>/dev/null |
  grep -v ": Skipped$\|^--$" | sort -u | head -20)
for why in "${WHY[@]}"; do skip "test: $why"; done

# --- benchmark -----------------------------------------------------------------------------------------------
BENCH=$BUILD/bench/reel_gpu_bench
if [ ! -x "$BENCH" ]; then
  skip "strategy benchmark: $BENCH was not built"
else
  if [ "$MODE" = gpu ] && [ "$QUICK" = 0 ]; then
    read -r BF BH BW <<<"${REEL_GPU_BENCH_SHAPE:-49 480 720}"
    for preset in ${REEL_GPU_PRESETS:-cogvideox-5b cogvideox-2b}; do
      say "benchmark $preset ${BF}x${BH}x${BW} bf16"
      timeout "${REEL_GPU_BENCH_TIMEOUT:-900}" "$BENCH" --preset "$preset" --device cuda:0 --frames "$BF" \
        --height "$BH" --width "$BW" --dtype bf16 --steps "${REEL_GPU_BENCH_STEPS:-1}" \
        --strategies "${REEL_GPU_STRATEGIES:-none,block:4,block:2,sequential}" \
        --decode "${REEL_GPU_DECODE-plain,slicing+tiling=256}" \
        --json "$OUT_DIR/bench-$preset.json" --markdown "$OUT_DIR/bench-$preset.md" >>"$LOG" 2>&1 ||
        say "FAIL: benchmark $preset (see $LOG)"
      tail -3 "$LOG"
    done
  else
    [ "$MODE" = gpu ] || skip "benchmark at 49x480x720 on a GPU: no GPU (ran tiny on the simulated device instead)"
    say "benchmark tiny 9x64x64 on the simulated device"
    "$BENCH" --preset tiny --device cpu --frames 9 --height 64 --width 64 --steps 2 --threads 2 \
      --strategies "none,block:1,sequential" --decode "plain,slicing+tiling=32" --json "$OUT_DIR/bench-tiny.json" \
      --markdown "$OUT_DIR/bench-tiny.md" >>"$LOG" 2>&1 || say "FAIL: benchmark tiny (see $LOG)"
  fi
fi

# --- results -------------------------------------------------------------------------------------------------
{
  echo "# GPU check results"
  echo
  echo "- machine: ${GPU_NAME:-no GPU (CPU fallback, simulated device)}"
  echo "- mode: $MODE; elapsed $(($(date +%s) - START)) s"
  echo "- tests: $(grep -E 'tests passed' "$OUT_DIR/ctest.log" || echo 'no summary')"
  grep -E "\(Failed\)|\*\*\*Failed|Timeout" "$OUT_DIR/ctest.log" | sed 's/^/  - failed: /' || true
  for f in "$OUT_DIR"/bench-*.md; do [ -f "$f" ] && { echo; cat "$f"; }; done
  if [ ${#SKIPPED[@]} -gt 0 ]; then
    echo
    echo "Skipped:"
    for s in "${SKIPPED[@]}"; do echo "- $s"; done
  fi
} >"$RESULTS"
cat "$RESULTS"
say "done in $(($(date +%s) - START)) s (tests rc $TEST_RC)"
[ "$TEST_RC" = 0 ] && [ -s "$OUT_DIR/bench-tiny.json" -o "$MODE" = gpu ]
