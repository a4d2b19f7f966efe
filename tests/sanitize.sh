#!/usr/bin/env bash
# Builds the project with AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer and
# runs the test suite on it (the mount daemons the tests start are sanitized too). Fails on any
# test failure and on any sanitizer report, the daemons' included (they go to BUILD_DIR/logs,
# since a daemon's stderr is gone). Tests that cannot hold under sanitizers skip themselves (a
# deliberate null write, RSS bounds); the fuzz and fs_bench labels are left out (run_fuzz.sh
# has sanitizers of its own). Takes ~20 min on 2 cores.
#
# usage: tests/sanitize.sh BUILD_DIR [CTEST_ARGS...]   e.g. tests/sanitize.sh /tmp/asan -R FsTest
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
build=$(mkdir -p "$1" && cd "$1" && pwd)
shift
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags -DZIPNN_SANITIZED" -DCMAKE_EXE_LINKER_FLAGS="$flags" >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)"
logs="$build/logs"
rm -rf "$logs" && mkdir -p "$logs"
status=0
ASAN_OPTIONS="log_path=$logs/asan:detect_leaks=1" \
  UBSAN_OPTIONS="log_path=$logs/ubsan:print_stacktrace=1" \
  ctest --test-dir "$build" -LE "fuzz|fs_bench" --output-on-failure "$@" || status=1
if compgen -G "$logs/*" >/dev/null; then
  echo "sanitize: reports in $logs:" >&2
  for f in "$logs"/*; do
    echo "== $f" >&2
    head -40 "$f" >&2
  done
  status=1
fi
exit $status
