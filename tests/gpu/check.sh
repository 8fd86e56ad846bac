#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and PyTorch's LibTorch but no package registry, builds the
# runtime-only tree (stage runtime, models, profiler, their tests, the GPU benchmark) against that LibTorch, runs
# the tests (GPU ones included), diffusers' CogVideoXTransformer3DModel against Reel's denoiser with the same
# weights and inputs (tests/gpu/diffusers_compare.py), the strategy benchmark at CogVideoX shapes and the VAE
# decode, records every test process's exit status, and writes a results table; all within a time budget.
# Without a GPU (or with --cpu-fallback) it runs the same tests, a small benchmark and the diffusers comparison at
# a tiny size (f32) on the simulated device from an existing build, so the script itself is exercised by the suite.
#
# Usage: tests/gpu/check.sh [--cpu-fallback] [--build-dir DIR] [--out DIR] [--quick]
# Before a GPU run, on a development machine: tests/gpu/prepare.sh (fills .gpu-deps/: Debian's packages, and
# diffusers' wheel for the comparison). docs/GPU.md lists the environment knobs (REEL_GPU_*), among them
# REEL_GPU_BUDGET (seconds for the whole check, default 480): a step that no longer fits is skipped, saying so.
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
EXITS=()  # "NAME=RC:W" of the benchmark processes (W: 1 if it wrote its results), for the exit-status table
say() { echo "[check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
skip() { SKIPPED+=("$1"); say "SKIP: $1"; }
# The time budget (GPU mode): what is left of it, and whether a step needing about N seconds still fits.
BUDGET=${REEL_GPU_BUDGET:-480}
left() { echo $((BUDGET - ($(date +%s) - START))); }
fits() {  # fits "what" SECONDS
  local l
  l=$(left)
  [ "$MODE" = cpu ] || [ "$l" -ge "$2" ] && return 0
  skip "$1: $l s of the ${BUDGET} s budget left, it needs about $2 s (REEL_GPU_BUDGET)"
  return 1
}
# A step's time limit: its own, or what is left of the budget less 10 s for the results, whichever is less.
limit() { local l=$(($(left) - 10)); [ "$MODE" = cpu ] && l=$1; [ "$l" -lt "$1" ] && echo "$((l > 1 ? l : 1))" || echo "$1"; }

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
  # cmake/python_env.cmake takes LibTorch from the torch that REEL_PYTHON imports: this machine's Python.
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DREEL_RUNTIME_ONLY=ON -DREEL_WITH_CUDA=ON \
    -DREEL_PYTHON="$(command -v "$PY")" \
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
# Every test process's exit status is kept (exit_status.py): a process that passed its tests and then crashed on
# the way out is the exit crash of docs/GPU.md.
TEST_REGEX="GpuRuntime|CudaHost|Nvml|Nccl"
[ "$MODE" = gpu ] && TEST_REGEX="$TEST_REGEX|RuntimeMemory|VaeDecode|Scheduler|Manifest"
say "tests matching $TEST_REGEX"
DIRECT=()
if [ "$MODE" = gpu ]; then
  timeout "$(limit "${REEL_GPU_TESTS_TIMEOUT:-240}")" ctest --test-dir "$BUILD" -j "$(nproc)" \
    --timeout "${REEL_GPU_TEST_TIMEOUT:-600}" -R "$TEST_REGEX" >"$OUT_DIR/ctest.log" 2>&1
  TEST_RC=$?
  [ "$TEST_RC" = 124 ] && say "FAIL: the tests ran past the budget (see $OUT_DIR/ctest.log)"
else
  # The test binaries directly: a nested ctest would overwrite the log of the ctest run this fallback is part of.
  TEST_RC=0
  : >"$OUT_DIR/ctest.log"
  for t in gpu_runtime_test gpu_host_test; do
    if [ ! -x "$BUILD/tests/$t" ]; then
      skip "test: $t was not built (no CUDA toolkit here)"
      continue
    fi
    "$BUILD/tests/$t" >"$OUT_DIR/$t.log" 2>&1
    rc=$?
    cat "$OUT_DIR/$t.log" >>"$OUT_DIR/ctest.log"
    DIRECT+=("$t=$rc:$OUT_DIR/$t.log")
    [ "$rc" = 0 ] || TEST_RC=1
  done
  passed=$(grep -c "^\[       OK \]" "$OUT_DIR/ctest.log")
  failed=$(grep -c "^\[  FAILED  \] [A-Za-z]*\." "$OUT_DIR/ctest.log")
  echo "$passed tests passed, $failed tests failed (gtest, run directly)" >>"$OUT_DIR/ctest.log"
fi
grep -E "tests passed|tests failed|\*\*\*Failed|\*\*\*Exception|Not Run|\(Failed\)|Timeout" "$OUT_DIR/ctest.log" |
  head -40 | tee -a "$LOG"
# What skipped, and why: the line after each GTEST_SKIP's "file:line: Skipped".
LOGS=("$OUT_DIR/ctest.log")
[ "$MODE" = gpu ] && LOGS+=("$BUILD/Testing/Temporary/LastTest.log")
mapfile -t WHY < <(grep -h -A1 ": Skipped$" "${LOGS[@]}" 2>/dev/null |
  grep -v ": Skipped$\|^--$" | sort -u | head -20)
for why in "${WHY[@]}"; do skip "test: $why"; done

# --- diffusers against Reel ----------------------------------------------------------------------------------
# tests/gpu/diffusers_compare.py: CogVideoXTransformer3DModel (5B config, seeded random weights, its default
# attention processor) and Reel's denoiser exported from the same module, on the same inputs: step time, peak
# memory, output agreement. On the fallback: the tiny config in f32 on the CPU. Exit 77 means skipped.
BENCH=$BUILD/bench/reel_gpu_bench
GPU_DEVICE=${REEL_GPU_DEVICE:-cuda:0}  # the benchmark's and the comparison's device (cpu: a dry run of this path)
COMPARE_RC=""
PKG5B=""
read -r BF BH BW <<<"${REEL_GPU_BENCH_SHAPE:-49 480 720}"
CMP_WORK=""
if [ -n "${REEL_GPU_COMPARE-1}" ]; then
  if [ "$MODE" = gpu ]; then
    CPY=$PY
  else
    CPY=$(sed -n 's/^REEL_PYTHON:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
    [ -x "$CPY" ] || CPY=$ROOT/.venv/bin/python
    [ -x "$CPY" ] || CPY=python3
  fi
  if [ "$MODE" = gpu ] && ! "$CPY" -c 'import diffusers' 2>/dev/null; then
    # No registry there: diffusers travels as a wheel in .gpu-deps/wheels (tests/gpu/prepare.sh; a pure-Python
    # wheel whose other requirements the machine's transformers already brought).
    SITE=${TMPDIR:-/tmp}/reel-gpu-site
    rm -rf "$SITE"
    shopt -s nullglob
    WHEELS=("$ROOT"/.gpu-deps/wheels/*.whl)
    shopt -u nullglob
    if [ ${#WHEELS[@]} -gt 0 ]; then
      "$CPY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${WHEELS[@]}" \
        >>"$LOG" 2>&1 || for w in "${WHEELS[@]}"; do "$CPY" -m zipfile -e "$w" "$SITE"; done
      export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
      say "installed $(basename -a "${WHEELS[@]}" | tr '\n' ' ')into $SITE"
    fi
  fi
  if [ ! -x "$BENCH" ]; then
    skip "diffusers comparison: $BENCH was not built"
  elif [ "$MODE" = gpu ] && [ "$QUICK" = 0 ] && fits "diffusers comparison at 5B" "${REEL_GPU_COMPARE_NEED:-150}"; then
    CMP_WORK=${TMPDIR:-/tmp}/reel-diffusers-compare
    CMP_ARGS=(--device "$GPU_DEVICE" --dtype bf16 --frames "$BF" --height "$BH" --width "$BW" --warmup 1
              --steps "${REEL_GPU_COMPARE_STEPS:-3}" --keep-package)
    [ -n "${REEL_GPU_COMPARE_LAYERS:-}" ] && CMP_ARGS+=(--layers "$REEL_GPU_COMPARE_LAYERS")
    CMP_ARGS+=(${REEL_GPU_COMPARE_ARGS:-})  # e.g. "--size tiny --dtype f32" (later arguments win)
  elif [ "$MODE" = cpu ] || [ "$QUICK" = 1 ]; then
    CMP_WORK=$OUT_DIR/compare-work
    CMP_ARGS=(--size tiny --device "$([ "$MODE" = gpu ] && echo "$GPU_DEVICE" || echo cpu)" --dtype f32 --warmup 1 --steps 2)
    [ "$MODE" = cpu ] && CMP_ARGS+=(--threads "${REEL_GPU_CPU_THREADS:-2}")
  fi
  if [ -n "$CMP_WORK" ]; then
    say "diffusers comparison: $CPY tests/gpu/diffusers_compare.py ${CMP_ARGS[*]}"
    rm -f "$OUT_DIR/compare.json" "$OUT_DIR/compare.md"
    # The exporter asks reel_model_source (built beside the runtime) for every part's TorchScript source.
    MODEL_SOURCE=()
    [ -x "$BUILD/models/reel_model_source" ] && MODEL_SOURCE=(REEL_MODEL_SOURCE="$BUILD/models/reel_model_source")
    CMP_LIMIT=$(limit "${REEL_GPU_COMPARE_TIMEOUT:-400}")
    env REEL_BUILD_DIR="$BUILD" "${MODEL_SOURCE[@]}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
      timeout "$CMP_LIMIT" "$CPY" "$ROOT/tests/gpu/diffusers_compare.py" --bench "$BENCH" --work "$CMP_WORK" \
      --timeout "$CMP_LIMIT" --json "$OUT_DIR/compare.json" --markdown "$OUT_DIR/compare.md" "${CMP_ARGS[@]}" \
      >"$OUT_DIR/compare.log" 2>&1
    COMPARE_RC=$?
    cat "$OUT_DIR/compare.log" >>"$LOG"
    grep "^\[compare\]" "$OUT_DIR/compare.log" | tail -4
    rc_reel=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("reel_exit_status", ""))' \
      "$OUT_DIR/compare.json" 2>/dev/null)
    [ -n "$rc_reel" ] && EXITS+=("reel_gpu_bench --denoise-inputs (comparison)=$rc_reel:1")
    case "$COMPARE_RC" in
      0) say "diffusers comparison: outputs agree" ;;
      77) skip "diffusers comparison: $(sed -n 's/^\[compare\] SKIP: //p' "$OUT_DIR/compare.log" | head -1)"
          COMPARE_RC="" ;;
      124) say "FAIL: diffusers comparison ran past its $CMP_LIMIT s (see $OUT_DIR/compare.log)" ;;
      *) say "FAIL: diffusers comparison (exit $COMPARE_RC; see $OUT_DIR/compare.log)" ;;
    esac
    # The 5B strategy rows can run on the package just exported (the same architecture and source as the
    # cogvideox-5b preset, diffusers' weights) instead of synthesizing the preset again: a minute less.
    PKG5B=$(python3 -c 'import json,os,sys; j=json.load(open(sys.argv[1])); p=j.get("export",{}).get("package","")
print(p if j.get("full_5b") and os.path.isfile(os.path.join(p,"manifest.json")) else "")' "$OUT_DIR/compare.json" \
      2>/dev/null)
  fi
else
  skip "diffusers comparison: REEL_GPU_COMPARE is set and empty"
fi

# --- benchmark -----------------------------------------------------------------------------------------------
if [ ! -x "$BENCH" ]; then
  skip "strategy benchmark: $BENCH was not built"
else
  if [ "$MODE" = gpu ] && [ "$QUICK" = 0 ]; then
    PRESETS=(${REEL_GPU_PRESETS:-cogvideox-5b cogvideox-2b})
    DECODE=${REEL_GPU_DECODE-plain,slicing+tiling=256}
    for i in "${!PRESETS[@]}"; do
      preset=${PRESETS[$i]}
      src=(--preset "$preset")
      decode=$DECODE
      label=$preset
      need=${REEL_GPU_BENCH_NEED:-60}
      # The exported package's VAE is a stand-in: its decode rows go to a later synthesized preset (2B and 5B
      # share CogVideoX's VAE), so the package is used only when one follows or no decode rows are asked for.
      later=("${PRESETS[@]:$((i + 1))}")
      if [ "$preset" = cogvideox-5b ] && [ -n "$PKG5B" ] && { [ -z "$DECODE" ] || [ ${#later[@]} -gt 0 ]; }; then
        src=(--model "$PKG5B")
        decode=""
        label="cogvideox-5b (the compared package: diffusers' weights, exported)"
      else
        need=${REEL_GPU_BENCH_NEED_SYNTH:-90}
      fi
      fits "benchmark $label" "$need" || continue
      say "benchmark $label ${BF}x${BH}x${BW} bf16${decode:+, decode $decode}"
      rm -f "$OUT_DIR/bench-$preset.json"
      timeout "$(limit "${REEL_GPU_BENCH_TIMEOUT:-900}")" "$BENCH" "${src[@]}" --device "$GPU_DEVICE" --frames "$BF" \
        --height "$BH" --width "$BW" --dtype bf16 --steps "${REEL_GPU_BENCH_STEPS:-1}" \
        --strategies "${REEL_GPU_STRATEGIES:-none,block:4,block:2,sequential,model}" --decode "$decode" \
        --json "$OUT_DIR/bench-$preset.json" --markdown "$OUT_DIR/bench-$preset.md" >>"$LOG" 2>&1
      rc=$?
      EXITS+=("reel_gpu_bench $preset=$rc:$([ -s "$OUT_DIR/bench-$preset.json" ] && echo 1 || echo 0)")
      [ "$rc" = 0 ] || say "FAIL: benchmark $preset (exit $rc; see $LOG)"
      [ -n "$decode" ] && [ -s "$OUT_DIR/bench-$preset.json" ] && DECODE=""  # decode rows once
      tail -3 "$LOG"
    done
  else
    [ "$MODE" = gpu ] || skip "benchmark at 49x480x720 on a GPU: no GPU (ran tiny on the simulated device instead)"
    say "benchmark tiny 9x64x64 on the simulated device"
    "$BENCH" --preset tiny --device cpu --frames 9 --height 64 --width 64 --steps 2 --threads 2 \
      --strategies "none,block:1,sequential" --decode "plain,slicing+tiling=32" --json "$OUT_DIR/bench-tiny.json" \
      --markdown "$OUT_DIR/bench-tiny.md" >>"$LOG" 2>&1
    rc=$?
    EXITS+=("reel_gpu_bench tiny=$rc:$([ -s "$OUT_DIR/bench-tiny.json" ] && echo 1 || echo 0)")
    [ "$rc" = 0 ] || say "FAIL: benchmark tiny (exit $rc; see $LOG)"
  fi
fi
[ -n "$CMP_WORK" ] && rm -rf "$CMP_WORK"  # the exported package: 11 GB at 5B

# --- sequence parallelism on the devices ---------------------------------------------------------------------
# reel_sp_denoise (bench/sp_denoise.cc) on a 2B-shaped package (2 blocks, 9x80x80: uneven shares): one process, then
# two ranks joined over loopback, on cuda:0 and cuda:1 with two GPUs or more (their all-to-alls over NCCL), or a
# group of one on cuda:0 with one GPU (NCCL joined and its all-to-all run), or two CPU ranks (Gloo) on the fallback;
# the ranks' latents against the one process's.
SP_BIN=$BUILD/bench/reel_sp_denoise
SP_RC=""
if [ "$MODE" = gpu ]; then
  PY_FOR_SP=$PY
else  # the build's Python (the project venv), whose torch reads the latents
  PY_FOR_SP=$(sed -n 's/^REEL_PYTHON:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null)
  [ -x "$PY_FOR_SP" ] || PY_FOR_SP=$ROOT/.venv/bin/python
  [ -x "$PY_FOR_SP" ] || PY_FOR_SP=python3
fi
if [ -n "${REEL_GPU_SP-1}" ] && [ -x "$SP_BIN" ] && fits "sequence-parallel denoise" 60; then
  SP_WORK=$(mktemp -d "${TMPDIR:-/tmp}/reel-sp-check.XXXXXX")
  if [ "$MODE" = gpu ]; then
    NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    if [ "$NGPU" -ge 2 ]; then SP_DEVICES=(cuda:0 cuda:1); else SP_DEVICES=(cuda:0); fi
  else
    SP_DEVICES=(cpu cpu)
  fi
  K=${#SP_DEVICES[@]}
  SP_JOB=(--package "$SP_WORK/pkg" --preset cogvideox-2b --layers 2 --frames 9 --height 80 --width 80 --steps 2
    --threads 2)
  say "sequence parallelism: 1 process, then $K rank(s) on ${SP_DEVICES[*]}"
  timeout "$(limit 120)" "$SP_BIN" "${SP_JOB[@]}" --device "${SP_DEVICES[0]}" --out "$SP_WORK/one.pt" \
    >"$SP_WORK/one.json" 2>>"$LOG"
  SP_RC=$?
  if [ "$SP_RC" = 0 ]; then
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    PIDS=()
    for r in $(seq 1 $((K - 1))); do
      timeout "$(limit 120)" "$SP_BIN" "${SP_JOB[@]}" --device "${SP_DEVICES[$r]}" --group "$r/$K@127.0.0.1:$PORT" \
        >"$SP_WORK/rank$r.json" 2>>"$LOG" &
      PIDS+=($!)
    done
    timeout "$(limit 120)" "$SP_BIN" "${SP_JOB[@]}" --device "${SP_DEVICES[0]}" --group "0/$K@127.0.0.1:$PORT" \
      --out "$SP_WORK/shared.pt" >"$SP_WORK/rank0.json" 2>>"$LOG"
    SP_RC=$?
    for p in "${PIDS[@]}"; do wait "$p" || SP_RC=1; done
  fi
  EXITS+=("reel_sp_denoise=$SP_RC:$([ -s "$SP_WORK/shared.pt" ] && echo 1 || echo 0)")
  if [ "$SP_RC" = 0 ]; then
    "$PY_FOR_SP" - "$SP_WORK" "${SP_DEVICES[*]}" >"$OUT_DIR/sequence.md" 2>>"$LOG" <<'PYEOF'
import json, sys, torch
work, devices = sys.argv[1], sys.argv[2]
one, shared = torch.load(f"{work}/one.pt"), torch.load(f"{work}/shared.pt")
rel = ((shared - one).abs().max() / one.abs().max()).item()
r0, single = (json.loads(open(f"{work}/{n}.json").read().strip().splitlines()[-1]) for n in ("rank0", "one"))
print("### Sequence parallelism (reel_sp_denoise, cogvideox-2b x2 blocks, 9x80x80, 2 guided steps)")
print()
print("| ranks | devices | backend | 1 process (s) | shared (s) | rank 0 sent | exchanges (s) | max relative difference |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {r0['size']} | {devices} | {r0['backend']} | {single['denoise_seconds']:.3f} | {r0['denoise_seconds']:.3f} | "
      f"{r0['bytes_sent'] / 2**20:.1f} MiB | {r0['exchange_seconds']:.3f} | {rel:.2e} |")
sys.exit(0 if rel < 1e-3 else 1)
PYEOF
    SP_RC=$?
    [ "$SP_RC" = 0 ] || say "FAIL: the sequence-parallel latents differ from one process's (sequence.md)"
  else
    say "FAIL: sequence-parallel denoise (exit $SP_RC; see $LOG)"
  fi
  rm -rf "$SP_WORK"
elif [ ! -x "$SP_BIN" ]; then
  skip "sequence parallelism: $SP_BIN was not built"
fi

# --- results -------------------------------------------------------------------------------------------------
EXIT_ARGS=()
if [ "$MODE" = gpu ]; then
  EXIT_ARGS=(--ctest "$OUT_DIR/ctest.log" --last-test "$BUILD/Testing/Temporary/LastTest.log")
elif [ ${#DIRECT[@]} -gt 0 ]; then
  EXIT_ARGS=(--direct "${DIRECT[@]}")
fi
[ ${#EXITS[@]} -gt 0 ] && EXIT_ARGS+=(--extra "${EXITS[@]}")
python3 "$ROOT/tests/gpu/exit_status.py" "${EXIT_ARGS[@]}" >"$OUT_DIR/exit-status.md" 2>>"$LOG" ||
  echo "exit crash: unknown (exit_status.py failed; see check.log)" >"$OUT_DIR/exit-status.md"
say "$(tail -1 "$OUT_DIR/exit-status.md")"
{
  echo "# GPU check results"
  echo
  echo "- machine: ${GPU_NAME:-no GPU (CPU fallback, simulated device)}"
  echo "- mode: $MODE; elapsed $(($(date +%s) - START)) s$([ "$MODE" = gpu ] && echo " of the ${BUDGET} s budget")"
  echo "- tests: $(grep -E 'tests passed' "$OUT_DIR/ctest.log" || echo 'no summary')"
  grep -E "\(Failed\)|\*\*\*Failed|\*\*\*Exception|Timeout" "$OUT_DIR/ctest.log" | sed 's/^/  - failed: /' || true
  echo "- $(tail -1 "$OUT_DIR/exit-status.md")"
  case "$COMPARE_RC" in
    "") echo "- diffusers comparison: not run (see Skipped)" ;;
    0) echo "- diffusers comparison: outputs agree" ;;
    *) echo "- diffusers comparison: FAILED (exit $COMPARE_RC; compare.log)" ;;
  esac
  [ -f "$OUT_DIR/compare.md" ] && { echo; cat "$OUT_DIR/compare.md"; }
  case "$SP_RC" in
    "") echo "- sequence parallelism: not run (see Skipped)" ;;
    0) echo "- sequence parallelism: the ranks' latents agree with one process's" ;;
    *) echo "- sequence parallelism: FAILED (exit $SP_RC; check.log)" ;;
  esac
  [ -f "$OUT_DIR/sequence.md" ] && { echo; cat "$OUT_DIR/sequence.md"; }
  for f in "$OUT_DIR"/bench-*.md; do [ -f "$f" ] && { echo; cat "$f"; }; done
  echo
  echo "### Exit status of every test and benchmark process"
  echo
  grep "^|" "$OUT_DIR/exit-status.md"
  if [ ${#SKIPPED[@]} -gt 0 ]; then
    echo
    echo "Skipped:"
    for s in "${SKIPPED[@]}"; do echo "- $s"; done
  fi
} >"$RESULTS"
cat "$RESULTS"
say "done in $(($(date +%s) - START)) s (tests rc $TEST_RC, comparison rc ${COMPARE_RC:-not run})"
[ "$TEST_RC" = 0 ] && [ -s "$OUT_DIR/bench-tiny.json" -o "$MODE" = gpu ] && [ "${COMPARE_RC:-0}" = 0 ] &&
  [ "${SP_RC:-0}" = 0 ]
