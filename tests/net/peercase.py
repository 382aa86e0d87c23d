"""Helpers of tests/net/test_net_peer.py: weights.py agents in the namespaces of a
netns.Triangle, and a checkpoint written with the `safetensors` package."""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import struct
import time

import netns

WEIGHTS = os.path.join(netns.HERE, "weights.py")
MiB = 1 << 20


class AgentError(AssertionError):
    pass


class Agent:
    """A weights.py process in a namespace; call() sends one command and waits for its reply.

    Events that arrive while waiting for another one are kept (in arrival order) for a later
    wait, so replies of concurrent commands never get lost."""

    def __init__(self, ns: str, name: str, env: dict | None = None, preload: bool = True):
        self.name = name
        self.peer = netns.Peer(ns, ["--preload"] if preload else [], env=env, name=name,
                               script=WEIGHTS, stdin=True)
        self._ids = itertools.count(1)
        self._kept: list[tuple[float, dict]] = []
        self.ready = False

    def wait_ready(self, timeout: float = 60) -> "Agent":
        if not self.ready:
            self.next_event(lambda e: e.get("event") == "ready", timeout)
            self.ready = True
        return self

    @property
    def pid(self) -> int:
        return self.peer.pid

    def alive(self) -> bool:
        return self.peer.p.poll() is None

    def next_event(self, match, timeout: float) -> tuple[float, dict]:
        """(arrival time, event) of the first event satisfying `match`."""
        for i, (t, e) in enumerate(self._kept):
            if match(e):
                del self._kept[i]
                return t, e
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"{self.name}: no awaited event within {timeout:.1f}s\n"
                                 f"{self.describe()}")
            try:
                t, e = self.peer.events.get(timeout=left)
            except queue.Empty:
                continue
            if e.get("event") == "__eof__":
                self.peer.events.put((t, e))
                raise AgentError(f"{self.name}: process ended\n{self.describe()}")
            self.peer.seen.append((t, e))
            if match(e):
                return t, e
            self._kept.append((t, e))

    def send(self, op: str, **kw) -> int:
        cid = next(self._ids)
        self.peer.send_line(json.dumps({"id": cid, "op": op, **kw}))
        return cid

    def reply(self, cid: int, timeout: float = 60) -> tuple[float, dict]:
        return self.next_event(lambda e: e.get("event") == "reply" and e.get("id") == cid,
                               timeout)

    def started(self, cid: int, timeout: float = 30) -> float:
        """Arrival time of the "loading" line of load command `cid`."""
        return self.next_event(lambda e: e.get("event") == "loading" and e.get("id") == cid,
                               timeout)[0]

    def call(self, op: str, timeout: float = 60, **kw) -> dict:
        return self.reply(self.send(op, **kw), timeout)[1]

    def must(self, op: str, timeout: float = 60, **kw) -> dict:
        r = self.call(op, timeout, **kw)
        if not r.get("ok"):
            raise AgentError(f"{self.name}: {op} failed: {fmt(r)}\n{self.describe()}")
        return r

    def describe(self) -> str:
        return self.peer.describe()

    def stop(self) -> None:
        if self.alive():
            try:
                self.peer.send_line(json.dumps({"id": 0, "op": "exit"}))
                self.peer.p.wait(timeout=5)
            except Exception:  # noqa: BLE001 - killed below
                pass
        self.peer.stop()


class CliSeeder:
    """`python3 -m chainio_torch seed ROOT ...` in a namespace (the user's command line)."""

    def __init__(self, ns: str, root: str, ip: str, token: str, *args: str):
        self.peer = netns.Peer(ns, ["chainio_torch", "seed", root, "--ip", ip, "--port", "0",
                                    *args],
                               env={"CHAINIO_TOKEN": token}, name=f"chainio seed {root}",
                               script="-m", text_events=True)
        deadline = time.monotonic() + 60
        try:
            while True:
                _, ev = self.peer.event("text", max(0.1, deadline - time.monotonic()))
                m = re.match(r"chainio seed: serving (\S+) on ([\d.]+):(\d+) ", ev["line"])
                if m:
                    break
        except BaseException:
            self.peer.stop()
            raise
        self.root, self.addr = m.group(1), f"{m.group(2)}:{m.group(3)}"

    def stop(self, timeout: float = 15) -> dict:
        """SIGTERM (the documented way to end it); returns the stats it prints on the way out."""
        self.peer.kill(signal.SIGTERM)
        try:
            deadline = time.monotonic() + timeout
            while True:
                _, ev = self.peer.event("text", max(0.1, deadline - time.monotonic()))
                m = re.match(r"chainio seed: stopped; (\{.*\})$", ev["line"])
                if m:
                    return json.loads(m.group(1))
        finally:
            self.peer.stop()


def fmt(obj) -> str:
    return json.dumps(obj, indent=None, default=str)[:4000]


def data_bytes(path: str) -> int:
    """Bytes of a safetensors file's data region (what a fetch moves after the header)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - n


def by_source(report: list[dict]) -> dict[str, int]:
    """Bytes each source delivered over all files of one load."""
    out: dict[str, int] = {}
    for r in report:
        for s in r.get("sources", []):
            out[s["name"]] = out.get(s["name"], 0) + s["bytes"]
    return out
