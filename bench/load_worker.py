#!/usr/bin/env python3
"""One timed checkpoint load in a fresh process; prints one `RESULT {json}` line.

    python3 bench/load_worker.py LOADER CHECKPOINT_DIR

Run by bench/load_bench.py, once per run, so that every load starts in a new process: its
destination memory is fresh (never faulted in by an earlier run) and its peak RSS is its own.
That is what loading a model means in practice.

The clock starts just before the loader's first call (imports, the shard list and the baseline
RSS are taken before) and stops when every tensor of every shard is in CPU memory. Loaders that
hand out tensors backed by a memory map of the file (safetensors' default "mmap" backend does,
and so does safe_open().get_tensor) have read nothing yet when they return, so this worker then
touches one byte of every 4 KiB page of every such tensor, plus its last byte, inside the timed
region: that makes the kernel read every page of the file and map it, which is exactly the work
left to do before the tensor can be used, and nothing more (no copy; a sum over the whole
tensor would add a pass of arithmetic). The touch time is reported on its own
(`materialize_seconds`). Tensors are recognised as mmap-backed by their address falling inside a
mapping of one of the shard files in /proc/self/maps, whatever the loader.

After the clock stops (nothing below counts): the names, dtypes, shapes and bytes are checked
against the shard headers, and every tensor is digested (3 samples of 64 KiB each: start, middle,
end) into one checksum that the driver compares with the one it computed from the files.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
import traceback

PAGE = 4096
SAMPLE = 64 << 10


# ---------------------------------------------------------------- shared with the driver

def shard_files(directory: str) -> list[str]:
    """The shard paths of a Hugging Face checkpoint directory, in index order."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    else:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    return [os.path.join(directory, n) for n in names]


def read_header(path: str) -> tuple[int, dict]:
    """(offset of the data section, {name: {dtype, shape, data_offsets}})."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def sample_ranges(nbytes: int) -> list[tuple[int, int]]:
    """Byte ranges digested per tensor: 64 KiB at the start, the middle and the end."""
    if nbytes <= 3 * SAMPLE:
        return [(0, nbytes)]
    mid = (nbytes // 2) - SAMPLE // 2
    return [(0, SAMPLE), (mid, SAMPLE), (nbytes - SAMPLE, SAMPLE)]


def digest_from_files(paths: list[str]) -> str:
    """The checkpoint digest computed straight from the files (the reference)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    entries = []
    for path in paths:
        base, header = read_header(path)
        for name, meta in header.items():
            entries.append((name, path, base + meta["data_offsets"][0],
                            meta["data_offsets"][1] - meta["data_offsets"][0]))
    for name, path, start, nbytes in sorted(entries):
        with open(path, "rb") as f:
            h.update(name.encode() + nbytes.to_bytes(8, "little"))
            for off, n in sample_ranges(nbytes):
                f.seek(start + off)
                h.update(f.read(n))
    return h.hexdigest()


# ---------------------------------------------------------------- measurement helpers

