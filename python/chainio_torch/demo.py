"""`chainio demo`: make a checkpoint, load it with ChainIO and with safetensors, compare.

1. Writes a Llama-shaped bf16 checkpoint with the real `safetensors` package (default 1 GiB in
   2 shards, Hugging Face layout with model.safetensors.index.json), once.
2. Loads it cold and hot with `chainio_torch.load_checkpoint` and with
   `safetensors.torch.load_file` per shard, and checks that every tensor is bit-identical.
3. Reads one shard as raw bytes through the engine and through a plain read() loop into the same
   kind of (pre-faulted) buffer: the I/O path alone, without the cost of fresh memory.

Cold runs evict the files from the page cache (posix_fadvise DONTNEED, no root needed); hot runs
read them once beforehand. Figures are medians of --runs runs.

What "loaded" means differs: ChainIO returns tensors in their own memory (read once, straight
into place); safetensors returns tensors mapped from the page cache, so its clock here includes
touching every page of them (otherwise nothing would have been read yet) and a hot load is a
mapping, not a copy.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import time

MiB = 1 << 20


def evict(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(16 * MiB):
                pass


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(fn, paths, nbytes: int, cold: bool, runs: int):
    speeds, cpus, result = [], [], None
    for _ in range(runs):
        result = None
        gc.collect()
        evict(paths) if cold else warm(paths)
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = fn()
        t1, c1 = time.perf_counter(), cpu_seconds()
        speeds.append(nbytes / (t1 - t0) / 1e9)
        cpus.append((c1 - c0) / (nbytes / 1e9))
    return statistics.median(speeds), statistics.median(cpus), result


def read_loop(path: str, dest) -> None:
    view = memoryview(dest)
    with open(path, "rb", buffering=0) as f:
        pos = 0
        while pos < len(view):
            n = f.readinto(view[pos:pos + MiB])
            if not n:
                raise OSError(f"{path}: unexpected end of file at {pos}")
            pos += n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chainio demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="checkpoint size (default 1024)")
    ap.add_argument("--shards", type=int, default=2, help="shard count (default 2)")
    ap.add_argument("--dir", default="/var/tmp/chainio-demo", help="where the checkpoint is made")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    args = ap.parse_args(argv)
    if args.size_mib <= 0 or args.runs <= 0 or args.shards <= 0:
        ap.error("--size-mib, --shards and --runs must be positive")

    import torch
    from safetensors.torch import load_file as st_load_file

    from . import Engine, empty_aligned, load_checkpoint
    from .loader import checkpoint_files, host_memory_stats, memory_summary, same_bytes
    from .synth import generate

    ckpt = os.path.join(args.dir, f"llama-{args.size_mib}MiB-{args.shards}shards")
    print(f"checkpoint: {ckpt}", flush=True)
    generate(ckpt, size_gib=args.size_mib / 1024, shards=args.shards)
    files = checkpoint_files(ckpt)
    nbytes = sum(os.path.getsize(f) for f in files)

    engine = Engine()
    info = engine.info()
    print(f"engine: {info['backend']}, {info['workers']} workers, queue depth "
          f"{info['queue_depth']}, {info['io_bytes'] // MiB} MiB reads, "
          f"{'registered' if info['registered_buffers'] else 'unregistered'} buffers")
    for note in info["notes"]:
        print(f"  note: {note}")

    mem_before = host_memory_stats()

    def chainio_load():
        return load_checkpoint(ckpt, engine=engine)

    def safetensors_load():
        out = {}
        for f in files:
            out.update(st_load_file(f))
        for t in out.values():  # mapped lazily: touch one byte per page so the data is read
            if t.numel():
                t.reshape(-1).view(torch.uint8)[::4096].sum()
        return out

    rows, loaded = [], {}
    for cache in ("cold", "hot"):
        for name, fn in (("safetensors load_file", safetensors_load), ("ChainIO load_checkpoint", chainio_load)):
            gbps, cpu, result = measure(fn, files, nbytes, cache == "cold", args.runs)
            rows.append((name, cache, gbps, cpu))
            loaded[name] = result
    same = sorted(loaded["ChainIO load_checkpoint"]) == sorted(loaded["safetensors load_file"]) and all(
        same_bytes(t, loaded["safetensors load_file"][k]) for k, t in loaded["ChainIO load_checkpoint"].items())
    ntensors = len(loaded["ChainIO load_checkpoint"])
    loaded.clear()
    gc.collect()

    # The I/O path alone: one shard into a pre-faulted aligned buffer.
    shard = files[0]
    size = os.path.getsize(shard) // 4096 * 4096
    ours, theirs = empty_aligned(size), empty_aligned(size)
    for cache in ("cold", "hot"):
        for name, fn in (("read() loop, 1 MiB", lambda: read_loop(shard, theirs)),
                         ("ChainIO read_into", lambda: engine.read_into(shard, ours))):
            gbps, cpu, _ = measure(fn, [shard], size, cache == "cold", args.runs)
            rows.append((name, cache, gbps, cpu))
    raw_same = bool((ours == theirs).all())

    print(f"\nload {ntensors} tensors, {nbytes / 1e9:.2f} GB in {len(files)} shards "
          f"(fresh memory each run), then read {size / 1e9:.2f} GB of one shard into reused memory:\n")
    print(f"{'method':<26}{'cache':<7}{'GB/s':>8}{'CPU-s/GB':>10}")
    for i, (name, cache, gbps, cpu) in enumerate(rows):
        if i == 4:
            print()
        print(f"{name:<26}{cache:<7}{gbps:>8.2f}{cpu:>10.3f}")
    print()
    for cache in ("cold", "hot"):
        for a, b in (("ChainIO load_checkpoint", "safetensors load_file"), ("ChainIO read_into", "read() loop, 1 MiB")):
            ra = next(r for r in rows if r[0] == a and r[1] == cache)
            rb = next(r for r in rows if r[0] == b and r[1] == cache)
            print(f"{cache}: {a} {ra[2] / rb[2]:.2f}x {b}")
    print(f"tensors bit-identical to safetensors: {'yes' if same else 'NO'}; "
          f"raw bytes identical: {'yes' if raw_same else 'NO'}")
    s = engine.stats()
    print(f"engine stats: {s['ops']} reads ({s['direct_ops']} O_DIRECT, {s['buffered_ops']} buffered, "
          f"{s['bounce_ops']} bounced) in {s['enter_calls']} io_uring_enter calls")
    where = memory_summary(mem_before, host_memory_stats()).removeprefix("memory: ")
    print(f"ChainIO load_checkpoint buffers, all runs: {where}")
    return 0 if same and raw_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
