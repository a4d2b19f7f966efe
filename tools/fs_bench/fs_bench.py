#!/usr/bin/python3
"""Filesystem benchmark of issue 4: zipnnfs against a minimal FUSE passthrough of the raw file and
squashfuse over a zstd squashfs image, side by side on one >= 1 GiB BF16 .safetensors file, every
figure measured in the same run. Writes results.md, results.json and results.png to --out.

Run as root (mounts, /sys/class/bdi, drop_caches). Every measurement starts from a fresh mount, so
the kernel's page cache for the mount and the daemon's own caches are cold, and reads the backing
files (raw file, squashfs image, store) just before, so they are in the page cache: the VM reclaims
page cache idle for ~30 s. Mounts are unmounted on every exit, including errors and Ctrl-C.
"""

import argparse
import atexit
import json
import mmap
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "../.."))
MiB = 1 << 20
CONTENDERS = ("zipnnfs", "passthrough", "squashfuse")


def log(msg):
    print(f"[fs_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    """'256M', '1G', '4096' -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# ---------------------------------------------------------------------------------------------
# Mounts, and cleaning them up whatever happens.

ACTIVE = []  # Mount objects currently mounted (or being mounted)
READERS = []  # reader processes running; they keep a mount busy, so cleanup stops them first


class Mount:
    """One FUSE daemon run in the foreground (-f) as a child in its own session, so a Ctrl-C at
    the terminal reaches only this script, which then unmounts in order."""

    def __init__(self, name, argv, mnt, rel_path, read_ahead_kb=None, timeout=30.0):
        self.name, self.argv, self.mnt, self.rel_path = name, argv, mnt, rel_path
        self.read_ahead_kb = read_ahead_kb  # set from outside after mounting (None: leave it)
        self.timeout = timeout
        self.proc = None
        self.stderr_path = os.path.join(os.path.dirname(mnt), f"{name}.stderr")

    @property
    def path(self):
        return os.path.join(self.mnt, self.rel_path)

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        if is_mountpoint(self.mnt):
            unmount(self.mnt)
        ACTIVE.append(self)
        with open(self.stderr_path, "ab") as err:
            self.err_start = err.tell()  # error messages quote this run's output only
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=err, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not is_mountpoint(self.mnt):
            if self.proc.poll() is not None:
                raise MountError(f"{self.name} exited with {self.proc.returncode} before mounting: "
                                 f"{tail(self.stderr_path, self.err_start)}")
            if time.monotonic() > deadline:
                raise MountError(f"{self.name} not mounted after {self.timeout:.0f} s: "
                                 f"{tail(self.stderr_path, self.err_start)}")
            time.sleep(0.01)
        # The first request after INIT: the daemon may raise its read-ahead now (passthrough and
        # zipnnfs do it themselves), and the file must exist.
        if not os.path.exists(self.path):
            raise MountError(f"{self.name}: {self.path} missing in the mount")
        dev = mount_device(self.mnt)
        if self.read_ahead_kb is not None:
            with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
                f.write(f"{self.read_ahead_kb}\n")
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
            self.effective_read_ahead_kb = int(f.read())
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.proc is None:
            return
        if is_mountpoint(self.mnt):
            unmount(self.mnt)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self in ACTIVE:
            ACTIVE.remove(self)


class MountError(RuntimeError):
    pass


def tail(path, start=0, n=400):
    """The last n bytes of path after offset start."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(start, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def is_mountpoint(path):
    return subprocess.run(["mountpoint", "-q", path]).returncode == 0


def mount_device(path):
    return subprocess.run(["mountpoint", "-d", path], capture_output=True, text=True,
                          check=True).stdout.strip()


def unmount(path):
    if subprocess.run(["fusermount3", "-u", path], capture_output=True).returncode != 0:
        # Busy (a reader killed mid-way still holds it): detach it now, it goes when released.
        subprocess.run(["fusermount3", "-uz", path], capture_output=True)


def cleanup():
    for p in list(READERS):
        p.kill()
        p.wait()
    READERS.clear()
    for m in list(reversed(ACTIVE)):
        try:
            m.close()
        except Exception as e:  # keep unmounting the others
            log(f"cleanup of {m.mnt}: {e}")


def on_signal(signum, _frame):
    """Stops the readers and unwinds: the Mount context managers and the atexit cleanup unmount.
    Cleaning up right here could deadlock: the handler may run inside Popen.wait, whose lock
    another wait would take again."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the unmounting
    log(f"signal {signum}: unmounting")
    for p in READERS:
        try:
            os.kill(p.pid, signal.SIGKILL)  # not p.kill(): no Popen locks in a handler
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Readers. Each returns bytes read and seconds.

def warm(paths):
    """Reads the backing files so they sit in the page cache right before a measurement. Only
    the data extents: a store's LMDB file may be sparse and far larger than its data."""
    buf = bytearray(8 * MiB)
    for top in paths:
        files = [top] if os.path.isfile(top) else [
            os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
        for p in files:
            with open(p, "rb", buffering=0) as f:
                end = os.fstat(f.fileno()).st_size
                pos = 0
                while pos < end:
                    try:
                        pos = os.lseek(f.fileno(), pos, os.SEEK_DATA)
                    except OSError:  # ENXIO: only a hole is left
                        break
                    hole = os.lseek(f.fileno(), pos, os.SEEK_HOLE)
                    while pos < hole:
                        n = os.preadv(f.fileno(), [memoryview(buf)[:min(len(buf), hole - pos)]],
                                      pos)
                        if n <= 0:
                            break
                        pos += n


def dd_argv(path, first_mib, count_mib):
    argv = ["dd", f"if={path}", "of=/dev/null", "bs=1M", f"skip={first_mib}", "status=none"]
    if count_mib is not None:
        argv.append(f"count={count_mib}")
    return argv


def parallel_dd(path, size, readers):
    """`readers` dd processes, each reading its own contiguous 1/readers of the file with 1 MiB
    reads, all started together; returns (bytes, wall seconds) of the whole group."""
    total_mib = -(-size // MiB)
    per = -(-total_mib // readers)
    procs = []
    t0 = time.perf_counter()
    for i in range(readers):
        count = None if i == readers - 1 else per
        procs.append(subprocess.Popen(dd_argv(path, i * per, count)))
        READERS.append(procs[-1])
    rcs = [p.wait() for p in procs]
    for p in procs:
        READERS.remove(p)
    dt = time.perf_counter() - t0
    if any(rcs):
        raise RuntimeError(f"dd failed on {path}: {rcs}")
    return size, dt


def process_cpu_seconds(pid):
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds all cores have spent not idle (every process and kernel thread) so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def dd_with_cpu(mount, size):
    """One dd reader of the whole file, with the CPU it took: the daemon's, and the whole
    machine's (reader, kernel and daemon), in seconds per GB read."""
    pid = mount.proc.pid
    d0, m0 = process_cpu_seconds(pid), machine_busy_seconds()
    n, dt = parallel_dd(mount.path, size, 1)
    d1, m1 = process_cpu_seconds(pid), machine_busy_seconds()
    return n, dt, (d1 - d0) / (n / 1e9), (m1 - m0) / (n / 1e9)


def read_all(path):
    """Plain read() of the whole file in 1 MiB pieces."""
    buf = bytearray(MiB)
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n, time.perf_counter() - t0


def mmap_all(path):
    """mmap(ACCESS_READ), as safetensors loads, and numpy touching one byte of every page in
    order, so every page faults in through the mount. Returns bytes, seconds and the sum of the
    touched bytes (checked against the raw file)."""
    t0 = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        a = np.frombuffer(mm, dtype=np.uint8)
        s = int(a[::4096].sum(dtype=np.uint64))
        n = len(a)
        del a  # the buffer export must end before the mmap closes
    return n, time.perf_counter() - t0, s


def random_offsets(size, count, seed):
    """4 KiB-aligned offsets, one in each of `count` distinct 1 MiB slots with at least one unread
    slot between any two, so no two reads share a chunk or block of up to 1 MiB."""
    slots = list(range(0, size // MiB - 1, 2))
    rng = random.Random(seed)
    chosen = rng.sample(slots, min(count, len(slots)))
    return [s * MiB + rng.randrange(0, MiB // 4096) * 4096 for s in chosen]


def random_reads(path, offsets):
    """Latencies (µs) of 4 KiB preads at the offsets, on a fresh mount. POSIX_FADV_RANDOM keeps
    the kernel from reading ahead, so each is one 4 KiB FUSE request."""
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for off in offsets:
            t0 = time.perf_counter_ns()
            if len(os.pread(fd, 4096, off)) != 4096:
                raise RuntimeError(f"short read at {off}")
            lat.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
    return lat


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_under_readers(mount, size, readers):
    """Peak daemon RSS while `readers` dd processes each read 1/readers of the file: VmRSS sampled
    every 10 ms and the kernel's VmHWM (peak since the daemon started, so mount included)."""
    pid = mount.proc.pid
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        n, dt = parallel_dd(mount.path, size, readers)
    finally:
        stop.set()
        t.join()
    return {"rss_peak_mib": peak[0] / 1024, "hwm_mib": status_kib(pid, "VmHWM") / 1024,
            "mbps": n / dt / 1e6}


# ---------------------------------------------------------------------------------------------
# Building the contenders.

def run(argv, **kw):
    log("$ " + " ".join(argv))
    return subprocess.run(argv, check=True, **kw)


def fresh(output, inputs, stamp_text):
    """True when output exists, is newer than every input and was built with the same settings."""
    stamp = output + ".stamp"
    if not os.path.exists(output) or not os.path.exists(stamp):
        return False
    with open(stamp) as f:
        if f.read() != stamp_text:
            return False
    mtime = os.path.getmtime(stamp)
    return all(os.path.getmtime(i) <= mtime for i in inputs)


def write_stamp(output, stamp_text):
    with open(output + ".stamp", "w") as f:
        f.write(stamp_text)


def build_squashfs(model, image, block_size):
    stamp = f"{os.path.abspath(model)} zstd {block_size}"
    if not fresh(image, [model], stamp):
        if os.path.exists(image):
            os.remove(image)
        run(["mksquashfs", model, image, "-comp", "zstd", "-b", str(block_size), "-noappend",
             "-quiet", "-no-progress"], stdout=subprocess.DEVNULL)
        write_stamp(image, stamp)
    info = subprocess.run(["unsquashfs", "-s", image], capture_output=True, text=True).stdout
    block = next((int(line.split()[-1]) for line in info.splitlines()
                  if line.startswith("Block size")), block_size)
    return block


def build_store(zipnnfs, model, store):
    stamp = f"{os.path.abspath(model)} {os.path.abspath(zipnnfs)} {os.path.getmtime(zipnnfs)}"
    if not fresh(store, [model], stamp):
        shutil.rmtree(store, ignore_errors=True)
        run([zipnnfs, "init", store])
        t0 = time.perf_counter()
        run([zipnnfs, "import", store, model, "-q"])
        log(f"import: {os.path.getsize(model) / MiB:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        write_stamp(store, stamp)


def dir_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def find_in_mount(mnt, name):
    for d, _, fs in os.walk(mnt):
        if name in fs:
            return os.path.relpath(os.path.join(d, name), mnt)
    return None


# ---------------------------------------------------------------------------------------------
# Report.

def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_report(res, cfg):
    names = [c for c in CONTENDERS if c in res]
    z = res.get("zipnnfs")

    def get(c, k):
        return res[c].get(k) if c in res else None

    rows = [
        ("sequential read, 1 reader (MB/s)", "seq1", 0),
        ("2 parallel readers, aggregate (MB/s)", "seq2", 0),
        ("4 parallel readers, aggregate (MB/s)", "seq4", 0),
        ("2 readers / 1 reader", "par2_ratio", 2),
        ("4 readers / 1 reader", "par4_ratio", 2),
        ("random 4 KiB read, mean latency (µs)", "rand_mean_us", 0),
        ("random 4 KiB read, p50 / p99 (µs)", "rand_p", None),
        ("read() whole file (MB/s)", "read", 0),
        ("mmap + numpy page touch (MB/s)", "mmap", 0),
        ("mmap / read()", "mmap_ratio", 2),
        (f"daemon peak RSS, {cfg['mem_readers']} readers (MiB)", "rss_mib", 0),
        (f"{cfg['mem_readers']} readers, aggregate (MB/s)", "mem_mbps", 0),
        ("1 reader: daemon CPU s per GB read", "daemon_cpu_s_per_gb", 2),
        ("1 reader: whole machine's CPU s per GB read (reader, kernel, daemon)",
         "machine_cpu_s_per_gb", 2),
        ("1 reader: MB/s if every core were busy (cores / machine CPU per MB)", "cpu_bound_mbps", 0),
        ("mount read_ahead_kb", "read_ahead_kb", 0),
        ("mean read request, 1 reader (KiB)", "request_kib", 0),  # passthrough and zipnnfs
    ]
    header = ["metric"] + names
    if z:
        header += ["zipnnfs / passthrough", "zipnnfs / squashfuse"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key, digits in rows:
        if key in ("read_ahead_kb", "request_kib"):
            cells = [fmt(get(c, key), digits) for c in names] + (["", ""] if z else [])
        elif key == "rand_p":
            cells = [f"{fmt(get(c, 'rand_p50_us'))} / {fmt(get(c, 'rand_p99_us'))}" for c in names]
            if z:
                cells += ["", ""]
        else:
            cells = [fmt(get(c, key), digits) for c in names]
            if z:
                cells += [fmt(ratio(get("zipnnfs", key), get(c, key)), 2)
                          for c in ("passthrough", "squashfuse")]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(out)

    targets = []
    if z:
        def check(name, ok, detail):
            targets.append(f"- {'PASS' if ok else 'FAIL'} {name}: {detail}")

        def safe(v):
            return v if v is not None else float("nan")

        r = ratio(z["seq1"], get("passthrough", "seq1"))
        check("sequential >= 0.9 x passthrough", r is not None and r >= 0.9, f"{safe(r):.2f} x")
        r = ratio(z["seq1"], get("squashfuse", "seq1"))
        check("sequential >= 4 x squashfuse", r is not None and r >= 4, f"{safe(r):.2f} x")
        check("2 readers >= 1.0 x one reader", z["par2_ratio"] >= 1.0, f"{z['par2_ratio']:.2f} x")
        check("4 readers >= 1.0 x one reader", z["par4_ratio"] >= 1.0, f"{z['par4_ratio']:.2f} x")
        sq = get("squashfuse", "rand_mean_us")
        check("random 4 KiB mean latency <= squashfuse's",
              sq is not None and z["rand_mean_us"] <= sq,
              f"{z['rand_mean_us']:.0f} µs vs {safe(sq):.0f} µs")
        check("mmap works and >= 0.8 x read()",
              z["mmap_ok"] and z["mmap_ratio"] is not None and z["mmap_ratio"] >= 0.8,
              f"{safe(z['mmap_ratio']):.2f} x, data {'correct' if z['mmap_ok'] else 'WRONG'}"
              if z["mmap"] is not None else "mmap failed")
        limit = cfg["cache_size"] / MiB + 64
        check(f"RSS <= cache_size + 64 MiB with {cfg['mem_readers']} readers",
              z["rss_mib"] <= limit, f"{z['rss_mib']:.0f} MiB vs {limit:.0f} MiB")
    return table, targets


def write_chart(res, out_dir, rss_limit_mib):
    names = [c for c in CONTENDERS if c in res]
    tput = os.path.join(out_dir, "results-throughput.dat")
    with open(tput, "w") as f:
        f.write("test " + " ".join(names) + "\n")
        for label, key in [("1 reader", "seq1"), ("2 readers", "seq2"), ("4 readers", "seq4"),
                           ("read()", "read"), ("mmap", "mmap")]:
            f.write(f'"{label}" ' + " ".join(f"{res[c][key] or 0:.1f}" for c in names) + "\n")
    per = os.path.join(out_dir, "results-contenders.dat")
    with open(per, "w") as f:
        for c in names:
            f.write(f"{c} {res[c]['rand_mean_us']:.1f} {res[c]['rss_mib']:.1f}\n")
    png = os.path.join(out_dir, "results.png")
    # Explicit y ranges leave room for the key above the bars and for the memory target line.
    tput_max = 1.25 * max(res[c][k] or 0 for c in names for k in ("seq1", "seq2", "seq4", "read",
                                                                  "mmap"))
    rss_max = 1.15 * max([res[c]["rss_mib"] for c in names] + [0])
    rss_limit = ""
    if "zipnnfs" in res:  # the memory target: zipnnfs's cache_size + 64 MiB
        rss_max = max(rss_max, 1.15 * rss_limit_mib)
        rss_limit = (f"set arrow from graph 0, first {rss_limit_mib} to graph 1, first "
                     f"{rss_limit_mib} nohead dt 2 lw 2 lc rgb 'red'\n"
                     f"set label 'zipnnfs target: cache_size + 64 MiB' at graph 0.02, first "
                     f"{rss_limit_mib} offset 0,0.7 tc rgb 'red'")
    series = ", ".join(f"'{tput}' u {i + 2}{':xtic(1)' if i == 0 else ''} ti col"
                       for i in range(len(names)))
    script = f"""
set terminal pngcairo size 1500,500 font ',10' noenhanced
set output '{png}'
set multiplot layout 1,3 title 'fs_bench: same file, same run (median of rounds)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set grid ytics
set key top center horizontal
set title 'Throughput (MB/s, higher is better)'
set yrange [0:{tput_max}]
plot {series}
unset key
set title 'Random 4 KiB read, mean latency (us, lower is better)'
set yrange [0:*]
plot '{per}' u 2:xtic(1) lc rgb '#4477aa'
set title 'Daemon peak RSS, concurrent readers (MiB)'
set yrange [0:{rss_max}]
{rss_limit}
plot '{per}' u 3:xtic(1) lc rgb '#aa7744'
unset multiplot
"""
    gp = os.path.join(out_dir, "results.gp")
    with open(gp, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"gnuplot failed: {r.stderr.strip()}")
        return None
    return png


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--file", help="existing .safetensors file to serve (default: generate one)")
    ap.add_argument("--size", default="1G", help="size of the generated file")
    ap.add_argument("--corpus", default=os.environ.get(
        "ZIPNN_CORPUS", os.path.normpath(os.path.join(REPO, "../shared/corpus"))),
        help="real-weights corpus the file is generated from ($ZIPNN_CORPUS)")
    ap.add_argument("--out", default=os.path.join(REPO, "build/fs_bench"), help="output directory")
    ap.add_argument("--work", help="directory for the generated file, image, store and mount "
                    "points (default OUT/work; reused across runs when up to date)")
    ap.add_argument("--zipnnfs", default=os.path.join(REPO, "build/tools/zipnnfs"),
                    help="zipnnfs binary (store tool and mount)")
    ap.add_argument("--passthrough", default=os.path.join(REPO, "build/tools/passthrough_fuse"),
                    help="passthrough_fuse binary")
    ap.add_argument("--squashfuse", default=shutil.which("squashfuse") or "squashfuse",
                    help="squashfuse binary")
    ap.add_argument("--cache-size", default="256M", help="zipnnfs -o cache_size")
    ap.add_argument("--prefetch", help="zipnnfs -o prefetch (default: zipnnfs's default)")
    ap.add_argument("--zipnnfs-opts", default="", help="more zipnnfs -o options, comma-separated")
    ap.add_argument("--block-size", type=int, default=128 * 1024, help="mksquashfs block size")
    ap.add_argument("--read-ahead-kb", type=int, default=1024,
                    help="mount read-ahead: zipnnfs -o read_ahead_kb, passthrough_fuse "
                    "--read-ahead-kb, and set by this script on the squashfuse mount")
    ap.add_argument("--single-thread", action="store_true",
                    help="single-threaded session loops (-s) for all three")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median round counts")
    ap.add_argument("--random-reads", type=int, default=400, help="random 4 KiB reads per round")
    ap.add_argument("--mem-readers", type=int, default=8, help="readers of the memory test")
    ap.add_argument("--only", default=",".join(CONTENDERS), help="contenders to run")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also echo 3 > /proc/sys/vm/drop_caches before each measurement (fresh "
                    "mounts already start with a cold mount cache)")
    ap.add_argument("--no-verify", action="store_true", help="skip the cmp of each mount against "
                    "the file")
    a = ap.parse_args()

    # What the machine lacks is a skip (exit 77, ctest's SKIP_RETURN_CODE), not a failure.
    missing = [t for t in ("mountpoint", "fusermount3", "dd", "cmp", "gnuplot", "mksquashfs",
                           "unsquashfs") if shutil.which(t) is None]
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or missing:
        log("skipped: needs root, /dev/fuse and " + (", ".join(missing) or "nothing else") +
            " (packaging/install-deps.sh)")
        sys.exit(77)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    atexit.register(cleanup)

    out = os.path.abspath(a.out)
    work = os.path.abspath(a.work or os.path.join(out, "work"))
    os.makedirs(work, exist_ok=True)
    cache_size = parse_size(a.cache_size)
    wanted = [c for c in CONTENDERS if c in a.only.split(",")]

    # The file.
    if a.file:
        model = os.path.abspath(a.file)
    else:
        model = os.path.join(work, "model.safetensors")
        size = parse_size(a.size)
        stamp = (f"make_model {size} {os.path.abspath(a.corpus)} "
                 f"{os.path.getmtime(os.path.join(HERE, 'make_model.py'))}")
        if not fresh(model, [], stamp):
            run(["/usr/bin/python3", os.path.join(HERE, "make_model.py"), model, "--size",
                 str(size), "--corpus", a.corpus])
            write_stamp(model, stamp)
    size = os.path.getsize(model)
    name = os.path.basename(model)
    log(f"file: {model} ({size / MiB:.0f} MiB)")

    # The contenders. Each is a function giving a fresh, not yet entered Mount.
    makers, backing, notes = {}, {}, {}
    mnt_root = os.path.join(work, "mnt")
    if "passthrough" in wanted:
        if not os.access(a.passthrough, os.X_OK):
            sys.exit(f"fs_bench: {a.passthrough} missing: cmake --build build --target "
                     "passthrough_fuse")
        argv = [a.passthrough, "--read-ahead-kb", str(a.read_ahead_kb), model,
                os.path.join(mnt_root, "passthrough")] + (["-s"] if a.single_thread else [])
        makers["passthrough"] = lambda argv=argv: Mount(
            "passthrough", argv, os.path.join(mnt_root, "passthrough"), name)
        backing["passthrough"] = [model]
        notes["passthrough"] = f"raw file, {'single' if a.single_thread else 'multi'}-threaded loop"
    if "squashfuse" in wanted:
        image = os.path.join(work, "model.squashfs")
        t0 = time.perf_counter()
        block = build_squashfs(model, image, a.block_size)
        log(f"squashfs image ready ({time.perf_counter() - t0:.1f} s), block size {block}")
        argv = [a.squashfuse, "-f"] + (["-s"] if a.single_thread else []) + [
            image, os.path.join(mnt_root, "squashfuse")]
        makers["squashfuse"] = lambda argv=argv: Mount(
            "squashfuse", argv, os.path.join(mnt_root, "squashfuse"), name,
            read_ahead_kb=a.read_ahead_kb)
        backing["squashfuse"] = [image]
        version = subprocess.run([a.squashfuse, "-V"], capture_output=True, text=True)
        version = next((v.split(" (c)")[0] for v in (version.stdout + version.stderr).splitlines()
                        if v.startswith("squashfuse ")), "squashfuse")
        notes["squashfuse"] = (f"{version} over "
                               f"`mksquashfs -comp zstd -b {block}` ({block // 1024}K blocks), "
                               f"image {dir_size(image) / MiB:.0f} MiB "
                               f"({dir_size(image) / size:.1%} of the file)")
    if "zipnnfs" in wanted:
        store = os.path.join(work, "store")
        skip = None
        if not os.access(a.zipnnfs, os.X_OK):
            skip = f"{a.zipnnfs} not found"
        else:
            try:
                build_store(a.zipnnfs, model, store)
            except subprocess.CalledProcessError as e:
                skip = f"import failed ({e})"
        if skip is None:
            opts = ["ro", f"cache_size={a.cache_size}", f"read_ahead_kb={a.read_ahead_kb}"]
            if a.prefetch:
                opts.append(f"prefetch={a.prefetch}")
            opts += [o for o in a.zipnnfs_opts.split(",") if o]
            argv = [a.zipnnfs, store, os.path.join(mnt_root, "zipnnfs"), "-f"] + (
                ["-s"] if a.single_thread else []) + ["-o", ",".join(opts)]
            rel = None
            # Probe: does this zipnnfs mount at all, and where does the file appear?
            probe = Mount("zipnnfs", argv, os.path.join(mnt_root, "zipnnfs"), "")
            try:
                with probe:
                    rel = find_in_mount(probe.mnt, name)
            except (MountError, OSError) as e:
                skip = "mount does not work yet: " + " ".join(str(e).split())
            if skip is None and rel is None:
                skip = f"{name} not found in the mounted store"
        if skip is None:
            makers["zipnnfs"] = lambda argv=argv, rel=rel: Mount(
                "zipnnfs", argv, os.path.join(mnt_root, "zipnnfs"), rel)
            backing["zipnnfs"] = [store]
            notes["zipnnfs"] = (f"`{' '.join(argv[3:])}`, store {dir_size(store) / MiB:.0f} MiB "
                                f"({dir_size(store) / size:.1%} of the file)")
        else:
            log(f"SKIPPING zipnnfs: {skip}")
            notes["zipnnfs"] = f"skipped: {skip}"
    if not makers:
        sys.exit("fs_bench: no contender to run")
    order = [c for c in CONTENDERS if c in makers]

    daemon_stats = []  # zipnnfs's live statistics after each measurement, for results.json

    def measure(c, fn, test=""):
        """fn(mount) on a fresh mount of contender c with its backing files just read. Returns
        fn's result and what the mount reported: read_ahead_kb, mean read request (KiB)."""
        if a.drop_caches:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        info = {}
        with makers[c]() as m:
            warm(backing[c])
            result = fn(m)
            info["read_ahead_kb"] = m.effective_read_ahead_kb
            if c == "zipnnfs":
                # `zipnnfs stats MOUNTPOINT` prints the daemon's counters as JSON.
                r = subprocess.run([a.zipnnfs, "stats", m.mnt], capture_output=True, text=True)
                try:
                    st = json.loads(r.stdout)
                    daemon_stats.append({"test": test, "stats": st})
                    info["request_kib"] = st["read_bytes"] / st["reads"] / 1024
                except (ValueError, KeyError, ZeroDivisionError):
                    pass
        if c == "passthrough":
            # passthrough_fuse prints its mean read request size when it exits.
            line = tail(m.stderr_path, m.err_start).splitlines()[-1:]
            found = re.search(r"mean (\d+) KiB", line[0]) if line else None
            if found:
                info["request_kib"] = int(found.group(1))
        return result, info

    # Correctness first: a benchmark of wrong bytes is worthless.
    raw = np.memmap(model, dtype=np.uint8, mode="r")
    page_sum = int(raw[::4096].sum(dtype=np.uint64))
    if not a.no_verify:
        for c in order:
            def cmp(m):
                t0 = time.perf_counter()
                r = subprocess.run(["cmp", m.path, model], capture_output=True, text=True)
                return r.returncode, time.perf_counter() - t0, r.stdout + r.stderr
            (rc, dt, msg), _ = measure(c, cmp, "verify")
            if rc != 0:
                sys.exit(f"fs_bench: {c} serves different bytes: {msg.strip()}")
            log(f"verify {c}: identical ({size / dt / 1e6:.0f} MB/s while comparing)")

    load_start = f"{os.getloadavg()[0]:.2f}"
    # Rounds: every test runs on every contender before the next test, so drift hits all alike.
    rounds = []
    for r in range(a.repeat):
        res = {c: {} for c in order}
        # Fresh mounts each round, so each round may draw its own offsets from all the slots.
        offsets = random_offsets(size, a.random_reads, r)
        for readers in (1, 2, 4):
            for c in order:
                if readers == 1:
                    (n, dt, daemon_cpu, machine_cpu), info = measure(
                        c, lambda m: dd_with_cpu(m, size), f"round {r + 1}: 1 reader")
                    res[c]["read_ahead_kb"] = info["read_ahead_kb"]
                    res[c]["request_kib"] = info.get("request_kib")
                    res[c]["daemon_cpu_s_per_gb"] = daemon_cpu
                    res[c]["machine_cpu_s_per_gb"] = machine_cpu
                else:
                    (n, dt), info = measure(c, lambda m: parallel_dd(m.path, size, readers),
                                            f"round {r + 1}: {readers} readers")
                res[c][f"seq{readers}"] = n / dt / 1e6
        for c in order:
            lat, _ = measure(c, lambda m: random_reads(m.path, offsets), f"round {r + 1}: random")
            res[c]["rand_mean_us"] = statistics.fmean(lat)
            q = statistics.quantiles(lat, n=100)
            res[c]["rand_p50_us"], res[c]["rand_p99_us"] = q[49], q[98]
        for c in order:
            (n, dt), _ = measure(c, lambda m: read_all(m.path), f"round {r + 1}: read()")
            res[c]["read"] = n / dt / 1e6
            try:
                (n, dt, s), _ = measure(c, lambda m: mmap_all(m.path), f"round {r + 1}: mmap")
                res[c]["mmap"] = n / dt / 1e6
                res[c]["mmap_ok"] = s == page_sum
            except (OSError, ValueError) as e:  # "mmap works" is a target, not an assumption
                log(f"mmap on {c} failed: {e}")
                res[c]["mmap"], res[c]["mmap_ok"] = None, False
        for c in order:
            mem, _ = measure(c, lambda m: memory_under_readers(m, size, a.mem_readers),
                             f"round {r + 1}: memory")
            res[c]["rss_mib"] = max(mem["rss_peak_mib"], mem["hwm_mib"])
            res[c]["mem_mbps"] = mem["mbps"]
        for c in order:
            res[c]["par2_ratio"] = res[c]["seq2"] / res[c]["seq1"]
            res[c]["par4_ratio"] = res[c]["seq4"] / res[c]["seq1"]
            res[c]["mmap_ratio"] = ratio(res[c]["mmap"], res[c]["read"])
            res[c]["cpu_bound_mbps"] = (os.cpu_count() * 1e3 / res[c]["machine_cpu_s_per_gb"]
                                        if res[c]["machine_cpu_s_per_gb"] > 0 else None)
        log(f"round {r + 1}/{a.repeat}: " + "; ".join(
            f"{c} seq {res[c]['seq1']:.0f} MB/s, rand {res[c]['rand_mean_us']:.0f} µs"
            for c in order))
        rounds.append(res)

    # Median round per figure (and worst case for memory and mmap correctness).
    final = {}
    for c in order:
        final[c] = {}
        for k in rounds[0][c]:
            vals = [rd[c][k] for rd in rounds]
            if k == "mmap_ok":
                final[c][k] = all(vals)
            elif k == "rss_mib":
                final[c][k] = max(vals)
            elif None in vals:
                final[c][k] = None
            else:
                final[c][k] = statistics.median(vals)

    cfg = {"cache_size": cache_size, "mem_readers": a.mem_readers}
    table, targets = build_report(final, cfg)
    os.makedirs(out, exist_ok=True)
    png = write_chart(final, out, cache_size / MiB + 64)
    env = (f"{platform.node()}, kernel {platform.release()}, {os.cpu_count()} cores, "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
           f"{load_start} at the start, {os.getloadavg()[0]:.2f} at the end (other work on the "
           "machine skews the figures)")
    busy = os.getloadavg()[0] > os.cpu_count() or float(load_start) > os.cpu_count()
    md = [
        "# fs_bench results", "",
        *(["**The machine was busy (load average above the core count): figures are skewed; "
           "compare only within this run.**", ""] if busy else []),
        f"File: `{model}`, {size:,} bytes ({size / MiB:.0f} MiB) BF16 safetensors. {env}.", "",
        "Contenders:",
        *[f"- {c}: {notes[c]}" for c in CONTENDERS if c in notes], "",
        table, "",
        f"Median of {a.repeat} rounds (RSS: maximum; ratio rows: median of the ratios within each "
        "round; ratio columns: ratio of the medians). Sequential 1 reader per round: " +
        "; ".join(f"{c} " + " / ".join(f"{rd[c]['seq1']:.0f}" for rd in rounds) for c in order) +
        " MB/s. Every figure comes from a fresh mount (cold "
        "mount page cache and daemon caches) with its backing files read into the page cache "
        "just before. Sequential: `dd bs=1M`; with N readers, N dd processes each read their own "
        "contiguous 1/N of the file at once, aggregate = file size / wall time. Random: "
        f"{a.random_reads} preads of 4 KiB per round under POSIX_FADV_RANDOM, each in its own "
        "1 MiB slot with an unread slot between any two (never a chunk or block read before). "
        f"Every mount's read_ahead_kb is {a.read_ahead_kb} (page-cached FUSE reads otherwise reach "
        "the daemon as 128 KiB requests). "
        "read(): Python readinto 1 MiB; mmap: mmap.ACCESS_READ and numpy touching one byte per "
        f"page in order (sum checked against the file). RSS: daemon VmHWM and VmRSS sampled every "
        f"10 ms while {a.mem_readers} dd readers each read 1/{a.mem_readers} of the file; zipnnfs "
        f"cache_size = {a.cache_size}. CPU per GB: the daemon's user + system time "
        "(/proc/PID/stat), and every core's non-idle time (/proc/stat: reader, kernel threads, "
        "daemon, anything else running) over the 1-reader sequential read, per GB read; "
        f"{os.cpu_count()} cores divided by the latter bounds the throughput on this machine.",
    ]
    if targets:
        md += ["", "Targets of issue 4 (zipnnfs):", "", *targets]
    if png:
        md += ["", "![chart](results.png)"]
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"file": model, "size": size, "notes": notes, "median": final, "rounds": rounds,
                   "zipnnfs_stats": daemon_stats}, f, indent=1)
    print(text)
    log(f"wrote {out}/results.md, results.json" + (", results.png" if png else ""))


if __name__ == "__main__":
    main()
