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
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="chainio", description="ChainIO command line")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="make a file and compare ChainIO with a read() loop", add_help=False)
    sub.add_parser("doctor", help="show which I/O paths this machine allows and why")
    args, rest = ap.parse_known_args(argv)
    if args.cmd == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    return _doctor(args)


if __name__ == "__main__":
    sys.exit(main())
