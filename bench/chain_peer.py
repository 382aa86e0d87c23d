#!/usr/bin/env python3
"""Helper processes of bench/chain_bench.py (and examples/peer_load), run inside a namespace.

    chain_peer.py baseline-server --ip IP [--port 0] --root ROOT [--io-bytes 1048576]
    chain_peer.py fetch chainio --peer IP:PORT --path REL [--transport auto] --token T
    chain_peer.py fetch baseline --peer IP:PORT --files REL1,REL2,... --root ROOT

baseline-server: the plain way to serve files: for each request (one line with a path relative
to ROOT) it answers the file size (8 bytes, little endian) and then the file, one read() of
--io-bytes from a buffered file descriptor followed by one sendall() of what it read. One
thread per connection. Prints {"event": "listening", "port": P}; serves until killed.

fetch: imports everything first (torch too: `import chainio_torch` is lazy), prints
{"event": "ready"}, waits for one line on stdin (the driver drops the page cache meanwhile),
then times:
  chainio   chainio_torch.load_checkpoint(REL, peers=[PEER], token=T, transport=..., report=r)
  baseline  for each file: request it, recv_into() a buffer allocated for it before the clock
            (chainio_torch.loader.aligned_buffer, as load_checkpoint's own buffers: fresh
            memory, from the hugetlb pool when it has room), until the last byte arrived
and prints {"event": "done", ...} with the monotonic start and end (so that the driver can
combine several fetchers), bytes, the process CPU time (getrusage user + sys, every thread) of
the timed section, peak RSS, the load report, and a check of the data (after the clock):
chainio tensors against the local files' headers and sampled digest (load_worker.check),
baseline buffers against samples of the files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_mem(pid="self") -> dict:
    """VmRSS, VmHWM, HugetlbPages (bytes) and Threads of a process, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "HugetlbPages", "Threads"):
                v = value.split()
                out[key] = int(v[0]) * (1024 if len(v) > 1 else 1) if v else 0
    return out


# ---- the read() + send() baseline server ----------------------------------------------------

def recv_line(sock) -> bytes | None:
    data = bytearray()
    while not data.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            return None
        data += b
    return bytes(data[:-1])


def serve_conn(sock, root: str, io_bytes: int) -> None:
    buf = bytearray(io_bytes)
    mv = memoryview(buf)
    try:
        while True:
            line = recv_line(sock)
            if not line:
                return
            rel = os.path.normpath(line.decode())
            if os.path.isabs(rel) or rel.startswith(".."):
                sock.sendall(struct.pack("<q", -1))
                continue
            with open(os.path.join(root, rel), "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                sock.sendall(struct.pack("<q", size))
                while True:
                    n = f.readinto(buf)  # one read()
                    if not n:
                        break
                    sock.sendall(mv[:n])  # one send() (sendall loops only on a short send)
    except (ConnectionError, OSError):
        return
    finally:
        sock.close()


def baseline_server(args) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.ip, args.port))
    srv.listen(16)
    emit({"event": "listening", "port": srv.getsockname()[1], "pid": os.getpid()})
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(conn, args.root, args.io_bytes),
                         daemon=True).start()


# ---- fetchers -------------------------------------------------------------------------------

def recv_exact(sock, view) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"server closed after {got} of {n} bytes")
        got += k


