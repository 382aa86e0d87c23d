"""The `chainio` command."""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys


def _doctor(_args) -> int:
    from . import Engine, __version__

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
            print(f"vm.nr_hugepages = {f.read().strip()}")
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
    from .loader import checkpoint_files, load_checkpoint, same_bytes

    files = checkpoint_files(args.path)
    engine = default_engine()
    before = engine.stats()
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chainio", description="ChainIO command line")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="make a file and compare ChainIO with a read() loop", add_help=False)
    sub.add_parser("doctor", help="show which I/O paths this machine allows and why")
    load = sub.add_parser("load", help="load a safetensors file, directory or index through ChainIO")
    load.add_argument("path", help="a .safetensors file, a checkpoint directory or an index.json")
    load.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    load.add_argument("--compare", action="store_true",
                      help="also load with safetensors.torch.load_file and compare bytes and time")
    load.add_argument("--list", action="store_true", help="print every tensor's dtype and shape")
    load.add_argument("--progress", action="store_true", help="show a progress bar")
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.cmd == "load":
        from .errors import SafetensorError

        try:
            return _load(args)
        except (SafetensorError, OSError, ValueError) as e:
            print(f"chainio load: {e}", file=sys.stderr)
            return 2
    return _doctor(args)


if __name__ == "__main__":
    sys.exit(main())