def status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "HugetlbPages", "Threads"):
                v = value.split()
                out[key] = int(v[0]) * (1024 if len(v) > 1 else 1) if v else 0
    return out


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def file_mappings(paths: list[str]) -> list[tuple[int, int]]:
    real = {os.path.realpath(p) for p in paths}
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() in real:
                lo, hi = parts[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def materialize_mmapped(tensors: dict, paths: list[str]) -> tuple[int, int]:
    """Touch every page of the tensors that live in a mapping of a shard file.

    Returns (tensors touched, bytes touched)."""
    import torch

    maps = file_mappings(paths)
    if not maps:
        return 0, 0
    count = nbytes = 0
    for t in tensors.values():
        p = t.data_ptr()
        if not any(lo <= p < hi for lo, hi in maps):
            continue
        n = t.numel() * t.element_size()
        if n == 0:
            continue
        u8 = t.reshape(-1).view(torch.uint8) if t.element_size() > 1 else t.reshape(-1)
        # One byte per page (the first page boundary may lie anywhere past data_ptr, so the
        # stride starts at the tensor's first byte and the last byte covers the tail page).
        _ = int(u8[::PAGE].sum()) + int(u8[-1])
        count += 1
        nbytes += n
    return count, nbytes


# ---------------------------------------------------------------- the loaders

def emit_result(result: dict) -> None:
    """Prints the one `RESULT {json}` line and ends the process at once: interpreter teardown
    (loader thread pools, big frees) is not measured and only costs time."""
    print("RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)


class Skip(Exception):
    """The loader is not available in this build (reported as skipped, not failed)."""


def prepare(loader: str, directory: str, paths: list[str]):
    """Imports and setup outside the clock; returns a zero-argument function that loads."""
    if loader in ("chainio", "chainio-nopool"):
        if loader == "chainio-nopool":
            os.environ["CHAINIO_HUGETLB"] = "0"  # plain 4 KiB pages even when the pool has room
        import chainio_torch

        fn = getattr(chainio_torch, "load_checkpoint", None)
        if fn is None:
            raise Skip(f"chainio_torch.load_checkpoint missing in {chainio_torch.__file__} "
                       f"(version {getattr(chainio_torch, '__version__', '?')})")
        return lambda: fn(directory)
    if loader == "chainio-file":
        import chainio_torch

        fn = getattr(chainio_torch, "load_file", None)
        if fn is None:
            raise Skip(f"chainio_torch.load_file missing in {chainio_torch.__file__}")

        def run():
            out = {}
            for p in paths:
                out.update(fn(p))
            return out
        return run
    if loader in ("safetensors", "safetensors-pread"):
        from safetensors.torch import load_file

        backend = "pread" if loader == "safetensors-pread" else "mmap"

        def run():
            out = {}
            for p in paths:
                out.update(load_file(p, backend=backend) if backend != "mmap" else load_file(p))
            return out
        return run
    if loader == "safe_open":
        from safetensors import safe_open
        import torch  # noqa: F401  (framework="pt" imports it lazily otherwise)

        def run():
            out = {}
            for p in paths:
                with safe_open(p, framework="pt") as f:
                    for k in f.keys():
                        out[k] = f.get_tensor(k)
            return out
        return run
    if loader == "runai":
        from runai_model_streamer import SafetensorsStreamer

        def run():
            out = {}
            # owned=True (the default) hands every yielded tensor to the caller: each ring
            # slot is a fresh numpy allocation given away once drained, so no clone is needed.
            with SafetensorsStreamer() as streamer:
                streamer.stream_files(paths, device="cpu")
                for name, t in streamer.get_tensors():
                    out[name] = t
            return out
        return run
    if loader == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader

        keep = []

        def run():
            # The documented CPU path: nogds=True gives the "nogds" copier, whose C++ workers
            # (max_threads=16 by default) pread into bounce buffers and memcpy into one
            # buffer per file. Tensors from get_tensor share ownership of that buffer.
            fl = SafeTensorsFileLoader(None, "cpu", nogds=True)
            fl.add_filenames({0: paths})
            fb = fl.copy_files_to_device()
            out = {k: fb.get_tensor(k) for k in fl.get_keys()}
            keep.extend((fb, fl))
            return out
        return run
    raise ValueError(f"unknown loader {loader!r}")


def fault_in_fresh(nbytes: int, threads: int) -> None:
    """The "memfault" reference: first-touch ``nbytes`` of fresh anonymous memory (one byte
    per 4 KiB page, ``threads`` torch threads) and read nothing.

    Every loader whose tensors own their memory pays at least this; in a VM that hands freed
    memory back to the host it is a large part of a cold load. (MADV_POPULATE_WRITE from two
    threads measured slower than this here: the faults serialize.)"""
    import torch

    torch.set_num_threads(threads)
    buf = torch.empty(nbytes, dtype=torch.uint8)
    buf[::PAGE].fill_(1)


def memfault(paths: list[str]) -> dict:
    """Times fault_in_fresh for the checkpoint's tensor bytes with one thread per core."""
    nbytes = 0
    for p in paths:
        _, header = read_header(p)
        nbytes += sum(m["data_offsets"][1] - m["data_offsets"][0] for m in header.values())
    import torch  # noqa: F401  (imported outside the clock, like the loaders)

    before = status()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    fault_in_fresh(nbytes, os.cpu_count() or 1)
    t1, cpu1 = time.perf_counter(), cpu_seconds()
    after = status()
    return {"seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0, "bytes": nbytes,
            "threads": os.cpu_count() or 1, "rss_before": before.get("VmRSS"),
            "peak_rss": after.get("VmHWM")}


def engine_read(paths: list[str], span_bytes: int | None) -> dict:
    """The "engine-span" / "engine-reuse" references: ChainIO's engine reads every shard whole
    (O_DIRECT, its defaults) into hugetlb pages touched before the clock starts, so no loader
    work, no parsing and no page zeroing is timed: what the device delivers into a destination
    as large as the checkpoint (span_bytes None) or into one buffer of span_bytes reused
    round-robin, as fio does with its 32 MiB (iodepth x bs)."""
    import chainio_torch
    from chainio_torch import loader as L

    sizes = [os.path.getsize(p) // PAGE * PAGE for p in paths]
    span = span_bytes or sum(sizes)
    buf, backing = L.host_tensor(span)
    buf.fill_(1)  # every page faulted in and zeroed outside the clock
    extents, k = [], 0
    step = 1 << 20
    for p, n in zip(paths, sizes):
        for off in range(0, n, step):
            m = min(step, n - off)
            if span_bytes:
                k %= span
                m = min(m, span - k)
            extents.append((p, off, m, buf.data_ptr() + k))
            k += m
    engine = chainio_torch.default_engine()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    engine.submit(extents, keepalive=buf, mode="direct").wait()
    t1, cpu1 = time.perf_counter(), cpu_seconds()
    return {"seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0,
            "bytes": sum(e[2] for e in extents), "span_bytes": span, "backing": backing}


def check(tensors: dict, paths: list[str]) -> tuple[list[str], str]:
    """Problems found against the headers, and the sampled digest of what was loaded."""
    import hashlib

    import torch

    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
              "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "I8": torch.int8}
    problems, expected = [], {}
    for p in paths:
        _, header = read_header(p)
        expected.update(header)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensors, e.g. {extra[:3]}")
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name]
        meta = expected.get(name)
        if meta is not None:
            if list(t.shape) != list(meta["shape"]) or dtypes.get(meta["dtype"]) != t.dtype:
                problems.append(f"{name}: got {t.dtype} {list(t.shape)}, header says "
                                f"{meta['dtype']} {meta['shape']}")
        if t.device.type != "cpu":
            problems.append(f"{name} is on {t.device}")
            continue
        u8 = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        nbytes = u8.nbytes
        h.update(name.encode() + nbytes.to_bytes(8, "little"))
        for off, n in sample_ranges(nbytes):
            h.update(u8[off:off + n].tobytes())
    return problems[:10], h.hexdigest()


def main() -> int:
    loader, directory = sys.argv[1], sys.argv[2]
    result: dict = {"loader": loader, "status": "ok"}
    try:
        paths = shard_files(directory)
        if loader == "memfault":
            result.update(memfault(paths))
            emit_result(result)
        if loader in ("engine-span", "engine-reuse"):
            result.update(engine_read(paths, None if loader == "engine-span" else 32 << 20))
            emit_result(result)
        try:
            load = prepare(loader, directory, paths)
        except Skip as e:
            result.update(status="skipped", error=str(e))
            emit_result(result)
        import torch

        result["torch_threads"] = torch.get_num_threads()
        if loader.startswith("chainio"):
            result["module"] = sys.modules["chainio_torch"].__file__
        before = status()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        tensors = load()
        t1 = time.perf_counter()
        touched, touched_bytes = materialize_mmapped(tensors, paths)
        t2 = time.perf_counter()
        cpu1 = cpu_seconds()
        after = status()
        result.update(
            seconds=t2 - t0, load_call_seconds=t1 - t0, materialize_seconds=t2 - t1,
            cpu_seconds=cpu1 - cpu0,
            bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
            tensors=len(tensors),
            mmap_backed_tensors=touched, mmap_backed_bytes=touched_bytes,
            rss_before=before.get("VmRSS"), peak_rss=after.get("VmHWM"),
            rss_after=after.get("VmRSS"), rss_file_after=after.get("RssFile"),
            hugetlb_after=after.get("HugetlbPages", 0), threads_after=after.get("Threads"),
        )
        if loader.startswith("chainio"):
            result["host_memory"] = sys.modules["chainio_torch"].host_memory_stats()
        problems, digest = check(tensors, paths)
        result.update(digest=digest, problems=problems)
        if problems:
            result["status"] = "failed"
            result["error"] = "; ".join(problems)
    except BaseException as e:  # noqa: BLE001  (a failed loader is a result, not a crash)
        result.update(status="failed", error=f"{type(e).__name__}: {e}"[:500],
                      traceback=traceback.format_exc()[-2000:])
    emit_result(result)


if __name__ == "__main__":
    main()
