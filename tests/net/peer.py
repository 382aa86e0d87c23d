#!/usr/bin/env python3
"""One side of a ChainIO network test, run inside a network namespace by tests/net.

Prints one JSON object per line on stdout ("event": listening | session | round | done | ...);
the last line is always {"event": "done", "ok": bool, ...} unless the process is killed.
Payloads are deterministic pseudo-random bytes, so the receiver knows what it must get:
object i of round r is payload(seed, r, i, size) (round 0 for every round with --loop).

Modes:
  serve   listen on --bind, accept one peer, receive --rounds sends (or until error with --loop)
  send    connect to --connect:--port, send --sizes (one send() per round, all objects at once)
  icmp-ping        ICMP echo with a raw socket (used when the `ping` binary is missing)
  tcp-echo-server  plain kernel TCP: accept one client, read its bytes, answer with their digest
  tcp-echo-client  plain kernel TCP: send --sizes[0] payload bytes, compare the digest answered
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time

try:  # the C++ side uses xxh3; any strong digest does for comparing both ends
    import xxhash  # type: ignore

    def digest(buf) -> str:
        return "xxh3:" + xxhash.xxh3_128_hexdigest(buf)
except ImportError:  # pragma: no cover - depends on the machine
    def digest(buf) -> str:
        return "b2:" + hashlib.blake2b(buf, digest_size=16).hexdigest()


def parse_size(text: str) -> int:
    text = text.strip()
    mult = 1
    for suffix, m in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10),
                      ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            text, mult = text[: -len(suffix)], m
            break
    return int(text) * mult


def parse_sizes(text: str) -> list[int]:
    return [parse_size(x) for x in text.split(",") if x.strip() != ""] if text else []


def payload(seed: int, rnd: int, index: int, size: int):
    """Deterministic bytes for object `index` of round `rnd`: a writable numpy uint8 array."""
    import numpy as np

    words = (size + 7) // 8
    rng = np.random.Generator(np.random.PCG64([seed, rnd, index, size]))
    raw = rng.bit_generator.random_raw(words) if words else np.zeros(0, np.uint64)
    return raw.astype(np.uint64, copy=False).view(np.uint8)[:size]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def error_info(e: BaseException) -> dict:
    return {"type": type(e).__name__, "errno": getattr(e, "errno", None), "msg": str(e),
            "mro": [c.__name__ for c in type(e).__mro__], "is_oserror": isinstance(e, OSError)}


def load_c():
    from chainio_torch import _C

    return _C


def session_info(s) -> dict:
    return {"kind": s.kind, "fallback_reason": s.fallback_reason}


def safe_stats(s) -> dict | None:
    try:
        return dict(s.stats())
    except Exception as e:  # noqa: BLE001 - report, do not mask the real error
        return {"__error__": repr(e)}


def first_mismatch(got, want) -> dict | None:
    import numpy as np

    a = np.frombuffer(got, dtype=np.uint8)
    b = np.frombuffer(want, dtype=np.uint8)
    if a.size != b.size:
        return {"got_size": int(a.size), "want_size": int(b.size)}
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return None
    return {"first_offset": int(diff[0]), "bad_bytes": int(diff.size),
            "last_offset": int(diff[-1])}


def net_kwargs(args) -> dict:
    return {"transport": args.transport, "ifname": args.ifname, "timeout_ms": args.timeout_ms,
            "busy_poll": args.busy_poll}


def cmd_serve(args) -> dict:
    C = load_c()
    L = C.NetListener(args.bind, args.port, **net_kwargs(args))
    emit({"event": "listening", "port": L.port})
    s = L.accept(timeout_ms=args.accept_timeout_ms)
    out = {"rounds": 0, **session_info(s)}
    emit({"event": "session", **session_info(s)})
    want_sizes = parse_sizes(args.sizes) if args.sizes is not None else None
    rnd = 0
    into_bufs = None  # reused across rounds when nothing is checked (--check none)
    cpu0, t0 = cpu_seconds(), time.monotonic()
    try:
        while args.loop or rnd < args.rounds:
            key = 0 if args.loop else rnd
            t_call = time.monotonic()
            try:
                if args.into:
                    if into_bufs is None or args.check == "full":
                        into_bufs = [bytearray(n) for n in want_sizes]
                    bufs = into_bufs
                    r = s.recv_into(bufs)
                    if r is not None:
                        out.setdefault("recv_into_returned", repr(r)[:100])
                    objs = bufs
                else:
                    objs = s.recv()
            except BaseException as e:
                out["error"] = error_info(e)
                out["error"]["elapsed_in_call"] = time.monotonic() - t_call
                out["error"]["round"] = rnd
                break
            elapsed = time.monotonic() - t_call
            sizes = [len(o) for o in objs]
            info = {"event": "round", "round": rnd, "sizes": sizes, "elapsed": elapsed,
                    "types": sorted({type(o).__name__ for o in objs})}
            if args.check == "full":
                info["digests"] = [digest(o) for o in objs]
                bad = {}
                for i, o in enumerate(objs):
                    m = first_mismatch(o, payload(args.seed, key, i, len(o)))
                    if m:
                        bad[i] = m
                info["mismatch"] = bad
                info["match"] = not bad and (want_sizes is None or sizes == want_sizes)
            emit(info)
            rnd += 1
            del objs
    finally:
        out["rounds"] = rnd
        out["elapsed"] = time.monotonic() - t0
        out["cpu_s"] = cpu_seconds() - cpu0
        out["stats"] = safe_stats(s)
        if not args.no_close:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                out["close_error"] = error_info(e)
    out["ok"] = "error" not in out
    return out


def cmd_send(args) -> dict:
    C = load_c()
    t_conn = time.monotonic()
    try:
        s = C.net_connect(args.connect, args.port, **net_kwargs(args),
                          send_arena_bytes=args.arena_bytes)
    except BaseException as e:
        err = error_info(e)
        err["elapsed_in_call"] = time.monotonic() - t_conn
        return {"ok": False, "rounds": 0, "error": err, "stage": "connect"}
    out = {"rounds": 0, **session_info(s)}
    arena = None
    if args.arena_bytes:
        import numpy as np

        arena = np.frombuffer(s, dtype=np.uint8)  # the send arena: empty without one
        out["arena_bytes"] = int(arena.size)
    emit({"event": "session", **session_info(s)})
    sizes = parse_sizes(args.sizes)
    rnd = 0
    cached = None
    cpu0, t0 = cpu_seconds(), time.monotonic()
    try:
        while args.loop or rnd < args.rounds:
            if args.wait_stdin:
                if not sys.stdin.readline():
                    break
            key = 0 if args.loop else rnd
            if cached is None or not args.loop:
                objs = [payload(args.seed, key, i, n) for i, n in enumerate(sizes)]
                if arena is not None and arena.size >= sum(sizes):
                    # Write the objects into the arena, back to back, and send those views.
                    placed, off = [], 0
                    for o in objs:
                        arena[off:off + o.size] = o
                        placed.append(arena[off:off + o.size])
                        off += o.size
                    objs = placed
                digests = [digest(o) for o in objs]
                cached = (objs, digests)
            objs, digests = cached
            emit({"event": "sending", "round": rnd})
            t_call = time.monotonic()
            try:
                r = s.send(objs)
            except BaseException as e:
                out["error"] = error_info(e)
                out["error"]["elapsed_in_call"] = time.monotonic() - t_call
                out["error"]["round"] = rnd
                break
            emit({"event": "round", "round": rnd, "sizes": sizes, "digests": digests,
                  "elapsed": time.monotonic() - t_call,
                  **({"send_returned": repr(r)[:100]} if r is not None else {})})
            rnd += 1
        if args.wait_stdin and "error" not in out:
            sys.stdin.readline()
    finally:
        out["rounds"] = rnd
        out["elapsed"] = time.monotonic() - t0
        out["cpu_s"] = cpu_seconds() - cpu0
        out["stats"] = safe_stats(s)
        try:
            s.close()
        except Exception as e:  # noqa: BLE001
            out["close_error"] = error_info(e)
    out["ok"] = "error" not in out
    return out


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def cmd_icmp_ping(args) -> dict:
    """`ping -c N -W T` equivalent: N echo requests, each answered within T seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    replies, rtts = 0, []
    for seq in range(1, args.count + 1):
        body = struct.pack("!d", time.time()) + b"chainio" * 4
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, _icmp_checksum(hdr + body), ident, seq) + body
        t0 = time.monotonic()
        sock.sendto(pkt, (args.connect, 0))
        deadline = t0 + args.wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                break
            data, addr = sock.recvfrom(2048)
            ihl = (data[0] & 0xF) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if typ == 0 and rid == ident and rseq == seq and addr[0] == args.connect:
                replies += 1
                rtts.append(time.monotonic() - t0)
                break
        time.sleep(0.05)
    return {"ok": replies == args.count, "sent": args.count, "received": replies, "rtts": rtts}


