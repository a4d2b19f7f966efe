#!/usr/bin/python3
"""The same-run check of issue 2: `zipnn compress` and `zipnn decompress` (all cores) against
`zstd -3 -T1` and `zstd -d -T1` on one 256 MiB BF16 .safetensors file generated from the corpus by
tools/fs_bench/make_model.py, input and output on tmpfs (/dev/shm). Best wall time of --runs
runs each, each writing a new output file; every output is compared with the original."""

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best(cmd, runs, output):
    """Best wall time of `runs` runs of `cmd`, each writing `output` anew: the file is removed
    before each run (untimed), so that no run pays for freeing the previous run's pages."""
    times = []
    for _ in range(runs):
        if os.path.exists(output):
            os.remove(output)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=256 << 20, help="model size in bytes")
    ap.add_argument("--zipnn", default=os.path.join(REPO, "build/tools/zipnn"))
    a = ap.parse_args()
    if shutil.which("zstd") is None:
        sys.exit("cli_bench: needs the zstd command (apt-get install -y zstd)")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="zipnn-cli-bench.") as work:
        model = os.path.join(work, "model.safetensors")
        # /usr/bin/python3: Debian's, which has numpy (a python3 earlier on PATH may not).
        subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tools/fs_bench/make_model.py"), model,
                        "--size", str(a.size)], check=True, stdout=subprocess.DEVNULL)
        size = os.path.getsize(model)
        znn, zst, out = (os.path.join(work, n) for n in ("m.znn", "m.zst", "m.out"))
        t = {}
        t["zc"] = best([a.zipnn, "compress", "-q", model, "-o", znn], a.runs, znn)
        t["zd"] = best([a.zipnn, "decompress", "-q", znn, "-o", out], a.runs, out)
        if not filecmp.cmp(model, out, shallow=False):
            sys.exit("cli_bench: zipnn round trip differs")
        t["sc"] = best(["zstd", "-3", "-T1", "-q", model, "-o", zst], a.runs, zst)
        t["sd"] = best(["zstd", "-d", "-T1", "-q", zst, "-o", out], a.runs, out)
        if not filecmp.cmp(model, out, shallow=False):
            sys.exit("cli_bench: zstd round trip differs")
        mbps = {k: size / v / 1e6 for k, v in t.items()}
        print(f"# zipnn and zstd commands on a {size >> 20} MiB BF16 .safetensors file "
              f"(tmpfs, best of {a.runs}, {os.cpu_count()} cores)\n")
        print("| | compress MB/s | decompress MB/s | size / original |\n|---|--:|--:|--:|")
        print(f"| zipnn (all cores) | {mbps['zc']:.0f} | {mbps['zd']:.0f} | "
              f"{os.path.getsize(znn) / size:.3f} |")
        print(f"| zstd -3 -T1 | {mbps['sc']:.0f} | {mbps['sd']:.0f} | "
              f"{os.path.getsize(zst) / size:.3f} |\n")
        for what, ours, theirs, target in (("compress", "zc", "sc", 4.6),
                                           ("decompress", "zd", "sd", 2.5)):
            r = t[theirs] / t[ours]
            print(f"- {'PASS' if r >= target else 'FAIL'} {what}: zipnn {r:.2f} x zstd "
                  f"(target {target} x)")


if __name__ == "__main__":
    main()
