#!/usr/bin/env bash
# The main job's demo: a store and a mount. Imports the real-weights corpus (or a generated model when
# it is absent) into a new store, mounts it, checks every file byte for byte through the mount, and
# prints the store's savings, read speeds through the mount and the daemon's live statistics.
# Usage: tools/demo.sh [BUILD_DIR]   (default: build). Run as root, or as a user allowed to use FUSE.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
zipnn=$build/tools/zipnn
zipnnfs=$build/tools/zipnnfs
corpus=${ZIPNN_CORPUS:-$here/../shared/corpus}

work=$(mktemp -d "${TMPDIR:-/tmp}/zipnnfs-demo.XXXXXX")
store=$work/store
mnt=$work/mnt
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
  fi
  # The daemon holds the store's lock until it has exited.
  if [ -e "$store/LOCK" ]; then flock "$store/LOCK" true; fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

if [ -d "$corpus" ] && [ -n "$(find "$corpus" -name '*.safetensors' -print -quit)" ]; then
  src=$(cd "$corpus" && pwd)
  echo "== demo: the real-weights corpus in $src"
else
  src=$work/models
  mkdir -p "$src"
  echo "== demo: no corpus at $corpus; generating synthetic models in $src"
  "$zipnn" synth "$src/synthetic-bf16.safetensors" --dtype bf16 --layers 4 --dim 1024
  "$zipnn" synth "$src/synthetic-f32.safetensors" --dtype f32 --layers 2 --dim 1024 --seed 2
fi
name=$(basename "$src")

mkdir -p "$mnt"
"$zipnnfs" init "$store"
echo "== import into a new store"
"$zipnnfs" import "$store" "$src" --to /models
echo
"$zipnnfs" stats "$store" | tail -n 3

echo
echo "== mount"
"$zipnnfs" "$store" "$mnt" -o cache_size=256M
mount | grep -F " $mnt " || true

echo
echo "== read speed, all files once (mount: first read decodes every chunk)"
bytes=$(cd "$src" && find . -type f -print0 | du -cb --files0-from=- | tail -n 1 | cut -f1)
speed() {  # DIR LABEL
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$1" && find . -type f -print0 | xargs -0 -r cat >/dev/null)
  t1=$(date +%s.%N)
  awk -v b="$bytes" -v a="$t0" -v z="$t1" -v l="$2" \
    'BEGIN { printf "%-28s %8.1f MB in %6.3f s = %7.1f MB/s\n", l, b / 1e6, z - a, b / 1e6 / (z - a) }'
}
speed "$src" "original files (page cache)"
speed "$mnt/models/$name" "through zipnnfs, first read"
speed "$mnt/models/$name" "through zipnnfs, again"  # kernel page cache

echo
echo "== every file through the mount equals its original (sha256)"
(cd "$src" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) >"$work/original.sha256"
(cd "$mnt/models/$name" && sha256sum --quiet -c "$work/original.sha256")
echo "ok: $(wc -l <"$work/original.sha256") files byte-exact"

echo
echo "== live statistics of the daemon (zipnnfs stats $mnt)"
"$zipnnfs" stats "$mnt"

echo
echo "== unmount"
fusermount3 -u "$mnt"
flock "$store/LOCK" true
echo "ok: unmounted; store verified clean:"
"$zipnnfs" fsck "$store"