def cmd_tcp_echo_server(args) -> dict:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(args.accept_timeout_ms / 1000)
    emit({"event": "listening", "port": srv.getsockname()[1]})
    conn, _ = srv.accept()
    conn.settimeout(args.timeout_ms / 1000)
    (size,) = struct.unpack("!Q", _recv_exact(conn, 8))
    data = _recv_exact(conn, size)
    conn.sendall(digest(data).encode().ljust(64))
    conn.close()
    return {"ok": True, "size": size, "digest": digest(data)}


def _recv_exact(conn, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"peer closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def cmd_tcp_echo_client(args) -> dict:
    size = parse_sizes(args.sizes)[0]
    data = payload(args.seed, 0, 0, size).tobytes()
    conn = socket.create_connection((args.connect, args.port), timeout=args.timeout_ms / 1000)
    conn.sendall(struct.pack("!Q", size) + data)
    answer = _recv_exact(conn, 64).decode().strip()
    conn.close()
    return {"ok": answer == digest(data), "size": size, "digest": digest(data), "answer": answer}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["serve", "send", "icmp-ping", "tcp-echo-server",
                                     "tcp-echo-client"])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--connect", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--transport", default="auto")
    ap.add_argument("--ifname", default="")
    ap.add_argument("--timeout-ms", type=int, default=5000)
    ap.add_argument("--accept-timeout-ms", type=int, default=20000)
    ap.add_argument("--busy-poll", action="store_true")
    ap.add_argument("--arena-bytes", type=int, default=0,
                    help="send: ask for a send arena of this size and send from it")
    ap.add_argument("--sizes", default=None, help="comma list, suffixes K/M/G (KiB...)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--loop", action="store_true", help="repeat until an error (round 0 data)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--into", action="store_true", help="serve: recv_into(--sizes buffers)")
    ap.add_argument("--check", choices=["full", "none"], default="full")
    ap.add_argument("--wait-stdin", action="store_true",
                    help="send: read a line from stdin before each round and before closing")
    ap.add_argument("--no-close", action="store_true", help="serve: do not call close()")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--wait", type=float, default=1.0)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.monotonic()
    fn = {"serve": cmd_serve, "send": cmd_send, "icmp-ping": cmd_icmp_ping,
          "tcp-echo-server": cmd_tcp_echo_server, "tcp-echo-client": cmd_tcp_echo_client}
    try:
        out = fn[args.mode](args)
    except BaseException as e:  # setup failed (listener, accept, import): report, exit 1
        out = {"ok": False, "error": error_info(e), "stage": "setup"}
    out["event"] = "done"
    out["wall_s"] = time.monotonic() - t0
    emit(out)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
