#!/usr/bin/env python3
"""One side of bench/net_bench.py, run inside a network namespace.

    net_peer.py {chainio|kernel} {sink|source} --ip IP [--port P] --plan JSON [options]

`--plan` is {"bulk": [{"size": S, "count": N, "reps": R}, ...],
             "pingpong": [{"size": S, "iters": I, "warmup": W}, ...]}; both sides get the same.
bulk: the source sends `count` objects of `size` bytes in one go (ChainIO: one send() of N
objects; kernel: sendall() of each object back to back on one socket), the sink receives them
into one pre-faulted buffer and confirms; timed on the source from the first byte to the
confirmation. pingpong: the source sends `size` bytes and waits for `size` bytes back, the sink
echoes; per-iteration latency on the source. Each side reports the CPU time (user + sys,
getrusage of its own process) of each timed section. Prints JSON lines; the last is
{"event": "done", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time

import numpy as np


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def filled(nbytes: int, buf: np.ndarray | None = None) -> np.ndarray:
    """A buffer of `nbytes` with random contents, every page already faulted in (`buf`: fill
    the start of that one instead of a new one)."""
    buf = np.empty(max(nbytes, 1), dtype=np.uint8) if buf is None else buf[:max(nbytes, 1)]
    block = np.random.default_rng(7).integers(0, 256, min(len(buf), 1 << 20), dtype=np.uint8)
    for off in range(0, len(buf), len(block)):
        n = min(len(block), len(buf) - off)
        buf[off:off + n] = block[:n]
    return buf


def percentiles(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1000.0
    return {"n": int(a.size), "p50_us": float(np.percentile(a, 50)),
            "p90_us": float(np.percentile(a, 90)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "min_us": float(a.min()), "max_us": float(a.max())}


# ---- ChainIO ---------------------------------------------------------------------------------

def chainio_session(args):
    from chainio_torch import _C

    kw = dict(transport=args.transport, timeout_ms=args.timeout_ms, busy_poll=args.busy_poll)
    if args.arena_bytes and args.role == "source":
        kw["send_arena_bytes"] = args.arena_bytes
    if args.role == "sink":
        L = _C.NetListener(args.ip, args.port, **kw)
        emit({"event": "listening", "port": L.port})
        s = L.accept(timeout_ms=30000)
    else:
        s = _C.net_connect(args.ip, args.port, **kw)
    emit({"event": "session", "kind": s.kind, "fallback_reason": s.fallback_reason})
    return s


def chainio_run(args, plan) -> dict:
    s = chainio_session(args)
    out = {"kind": s.kind, "fallback_reason": s.fallback_reason, "bulk": [], "pingpong": []}
    bulk_bytes = max([b["size"] * b["count"] for b in plan["bulk"]], default=0)
    if args.arena_bytes and args.role == "source":
        # The objects live in the session's send arena (UMEM): frames point at them, no copy.
        arena = np.frombuffer(s, dtype=np.uint8)
        if arena.size < bulk_bytes:
            raise RuntimeError(f"send arena is {arena.size} B, the plan needs {bulk_bytes} B "
                               f"({s.describe()})")
        big = filled(bulk_bytes, arena)
    else:
        big = filled(bulk_bytes)
    mv = memoryview(big)
    for item in plan["bulk"]:
        size, count = item["size"], item["count"]
        objs = [mv[i * size:(i + 1) * size] for i in range(count)]
        for rep in range(item["reps"]):
            c0, t0 = cpu(), time.perf_counter()
            if args.role == "source":
                s.send(objs)
            else:
                s.recv_into(objs)
            dt, dc = time.perf_counter() - t0, cpu() - c0
            r = {"size": size, "count": count, "rep": rep, "seconds": dt, "cpu_s": dc,
                 "bytes": size * count}
            out["bulk"].append(r)
            emit({"event": "bulk", **r})
        del objs
    stats_after_bulk = dict(s.stats())
    for item in plan["pingpong"]:
        size = item["size"]
        a, b = filled(size)[:size], np.zeros(size, np.uint8)
        lat = []
        c0 = None
        for i in range(item["warmup"] + item["iters"]):
            if i == item["warmup"]:
                c0, t_start = cpu(), time.perf_counter()
            t0 = time.perf_counter_ns()
            if args.role == "source":
                s.send([a])
                s.recv_into([b])
            else:
                s.recv_into([b])
                s.send([b])
            if i >= item["warmup"]:
                lat.append(time.perf_counter_ns() - t0)
        r = {"size": size, "cpu_s": cpu() - c0, "seconds": time.perf_counter() - t_start,
             **(percentiles(lat) if args.role == "source" else {"n": len(lat)})}
        out["pingpong"].append(r)
        emit({"event": "pingpong", **r})
    out["stats_after_bulk"] = stats_after_bulk
    out["stats"] = dict(s.stats())
    s.close()
    return out


# ---- kernel TCP ------------------------------------------------------------------------------

def recv_exact(sock, view, spin: bool) -> None:
    got, n = 0, len(view)
    while got < n:
        try:
            k = sock.recv_into(view[got:], 0, socket.MSG_DONTWAIT if spin else 0)
        except BlockingIOError:
            continue
        if k == 0:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k


def kernel_run(args, plan) -> dict:
    if args.role == "sink":
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((args.ip, args.port))
        srv.listen(1)
        srv.settimeout(30)
        emit({"event": "listening", "port": srv.getsockname()[1]})
        sock, _ = srv.accept()
    else:
        sock = socket.create_connection((args.ip, args.port), timeout=30)
    sock.settimeout(None)  # plain blocking calls (a timeout adds a poll() per call); the
    # driver kills a peer that overstays
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    emit({"event": "session", "kind": "kernel-tcp"})
    out = {"kind": "kernel-tcp", "bulk": [], "pingpong": []}
    bulk_bytes = max([b["size"] * b["count"] for b in plan["bulk"]], default=0)
    big = filled(bulk_bytes)
    mv = memoryview(big)
    ack = bytearray(1)
    for item in plan["bulk"]:
        size, count = item["size"], item["count"]
        total = size * count
        for rep in range(item["reps"]):
            c0, t0 = cpu(), time.perf_counter()
            if args.role == "source":
                for i in range(count):
                    sock.sendall(mv[i * size:(i + 1) * size])
                recv_exact(sock, memoryview(ack), False)
            else:
                recv_exact(sock, mv[:total], False)
                sock.sendall(b"k")
            dt, dc = time.perf_counter() - t0, cpu() - c0
            r = {"size": size, "count": count, "rep": rep, "seconds": dt, "cpu_s": dc,
                 "bytes": total}
            out["bulk"].append(r)
            emit({"event": "bulk", **r})
    spin, acked = args.busy_poll, args.acked
    vack = memoryview(bytearray(1))
    if spin:
        sock.setblocking(False)
    for item in plan["pingpong"]:
        size = item["size"]
        a, b = filled(size)[:size], np.zeros(size, np.uint8)
        va, vb = memoryview(a), memoryview(b)
        lat = []
        c0 = None
        for i in range(item["warmup"] + item["iters"]):
            if i == item["warmup"]:
                c0, t_start = cpu(), time.perf_counter()
            t0 = time.perf_counter_ns()
            if args.role == "source":
                _sendall(sock, va, spin)
                if acked:
                    recv_exact(sock, vack, spin)
                recv_exact(sock, vb, spin)
                if acked:
                    _sendall(sock, vack, spin)
            else:
                recv_exact(sock, vb, spin)
                if acked:
                    _sendall(sock, vack, spin)
                _sendall(sock, vb, spin)
                if acked:
                    recv_exact(sock, vack, spin)
            if i >= item["warmup"]:
                lat.append(time.perf_counter_ns() - t0)
        r = {"size": size, "cpu_s": cpu() - c0, "seconds": time.perf_counter() - t_start,
             **(percentiles(lat) if args.role == "source" else {"n": len(lat)})}
        out["pingpong"].append(r)
        emit({"event": "pingpong", **r})
    sock.close()
    return out


def _sendall(sock, view, spin: bool) -> None:
    if not spin:
        sock.sendall(view)
        return
    sent = 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except BlockingIOError:
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("impl", choices=["chainio", "kernel"])
    ap.add_argument("role", choices=["sink", "source"])
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transport", default="auto")
    ap.add_argument("--busy-poll", action="store_true",
                    help="ChainIO: busy_poll=True; kernel: spin on non-blocking sockets")
    ap.add_argument("--acked", action="store_true",
                    help="kernel ping-pong: each message answered by a 1-byte confirmation, "
                         "like ChainIO's send(), which returns once the peer verified it")
    ap.add_argument("--timeout-ms", type=int, default=10000)
    ap.add_argument("--arena-bytes", type=int, default=0,
                    help="ChainIO source: bulk objects in a send arena of this size (UMEM, sent "
                         "without a copy)")
    ap.add_argument("--plan", required=True)
    args = ap.parse_args()
    plan = json.loads(args.plan)
    t0 = time.monotonic()
    try:
        out = (chainio_run if args.impl == "chainio" else kernel_run)(args, plan)
        out["ok"] = True
    except BaseException as e:  # reported, the driver marks the variant failed
        out = {"ok": False, "error": {"type": type(e).__name__, "msg": str(e),
                                      "errno": getattr(e, "errno", None)}}
    out["event"] = "done"
    out["wall_s"] = time.monotonic() - t0
    out["pid"] = os.getpid()
    emit(out)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
