#!/bin/bash
# Filesystem benchmark of issue 4 (zipnnfs vs a FUSE passthrough vs squashfuse). Run as root from
# anywhere; options go to fs_bench.py (--help). Brings build/tools/passthrough_fuse up to date
# first (a no-op when it is).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ ! -f "$repo/build/CMakeCache.txt" ]]; then
  cmake -S "$repo" -B "$repo/build" >/dev/null
fi
cmake --build "$repo/build" --target passthrough_fuse -j"$(nproc)" >/dev/null
# /usr/bin/python3: Debian's, which has numpy (a python3 earlier on PATH may not).
exec /usr/bin/python3 "$repo/tools/fs_bench/fs_bench.py" "$@"
