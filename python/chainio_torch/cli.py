"""The `chainio` command."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys


def _pool_pages_for(path: str) -> tuple[int, int]:
    """(files, 2 MiB pages) that loading the checkpoint at `path` takes from a hugetlb pool:
    every file whose buffer is large enough to use it, each rounded up to whole pages."""
    from . import _C
    from .loader import checkpoint_files, read_header

    files = checkpoint_files(path)
    pages = 0
    for f in files:
        n = read_header(f).buffer_bytes
        if n >= _C.hugetlb_min_bytes:
            pages += -(-n // (2 << 20))
    return len(files), pages


def _doctor(args) -> int:
    from . import Engine, __version__
    from .loader import hugetlb_free_pages

    print(f"chainio-torch {__version__}, Python {platform.python_version()}, "
          f"kernel {platform.release()}")
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            print(f"kernel.io_uring_disabled = {f.read().strip()}")
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    print("RLIMIT_MEMLOCK:", "unlimited" if soft == resource.RLIM_INFINITY else f"{soft >> 20} MiB",
          "(root)" if os.geteuid() == 0 else "")
    try:
        with open("/proc/sys/vm/nr_hugepages") as f:
            total = int(f.read())
        free = hugetlb_free_pages()
        if total:
            print(f"vm.nr_hugepages = {total} ({free} free): loads of up to {free * 2} MiB take "
                  f"their buffers from the hugetlb pool")
        else:
            print("vm.nr_hugepages = 0: no hugetlb pool, loads fault in fresh 4 KiB pages "
                  "(`sysctl vm.nr_hugepages=N` reserves N x 2 MiB; see docs/TROUBLESHOOTING.md)")
    except OSError:
        pass
    info = Engine().info()
    print(f"engine backend: {info['backend']} ({info['workers']} workers, queue depth "
          f"{info['queue_depth']}, pool {info['pool_bytes'] >> 20} MiB"
          f"{', hugetlb' if info['hugetlb_pool'] else ''})")
    print(f"registered buffers: {'yes' if info['registered_buffers'] else 'no'}; "
          f"SINGLE_ISSUER|DEFER_TASKRUN: {'yes' if info['single_issuer'] else 'no'}")
    for note in info["notes"]:
        print(f"fallback: {note}")
    print(_peer_transfers())
    if args.checkpoint:
        nfiles, pages = _pool_pages_for(args.checkpoint)
        need = pages + -(-info["pool_bytes"] // (2 << 20))  # plus the engine's buffer pool
        free = hugetlb_free_pages()
        verdict = "free now" if need <= free else f"{need - free} more than free now"
        print(f"{args.checkpoint}: {nfiles} file(s) whose buffers take {pages} pool pages "
              f"({pages * 2} MiB); with the engine's buffer pool one process loading it uses "
              f"{need} pages ({verdict}): `sysctl vm.nr_hugepages={need}` on an unused pool")
    return 0


_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_BPF = 12, 21, 39


def _peer_transfers() -> str:
    """Which transport sessions can use here, from the effective capabilities (nothing is
    attached to any interface to find out)."""
    forced = os.environ.get("CHAINIO_TRANSPORT", "").strip().lower()
    try:
        with open("/proc/self/status") as f:
            caps = int(next(ln.split()[1] for ln in f if ln.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        caps = 0
    has = lambda bit: bool(caps >> bit & 1)  # noqa: E731
    bpf = has(_CAP_BPF) or has(_CAP_SYS_ADMIN)
    missing = [name for name, ok in (("CAP_BPF", bpf), ("CAP_NET_ADMIN", has(_CAP_NET_ADMIN)))
               if not ok]
    if forced == "tcp":
        return "peer transfers: TCP (CHAINIO_TRANSPORT=tcp)"
    if missing:
        return f"peer transfers: TCP (AF_XDP needs {' and '.join(missing)})"
    return ("peer transfers: AF_XDP when both peers can attach ChainIO's XDP program to the "
            "interface of the connection (else TCP, with the reason in fallback_reason)")


def _load(args) -> int:
    import time

    import torch

    from . import default_engine
    from .loader import checkpoint_files, host_memory_stats, load_checkpoint, memory_summary, same_bytes

    try:
        device = torch.device(args.device)
        if device.type != "cpu":
            torch.empty(0, device=device)  # e.g. cuda on a build or machine without it
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"--device {args.device}: {e}") from None
    if args.peer:
        return _fetch(args)
    files = checkpoint_files(args.path)
    engine = default_engine()
    before = engine.stats()
    mem_before = host_memory_stats()
    t0 = time.perf_counter()
    tensors = load_checkpoint(args.path, device=args.device, progress=args.progress)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    after = engine.stats()
    print(f"{len(tensors)} tensors from {len(files)} file(s), {nbytes / 1e9:.3f} GB in "
          f"{seconds:.3f} s: {nbytes / seconds / 1e9:.2f} GB/s on {args.device} (ChainIO: "
          f"{after['direct_ops'] - before['direct_ops']} O_DIRECT, "
          f"{after['buffered_ops'] - before['buffered_ops']} buffered, "
          f"{after['bounce_ops'] - before['bounce_ops']} bounced reads)")
    if args.device == "cpu":
        print(memory_summary(mem_before, host_memory_stats()))
    if args.list:
        for name, t in tensors.items():
            print(f"  {name}: {str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    if not args.compare:
        return 0
    from safetensors.torch import load_file as st_load_file

    t0 = time.perf_counter()
    reference = {}
    for f in files:
        reference.update(st_load_file(f, device=args.device))
    ref_seconds = time.perf_counter() - t0
    mismatched = [n for n, t in reference.items()
                  if n not in tensors or not same_bytes(tensors[n], t)]
    mismatched += [n for n in tensors if n not in reference]
    print(f"safetensors.torch.load_file: {ref_seconds:.3f} s ({nbytes / ref_seconds / 1e9:.2f} GB/s); "
          f"ChainIO {ref_seconds / seconds:.2f}x; tensors identical: "
          f"{'yes' if not mismatched else 'NO: ' + ', '.join(mismatched[:5])}")
    return 0 if not mismatched else 1


def _fetch(args) -> int:
    import time

    from .loader import load_checkpoint

    report: list = []
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    tensors = load_checkpoint(args.path, device=args.device, progress=args.progress,
                              peers=args.peer, token=args.token, cache_dir=args.cache_dir,
                              local_root=args.local_root, transport=args.transport,
                              timeout_ms=args.timeout_ms, report=report)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"{len(tensors)} tensors from {len(report)} file(s), {nbytes / 1e9:.3f} GB in "
          f"{seconds:.3f} s: {nbytes / seconds / 1e9:.2f} GB/s, {cpu / max(nbytes / 1e9, 1e-9):.2f} "
          f"CPU-s/GB")
    by_source: dict = {}
    for r in report:
        if r["from_cache"]:
            by_source.setdefault(("cache", "local"), [0, ""])[0] += r["bytes"]
        for src in r["sources"]:
            entry = by_source.setdefault((src["name"], src["transport"]), [0, ""])
            entry[0] += src["bytes"]
            entry[1] = src["error"] or entry[1]
    for (name, transport), (nbytes_src, error) in by_source.items():
        print(f"  {name} ({transport or 'not connected'}): {nbytes_src / 1e9:.3f} GB"
              f"{'; dropped: ' + error if error else ''}")
    return 0


def _seed(args) -> int:
    import json
    import signal
    import threading

    from .peer import Seeder

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Seeder(args.root, args.token, ip=args.ip, port=args.port, transport=args.transport,
                ifname=args.iface, timeout_ms=args.timeout_ms,
                max_sessions=args.max_sessions) as seeder:
        print(f"chainio seed: serving {os.path.abspath(args.root)} on {args.ip}:{seeder.port} "
              f"(transport {args.transport}, at most {args.max_sessions} fetchers at once)",
              flush=True)
        while not stop.wait(args.stats_every or 3600):
            if args.stats_every:
                print(f"chainio seed: {json.dumps(seeder.stats())}", flush=True)
        stats = seeder.stats()
    print(f"chainio seed: stopped; {json.dumps(stats)}", flush=True)
    return 0


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi] (an error message, not a traceback, else)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v
    return parse


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return v


def _add_peer_args(p, seeder: bool) -> None:
    p.add_argument("--token", default=None,
                   help="shared token (default: the CHAINIO_TOKEN environment variable)")
    p.add_argument("--transport", default="auto", choices=("auto", "xdp", "tcp"),
                   help="auto: AF_XDP when both sides can, else TCP (default)")
    p.add_argument("--timeout-ms", type=_int_in(1, 2**31 - 1), default=5000,
                   help="a peer silent this long fails (default 5000)")
    if seeder:
        p.add_argument("--ip", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
        p.add_argument("--port", type=_int_in(0, 65535), default=7700,
                       help="TCP port (default 7700; 0: any free one)")
        p.add_argument("--iface", default="", help="interface for AF_XDP (default: the one of "
                                                   "each connection)")
        p.add_argument("--max-sessions", type=_int_in(1, 1024), default=8,
                       help="fetchers served at once (default 8)")
        p.add_argument("--stats-every", type=_seconds, default=0,
                       help="print the counters every N seconds (default 0: only at exit)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chainio", description="ChainIO command line")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="make a file and compare ChainIO with a read() loop", add_help=False)
    doctor = sub.add_parser("doctor", help="show which I/O paths this machine allows and why")
    doctor.add_argument("checkpoint", nargs="?", default=None,
                        help="also say how many hugetlb pool pages loading this checkpoint takes")
    load = sub.add_parser("load", help="load a safetensors file, directory or index through ChainIO")
    load.add_argument("path", help="a .safetensors file, a checkpoint directory or an index.json")
    load.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    load.add_argument("--compare", action="store_true",
                      help="also load with safetensors.torch.load_file and compare bytes and time")
    load.add_argument("--list", action="store_true", help="print every tensor's dtype and shape")
    load.add_argument("--progress", action="store_true", help="show a progress bar")
    load.add_argument("--peer", action="append", metavar="IP:PORT",
                      help="fetch from this seeder (repeatable); PATH is then relative to its root")
    load.add_argument("--cache-dir", default=None, help="with --peer: keep a local copy here")
    load.add_argument("--local-root", default=None,
                      help="with --peer: read from LOCAL_ROOT/PATH what no seeder delivers")
    _add_peer_args(load, seeder=False)
    seed = sub.add_parser("seed", help="serve the checkpoints under ROOT to fetchers")
    seed.add_argument("root", help="directory whose files are served")
    _add_peer_args(seed, seeder=True)
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "load" and args.peer and (args.compare or args.list):
        ap.error("--compare and --list read local files: they do not go with --peer")
    if args.cmd == "seed":
        try:
            return _seed(args)
        except (OSError, ValueError) as e:
            print(f"chainio seed: {e}", file=sys.stderr)
            return 2
    if args.cmd == "load":
        from .errors import SafetensorError

        try:
            return _load(args)
        except (SafetensorError, OSError, ValueError) as e:
            print(f"chainio load: {e}", file=sys.stderr)
            return 2
    try:
        return _doctor(args)
    except (OSError, ValueError) as e:  # the checkpoint argument
        print(f"chainio doctor: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
