#!/usr/bin/env bash
# Builds the fuzz targets in tests/fuzz with clang's libFuzzer, ASan and UBSan, seeds them with
# valid frames and containers, and runs each for SECONDS. Fails on any crash, leak, timeout or
# undefined behaviour (the reproducer is left in BUILD_DIR/artifacts). Skips, exiting 0, when
# clang++ with -fsanitize=fuzzer is not available.
#
# usage: tests/fuzz/run_fuzz.sh BUILD_DIR [SECONDS] [TARGET...]
#   BUILD_DIR  objects, binaries, the growing corpus (BUILD_DIR/corpus/<target>) and artifacts
#   SECONDS    run time per target (default 20)
#   TARGET     e.g. fuzz_frame; default: every tests/fuzz/fuzz_*.cc
# Environment: CXX_FUZZ (default clang++), FUZZ_JOBS (parallel compiles, default nproc).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,11p' "$0" >&2
  exit 2
fi
build=$(mkdir -p "$1" && cd "$1" && pwd)
seconds=${2:-20}
shift $(($# < 2 ? $# : 2))
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cxx=${CXX_FUZZ:-clang++}
njobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "run_fuzz: SKIPPED: $cxx not found (install clang for libFuzzer)"
  exit 0
fi
probe="$build/probe"
mkdir -p "$probe"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  >"$probe/probe.cc"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/probe.cc" -o "$probe/probe" \
  >"$probe/log" 2>&1; then
  echo "run_fuzz: SKIPPED: $cxx cannot link -fsanitize=fuzzer,address,undefined:"
  sed 's/^/  /' "$probe/log" | head -5
  exit 0
fi

# shellcheck disable=SC2054  # the commas belong to -fsanitize=
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined
  -fno-sanitize-recover=undefined -I"$src")
libs=(-lzstd -lxxhash -lpthread)

have_container=0
if [[ -f "$src/codec/container.h" ]] && grep -q 'ParseContainer(std::span<const uint8_t>' \
  "$src/codec/container.h"; then
  have_container=1
  flags+=(-DZIPNN_FUZZ_CONTAINER)
fi

# Codec objects, instrumented for coverage; rebuilt when a codec source or header is newer.
objdir="$build/obj"
mkdir -p "$objdir"
# shellcheck disable=SC2012  # codec headers have plain names
newest_header=$(ls -t "$src"/codec/*.h | head -1)
pids=()
objs=()
for cc in "$src"/codec/*.cc; do
  obj="$objdir/$(basename "${cc%.cc}").o"
  objs+=("$obj")
  if [[ ! -f $obj || $cc -nt $obj || $newest_header -nt $obj || $0 -nt $obj ]]; then
    while (($(jobs -rp | wc -l) >= njobs)); do wait -n; done
    echo "run_fuzz: compiling codec/$(basename "$cc")"
    # -Werror as in the main build: this is where the codec meets clang, whose warnings differ.
    "$cxx" "${flags[@]}" -Wall -Wextra -Werror -fsanitize=fuzzer-no-link -c "$cc" -o "$obj" &
    pids+=($!)
  fi
done
for p in "${pids[@]}"; do wait "$p"; done

# Seeds: valid frames, chunks and containers from the codec itself.
"$cxx" "${flags[@]}" -fsanitize=fuzzer-no-link "$src/tests/fuzz/make_seeds.cc" "${objs[@]}" \
  "${libs[@]}" -o "$build/make_seeds"
rm -rf "$build/seeds"
"$build/make_seeds" "$build/seeds"

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  targets=()
  for f in "$src"/tests/fuzz/fuzz_*.cc; do targets+=("$(basename "${f%.cc}")"); done
fi

status=0
for t in "${targets[@]}"; do
  if [[ $t == fuzz_container && $have_container == 0 ]]; then
    echo "run_fuzz: $t SKIPPED: codec/container.h has no ParseContainer"
    continue
  fi
  echo "run_fuzz: building $t"
  "$cxx" "${flags[@]}" -fsanitize=fuzzer "$src/tests/fuzz/$t.cc" "${objs[@]}" "${libs[@]}" \
    -o "$build/$t"
  seeds="$build/seeds/${t#fuzz_}"
  corpus="$build/corpus/$t"
  mkdir -p "$corpus" "$build/artifacts"
  echo "run_fuzz: running $t for ${seconds}s"
  if ! "$build/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" "$corpus" "$seeds" \
    >"$build/$t.log" 2>&1; then
    echo "run_fuzz: $t FAILED; log $build/$t.log, reproducer in $build/artifacts:"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written|deadly signal' "$build/$t.log" | head -20
    status=1
  else
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$build/$t.log" |
      sed "s/^/run_fuzz: $t /"
  fi
done
exit $status
