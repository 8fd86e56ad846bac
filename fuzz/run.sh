#!/usr/bin/env bash
# Builds the fuzz targets (clang: libFuzzer, ASan, UBSan; no LibTorch) in a build directory of their own and runs
# each for a bounded time over its checked-in corpus. ctest runs it as `fuzz_bounded` (tests/CMakeLists.txt);
# docs/FUZZING.md has the longer runs.
#
#   fuzz/run.sh [--build-dir DIR] [--seconds N] [TARGET...]     (default: build-fuzz, 15 s, all four targets)
#
# Exit status: 0 when no target crashed, leaked or hit UB; 1 when one did (its report is printed and the input
# kept under DIR/artifacts); 77 when clang with libFuzzer is missing (ctest shows the test as skipped).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz
seconds=${REEL_FUZZ_SECONDS:-15}
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --build-dir) build=$(realpath -m "$2"); shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "fuzz/run.sh: unknown option $1 (accepted --build-dir DIR, --seconds N, target names)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(manifest job_request tensor_stream metrics_http)

# libFuzzer ships with clang's runtime libraries (Debian: clang, libclang-rt-14-dev; scripts/install_deps.sh).
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! command -v clang++ >/dev/null ||
   ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
     clang++ -x c++ - -fsanitize=fuzzer,address,undefined -o "$probe/probe" 2>"$probe/err"; then
  echo "fuzz/run.sh: skipped: clang++ with libFuzzer and the sanitizers is not available" \
       "($(head -c 200 "$probe/err" 2>/dev/null | tr '\n' ' ')); install clang and libclang-rt-14-dev"
  exit 77
fi

start=$(date +%s)
mkdir -p "$build"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DREEL_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$build/fuzz-configure.log" 2>&1 || { tail -30 "$build/fuzz-configure.log"; exit 1; }
fi
cmake --build "$build" -j "$(nproc)" -- "${targets[@]/%/_fuzzer}" >"$build/fuzz-build.log" 2>&1 ||
  { tail -50 "$build/fuzz-build.log"; exit 1; }
echo "fuzz/run.sh: built ${targets[*]} in $(( $(date +%s) - start )) s ($build)"

status=0
mkdir -p "$build/artifacts"
for t in "${targets[@]}"; do
  seeds=("$root/fuzz/corpus/$t")
  extra=()
  [ "$t" = manifest ] && seeds+=("$root/fuzz/manifests") && extra+=(-dict="$root/fuzz/manifest.dict")
  # Validating one request must not allocate hundreds of MB (a small image claiming a huge size did).
  [ "$t" = job_request ] && extra+=(-malloc_limit_mb=512)
  # New inputs go to a scratch corpus in the build directory; the checked-in seeds are only read.
  work=$build/corpus/$t
  mkdir -p "$work"
  log=$build/fuzz-$t.log
  t0=$(date +%s)
  if (cd "$build" && "$build/fuzz/${t}_fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "${extra[@]}" "$work" "${seeds[@]}") \
        >"$log" 2>&1; then
    done=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | tr -s ' \t' ' ' || true)
    echo "fuzz/run.sh: $t: ok in $(( $(date +%s) - t0 )) s: ${done:-see $log}"
  else
    status=1
    echo "fuzz/run.sh: $t: FAILED (input under $build/artifacts/, log $log):"
    grep -E 'ERROR|runtime error|fuzz property failed|SUMMARY|Test unit written|what\(\)' "$log" | head -20
  fi
done
echo "fuzz/run.sh: $( [ $status = 0 ] && echo passed || echo FAILED ) in $(( $(date +%s) - start )) s"
exit $status
