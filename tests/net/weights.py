#!/usr/bin/env python3
"""A long-lived ChainIO weight-distribution agent inside one network namespace (tests/net).

It starts once and then takes commands, one JSON object per line on stdin, each with an "id"
and an "op"; every command runs on a thread of its own and is answered by one line
{"event": "reply", "id": ..., "ok": bool, ...} on stdout. A "load" also prints
{"event": "loading", "id": ...} just before the loader is called and {"event": "loaded", ...}
as it returns (before the comparison), so that a test can time the transfer itself. Errors
come back as {"error": {"type", "errno", "msg", "mro"}}. The first line is {"event": "ready"}.

torch and safetensors are imported before "ready" with --preload, else on first use: an agent
that only runs a `lite` seeder (chainio_torch._C.Seeder, the C++ seeder without the Python
wrapper, which imports torch) starts in a fraction of a second. Tests start such a seeder for
each victim they SIGKILL or SIGSTOP.

Ops (see the test module for the arguments):
  seed         start chainio_torch.Seeder(root, token, ...) under a name; answers its port
  stats        that seeder's stats()
  wait_served  answers once that seeder's bytes_served reaches at_least (or after timeout_s)
  stop_seed    seeder.stop(); answers the final stats
  load         chainio_torch.load_checkpoint / load_file with peers=...; answers the report,
               the time the call took and a bit-exact comparison of every tensor with
               safetensors.torch.load_file of the reference files
  raw          chainio_torch._C.PeerFetcher(...).stat / list / read: what the seeder itself
               answers, without the Python loader's own checks in front
  exit         answers, then exits
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

import chainio_torch

_out_lock = threading.Lock()
_seeders: dict = {}
_load_lock = threading.Lock()  # one load at a time: a Fetcher holds an interface's AF_XDP slot


def emit(obj: dict) -> None:
    line = json.dumps(obj, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def error_info(e: BaseException) -> dict:
    return {"type": type(e).__name__, "errno": getattr(e, "errno", None), "msg": str(e),
            "mro": [c.__name__ for c in type(e).__mro__],
            "trace": traceback.format_exception_only(type(e), e)[-1][:500]}


def as_bytes(t):
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8)


def compare(got: dict, ref_files: list) -> dict:
    """Bit-exact comparison (dtype, shape, every byte) with the safetensors package's load."""
    import safetensors.torch
    import torch

    ref: dict = {}
    for f in ref_files:
        ref.update(safetensors.torch.load_file(f))
    bad = []
    for name in sorted(set(ref) & set(got)):
        a, b = got[name], ref[name]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            bad.append({"name": name, "got": [str(a.dtype), list(a.shape)],
                        "want": [str(b.dtype), list(b.shape)]})
        elif a.numel() and not torch.equal(as_bytes(a), as_bytes(b)):
            diff = (as_bytes(a) != as_bytes(b)).nonzero().reshape(-1)
            bad.append({"name": name, "bad_bytes": int(diff.numel()),
                        "first_offset": int(diff[0])})
    return {"tensors": len(ref), "bytes": sum(t.numel() * t.element_size() for t in ref.values()),
            "missing": sorted(set(ref) - set(got)), "extra": sorted(set(got) - set(ref)),
            "mismatch": bad[:20], "identical": not bad and set(ref) == set(got)}


def op_seed(c: dict) -> dict:
    kw = {k: c[k] for k in ("ip", "port", "transport", "timeout_ms", "max_sessions",
                            "chunk_bytes", "idle_ms") if k in c}
    if c.get("lite"):
        s = chainio_torch._C.Seeder(c["root"], c["token"], **kw)
    else:
        s = chainio_torch.Seeder(c["root"], c.get("token"), **kw)
    _seeders[c.get("name", "seeder")] = s
    return {"port": s.port}


def op_stats(c: dict) -> dict:
    return {"stats": _seeders[c.get("name", "seeder")].stats()}


def op_wait_served(c: dict) -> dict:
    s = _seeders[c.get("name", "seeder")]
    deadline = time.monotonic() + c.get("timeout_s", 30)
    while True:
        st = s.stats()
        if st["bytes_served"] >= c["at_least"]:
            return {"stats": st, "reached": True}
        if time.monotonic() > deadline:
            return {"stats": st, "reached": False}
        time.sleep(0.001)


def op_stop_seed(c: dict) -> dict:
    s = _seeders.pop(c.get("name", "seeder"))
    s.stop()
    return {"stats": s.stats()}


def op_load(c: dict) -> dict:
    fn = getattr(chainio_torch, c.get("api", "load_checkpoint"))
    kw = {k: c[k] for k in ("peers", "token", "transport", "timeout_ms", "cache_dir",
                            "local_root") if k in c}
    report: list = []
    saved = {k: os.environ.get(k) for k in c.get("env", {})}
    with _load_lock:
        os.environ.update(c.get("env", {}))
        try:
            emit({"event": "loading", "id": c["id"]})
            t0 = time.monotonic()
            try:
                got = fn(c["path"], report=report, **kw)
            except BaseException as e:  # noqa: BLE001 - the test judges the error
                return {"ok": False, "error": error_info(e), "report": report,
                        "seconds": time.monotonic() - t0}
            seconds = time.monotonic() - t0
            emit({"event": "loaded", "id": c["id"]})
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    out = {"report": report, "seconds": seconds, "names": len(got)}
    if c.get("ref") is not None:
        out["compare"] = compare(got, c["ref"])
    return out


def op_raw(c: dict) -> dict:
    import torch

    f = chainio_torch._C.PeerFetcher(c["peers"], c["token"], transport=c.get("transport", "auto"),
                                     timeout_ms=c.get("timeout_ms", 5000))
    method = c["method"]
    if method == "stat":
        return {"result": list(f.stat(c["path"]))}
    if method == "list":
        return {"result": [list(x) for x in f.list(c["path"])]}
    if method == "read":
        n = c["length"]
        buf = bytearray(n)
        addr = torch.frombuffer(buf, dtype=torch.uint8).data_ptr() if n else 0
        r = f.read(c["path"], c["size"], [(c.get("offset", 0), n, addr)], keepalive=buf)
        return {"result": r, "head": bytes(buf[:16]).hex()}
    raise ValueError(f"unknown raw method {method!r}")


OPS = {"seed": op_seed, "stats": op_stats, "wait_served": op_wait_served,
       "stop_seed": op_stop_seed, "load": op_load, "raw": op_raw}


def run(c: dict) -> None:
    try:
        out = OPS[c["op"]](c)
        out.setdefault("ok", True)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out = {"ok": False, "error": error_info(e)}
    out.update({"event": "reply", "id": c["id"], "op": c["op"]})
    emit(out)


def main() -> int:
    if "--preload" in sys.argv[1:]:  # the loaders, torch and safetensors: before "ready"
        import importlib

        for mod in ("chainio_torch.loader", "chainio_torch.peer", "safetensors.torch"):
            importlib.import_module(mod)
    emit({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        c = json.loads(line)
        if c["op"] == "exit":
            emit({"event": "reply", "id": c["id"], "op": "exit", "ok": True})
            break
        threading.Thread(target=run, args=(c,), daemon=True).start()
    for s in _seeders.values():
        s.stop()
    emit({"event": "done", "ok": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
