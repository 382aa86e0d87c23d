"""`chainio demo`: make a file, read it through ChainIO and through a plain read() loop, compare.

Cold runs evict the file from the page cache first (posix_fadvise DONTNEED, which needs no
root); hot runs read it once beforehand. Both methods read into the same kind of destination:
a numpy array allocated and faulted in before timing, so the numbers compare I/O paths, not page
faults. Each figure is the median of --runs runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np

from . import Engine, empty_aligned

MiB = 1 << 20


def make_file(path: str, size: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def read_loop(path: str, dest: np.ndarray) -> None:
    view = memoryview(dest)
    with open(path, "rb", buffering=0) as f:
        pos = 0
        while pos < len(view):
            n = f.readinto(view[pos:pos + MiB])
            if not n:
                raise OSError(f"{path}: unexpected end of file at {pos}")
            pos += n


def measure(fn, path: str, cold: bool, runs: int):
    speeds, cpus = [], []
    size = os.path.getsize(path)
    for _ in range(runs):
        if cold:
            evict(path)
        else:
            fn()  # warm the cache (and the code path)
        c0, t0 = cpu_seconds(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), cpu_seconds()
        speeds.append(size / (t1 - t0) / 1e9)
        cpus.append((c1 - c0) / (size / 1e9))
    return statistics.median(speeds), statistics.median(cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chainio demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024 MiB)")
    ap.add_argument("--dir", default="/var/tmp/chainio-demo", help="where the file is made")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    args = ap.parse_args(argv)
    if args.size_mib <= 0 or args.runs <= 0:
        ap.error("--size-mib and --runs must be positive")

    path = os.path.join(args.dir, f"demo-{args.size_mib}MiB.bin")
    size = args.size_mib * MiB
    print(f"making {path} ({args.size_mib} MiB) ...", flush=True)
    make_file(path, size)

    engine = Engine()
    info = engine.info()
    ours = empty_aligned(size)    # zeroed = faulted in before timing
    theirs = empty_aligned(size)

    def chainio_read():
        engine.read_into(path, ours)

    def plain_read():
        read_loop(path, theirs)

    print(f"engine: {info['backend']}, {info['workers']} workers, queue depth "
          f"{info['queue_depth']}, {info['io_bytes'] // MiB} MiB reads, "
          f"{'registered' if info['registered_buffers'] else 'unregistered'} buffers")
    for note in info["notes"]:
        print(f"  note: {note}")
    rows = []
    for cache in ("cold", "hot"):
        for name, fn in (("read() loop, 1 MiB", plain_read), ("ChainIO (auto)", chainio_read)):
            gbps, cpu = measure(fn, path, cache == "cold", args.runs)
            rows.append((name, cache, gbps, cpu))
    print()
    print(f"{'method':<22}{'cache':<7}{'GB/s':>8}{'CPU-s/GB':>10}")
    for name, cache, gbps, cpu in rows:
        print(f"{name:<22}{cache:<7}{gbps:>8.2f}{cpu:>10.3f}")
    for cache in ("cold", "hot"):
        base = next(r for r in rows if r[1] == cache and r[0].startswith("read"))
        ours_row = next(r for r in rows if r[1] == cache and r[0].startswith("ChainIO"))
        print(f"{cache}: ChainIO {ours_row[2] / base[2]:.2f}x the read() loop")
    same = np.array_equal(ours, theirs)
    print(f"bytes identical: {'yes' if same else 'NO'}")
    s = engine.stats()
    print(f"engine stats: {s['ops']} reads ({s['direct_ops']} O_DIRECT, {s['buffered_ops']} buffered, "
          f"{s['bounce_ops']} bounced) in {s['enter_calls']} io_uring_enter calls")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
