#!/usr/bin/env python3
"""Load a checkpoint from another machine with ChainIO: a seeder in one network namespace, a
fetcher in another, joined by a veth pair (a two-machine setup on one host). Run as root.

    sudo python3 examples/peer_load/run.py [--size-gib 0.5] [--transport auto] [--keep-cache]

1. writes a small Llama-shaped checkpoint (chainio_torch.synth) under --root, once;
2. creates namespaces `chainio-ex-seed-<pid>` (10.78.0.2) and `chainio-ex-fetch-<pid>`
   (10.78.0.1) joined by a veth pair at MTU 9000;
3. starts `python3 -m chainio_torch seed ROOT` in the seeder namespace;
4. drops the page cache (the seeder reads from disk, as after a reboot), unless --keep-cache;
5. in the fetcher namespace: chainio_torch.load_checkpoint(NAME, peers=["10.78.0.2:7700"]),
   which is this script again with --fetch;
6. prints GB/s and CPU time of both sides, then removes everything it created, always.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

SEED_IP, FETCH_IP, PORT = "10.78.0.2", "10.78.0.1", 7700
TOKEN = "peer-load-example"


def sh(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def cpu_of(pid: int) -> float:
    """User + system seconds of every thread of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch(args) -> int:
    """The fetcher side (runs inside the fetcher namespace)."""
    import resource

    import torch  # noqa: F401  (imported before the clock; chainio_torch imports it lazily)

    import chainio_torch

    report: list = []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    tensors = chainio_torch.load_checkpoint(args.name, peers=[f"{SEED_IP}:{PORT}"], token=TOKEN,
                                            transport=args.transport, report=report)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    nbytes = sum(r["bytes"] for r in report)
    sources = {}
    for r in report:
        for s in r["sources"]:
            sources.setdefault(f"{s['name']} ({s['transport']})", 0)
            sources[f"{s['name']} ({s['transport']})"] += s["bytes"]
    print(json.dumps({"tensors": len(tensors), "bytes": nbytes, "seconds": seconds,
                      "cpu_s": cpu, "files": len(report), "sources": sources}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=0.5, help="checkpoint size (default 0.5)")
    ap.add_argument("--root", default="/var/tmp/chainio-peer-example",
                    help="the seeder's directory (the checkpoint goes in ROOT/model)")
    ap.add_argument("--transport", default="auto", choices=("auto", "xdp", "tcp"))
    ap.add_argument("--keep-cache", action="store_true",
                    help="do not drop the page cache before the load")
    ap.add_argument("--fetch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fetch:
        return fetch(args)
    if os.geteuid() != 0:
        ap.error("creates network namespaces and loads XDP programs: run as root")

    from chainio_torch import synth

    model = os.path.join(args.root, "model")
    stamp = synth.generate(model, args.size_gib, 4)
    print(f"checkpoint: {model}: {stamp['tensor_bytes'] / 2**30:.2f} GiB, {stamp['tensors']} "
          f"tensors in 4 shards")

    seed_ns, fetch_ns = f"chainio-ex-seed-{os.getpid()}", f"chainio-ex-fetch-{os.getpid()}"
    seeder = None
    # Ctrl-C and kill both end in the `finally` below, which removes what was created.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for ns in (seed_ns, fetch_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "veth-f", "netns", fetch_ns, "type", "veth",
           "peer", "name", "veth-s", "netns", seed_ns)
        for ns, dev, ip in ((seed_ns, "veth-s", SEED_IP), (fetch_ns, "veth-f", FETCH_IP)):
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "9000", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        print(f"namespaces: {seed_ns} ({SEED_IP}) <-veth, MTU 9000-> {fetch_ns} ({FETCH_IP})")

        env = dict(os.environ, CHAINIO_TOKEN=TOKEN)
        seeder = subprocess.Popen(
            ["ip", "netns", "exec", seed_ns, sys.executable, "-u", "-m", "chainio_torch", "seed",
             args.root, "--ip", SEED_IP, "--port", str(PORT), "--transport", args.transport],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in seeder.stdout:  # `ip netns exec` execs: seeder.pid is the seeder's pid
            print(f"  seeder> {line.rstrip()}")
            if line.startswith("chainio seed: serving"):
                break
        else:
            raise RuntimeError("the seeder exited before serving")

        if not args.keep_cache:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
            print("page cache dropped: the seeder reads from disk")
        cpu0 = cpu_of(seeder.pid)
        out = subprocess.run(
            ["ip", "netns", "exec", fetch_ns, sys.executable, os.path.abspath(__file__),
             "--fetch", "--transport", args.transport], capture_output=True, text=True)
        seeder_cpu = cpu_of(seeder.pid) - cpu0
        if out.returncode != 0:
            print(out.stdout + out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        seeder.send_signal(signal.SIGTERM)
        rest, _ = seeder.communicate(timeout=30)
        for line in rest.splitlines():
            print(f"  seeder> {line}")
        seeder = None

        gb = r["bytes"] / 1e9
        print(f"\nfetched {r['tensors']} tensors, {gb:.3f} GB in {r['files']} files, "
              f"{r['seconds']:.2f} s: {gb / r['seconds']:.2f} GB/s")
        for name, nbytes in r["sources"].items():
            print(f"  from {name}: {nbytes / 1e9:.3f} GB")
        print(f"fetcher CPU: {r['cpu_s']:.2f} s ({r['cpu_s'] / gb:.3f} CPU-s/GB)")
        print(f"seeder CPU:  {seeder_cpu:.2f} s ({seeder_cpu / gb:.3f} CPU-s/GB)")
        return 0
    finally:
        if seeder is not None and seeder.poll() is None:
            seeder.kill()
            seeder.wait()
        for ns in (seed_ns, fetch_ns):  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        print("cleaned up: namespaces removed")


if __name__ == "__main__":
    raise SystemExit(main())