def fetch_baseline(args) -> dict:
    ip, port = args.peer.rsplit(":", 1)
    rels = [f for f in args.files.split(",") if f]
    sizes = [os.path.getsize(os.path.join(args.root, r)) for r in rels]  # same filesystem
    from chainio_torch.loader import aligned_buffer

    # The same memory load_checkpoint receives into (pool pages when there is room), untouched.
    bufs = [aligned_buffer(s).numpy() for s in sizes]
    emit({"event": "ready", "pid": os.getpid()})
    sys.stdin.readline()
    before = proc_mem()
    c0, t0 = cpu(), time.monotonic()
    sock = socket.create_connection((ip, int(port)), timeout=60)
    sock.settimeout(None)
    hdr = bytearray(8)
    for rel, buf in zip(rels, bufs):
        sock.sendall(rel.encode() + b"\n")
        recv_exact(sock, memoryview(hdr))
        (size,) = struct.unpack("<q", hdr)
        if size != len(buf):
            raise OSError(f"{rel}: server says {size} bytes, expected {len(buf)}")
        recv_exact(sock, memoryview(buf))
    t1, c1 = time.monotonic(), cpu()
    sock.close()
    after = proc_mem()
    problems = []
    for rel, buf in zip(rels, bufs):  # 64 KiB at 8 places of every file
        with open(os.path.join(args.root, rel), "rb") as f:
            for k in range(8):
                off = max(0, min(len(buf) - 65536, len(buf) * k // 8))
                f.seek(off)
                if f.read(65536) != buf[off:off + 65536].tobytes():
                    problems.append(f"{rel}: bytes differ at {off}")
    return {"t_start": t0, "t_end": t1, "seconds": t1 - t0, "cpu_s": c1 - c0,
            "bytes": sum(sizes), "files": len(rels), "rss_before": before.get("VmRSS"),
            "peak_rss": after.get("VmHWM"), "problems": problems, "transports": ["kernel-tcp"]}


def fetch_chainio(args) -> dict:
    import load_worker  # noqa: E402  (headers and the sampled digest)
    import torch  # noqa: F401  (imported before the clock: chainio_torch imports it lazily)

    import chainio_torch

    load = chainio_torch.load_checkpoint
    emit({"event": "ready", "pid": os.getpid(), "module": chainio_torch.__file__})
    sys.stdin.readline()
    before = proc_mem()
    report: list = []
    c0, t0 = cpu(), time.monotonic()
    tensors = load(args.path, peers=[args.peer], token=args.token, transport=args.transport,
                   timeout_ms=args.timeout_ms, report=report)
    t1, c1 = time.monotonic(), cpu()
    after = proc_mem()
    out = {"t_start": t0, "t_end": t1, "seconds": t1 - t0, "cpu_s": c1 - c0,
           "bytes": sum(r["bytes"] for r in report),
           "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
           "fetch_seconds": sum(r["seconds"] for r in report), "files": len(report),
           "rss_before": before.get("VmRSS"), "peak_rss": after.get("VmHWM"),
           "report": report,
           "transports": sorted({s["transport"] for r in report for s in r["sources"]})}
    if args.root:
        paths = load_worker.shard_files(os.path.join(args.root, args.path))
        out["problems"], out["digest"] = load_worker.check(tensors, paths)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("baseline-server")
    s.add_argument("--ip", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--root", required=True)
    s.add_argument("--io-bytes", type=int, default=1 << 20)
    f = sub.add_parser("fetch")
    f.add_argument("impl", choices=["chainio", "baseline"])
    f.add_argument("--peer", required=True, help="IP:PORT")
    f.add_argument("--path", default="", help="chainio: checkpoint path relative to the root")
    f.add_argument("--files", default="", help="baseline: comma separated relative paths")
    f.add_argument("--root", default="", help="the seeder's root on this filesystem (checks)")
    f.add_argument("--transport", default="auto")
    f.add_argument("--token", default=None)
    f.add_argument("--timeout-ms", type=int, default=10000)
    args = ap.parse_args()
    if args.cmd == "baseline-server":
        return baseline_server(args)
    t0 = time.monotonic()
    try:
        out = (fetch_chainio if args.impl == "chainio" else fetch_baseline)(args)
        out["ok"] = not out.get("problems")
        if not out["ok"]:
            out["error"] = {"type": "DataMismatch", "msg": "; ".join(out["problems"])[:1000]}
    except BaseException as e:  # reported; the driver marks the run failed
        out = {"ok": False, "error": {"type": type(e).__name__, "msg": str(e),
                                      "errno": getattr(e, "errno", None),
                                      "traceback": traceback.format_exc()[-2000:]}}
    out.update(event="done", wall_s=time.monotonic() - t0, pid=os.getpid())
    emit(out)
    sys.stdout.flush()
    os._exit(0 if out["ok"] else 1)  # no teardown of GiBs of tensors


if __name__ == "__main__":
    raise SystemExit(main())
