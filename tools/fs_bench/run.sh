#!/bin/bash
# Filesystem benchmark of issue 4 (zipnnfs vs a FUSE passthrough vs squashfuse). Run as root from
# anywhere; options go to fs_bench.py (--help). Builds the passthrough first if it is missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ ! -x "$repo/build/tools/passthrough_fuse" ]]; then
  cmake -S "$repo" -B "$repo/build" >/dev/null
  cmake --build "$repo/build" --target passthrough_fuse -j"$(nproc)"
fi
# /usr/bin/python3: Debian's, which has numpy (a python3 earlier on PATH may not).
exec /usr/bin/python3 "$repo/tools/fs_bench/fs_bench.py" "$@"
