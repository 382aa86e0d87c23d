"""Weight distribution between machines (issue 6): a seeder S and two fetchers F1 and F2, each
in its own network namespace, joined as a triangle (netns.Triangle, MTU 9000), plus a relayed
S<->F1 wire (MTU 1500) through relay.py, the user-space netem, for delays and corruption.

Every host runs weights.py, an agent that imports torch once and takes commands; the fetchers
call the user-facing loaders (chainio_torch.load_checkpoint / load_file with peers=...) and
compare every tensor, bit for bit, with safetensors.torch.load_file of the seeder's files.
S serves ROOT with chainio_torch.Seeder; F2 relays its cache_dir with `python3 -m chainio_torch
seed`. A seeder that a test kills or freezes is a separate, throw-away process in S (a `lite`
agent: chainio_torch._C.Seeder, which starts without importing torch).

Run as root:  python3 -m pytest -q tests/net/test_net_peer.py
"""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
import signal
import time

import pytest

import netns
from peercase import Agent, CliSeeder, MiB, by_source, data_bytes, fmt

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

TOKEN = "net-peer-token"
SHARDS = [f"ck/model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
INDEX = "ck/model.safetensors.index.json"
TRANSPORTS = ["xdp", "tcp"]
STALL_MS = 1000        # fetcher timeout in the stall tests
SLACK_S = 4.0          # process scheduling and the rest of the transfer on a busy 2-core VM
KILL_NOTICED_S = 3.0   # kill -> load complete, well under the kill tests' timeout_ms of 5 s
SLOW_WIRE = "delay 10ms"  # S<->F1 through the relay: 16 MiB take ~0.6 s (tcp) to ~1 s (xdp)


# ---------------------------------------------------------------------------------------------
# the checkpoint


class Checkpoint:
    def __init__(self, base: str):
        self.base = base
        self.root = os.path.join(base, "root")        # what S serves
        self.local = os.path.join(base, "local")      # a fetcher's own copy (local_root)
        self.outside = os.path.join(base, "outside")  # next to ROOT, never served
        self.shards = [os.path.join(self.root, s) for s in SHARDS]
        os.makedirs(os.path.join(self.root, "ck"))
        os.makedirs(self.outside)
        gen = torch.Generator().manual_seed(6)
        weight_map = {}
        for i, path in enumerate(self.shards):
            rows = (16 * MiB) // (4099 * 2)  # ~16 MiB of bf16 whose rows are not 4 KiB multiples
            tensors = {
                f"layers.{i}.w": torch.randn(rows, 4099, generator=gen).to(torch.bfloat16),
                f"layers.{i}.b": torch.randn(1031, generator=gen),
                f"layers.{i}.h": torch.randn(77, 3, generator=gen).to(torch.float16),
                f"layers.{i}.step": torch.tensor(i + 1, dtype=torch.int64),
                f"layers.{i}.empty": torch.empty(0, 7, dtype=torch.float16),
                f"layers.{i}.mask": torch.rand(999, generator=gen) > 0.5,
                f"layers.{i}.u8": torch.randint(0, 256, (12345,), generator=gen,
                                                dtype=torch.uint8),
            }
            st.save_file(tensors, path, metadata={"format": "pt"})
            weight_map.update({k: os.path.basename(path) for k in tensors})
        with open(os.path.join(self.root, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
        self.data = {s: data_bytes(p) for s, p in zip(SHARDS, self.shards)}
        self.total = sum(self.data.values())
        # Most a seeder can serve before the first data chunk: the index and the 64 KiB
        # header prefix of each shard (the headers here are far shorter than 64 KiB).
        self.preamble = os.path.getsize(os.path.join(self.root, INDEX)) + len(SHARDS) * 65536
        shutil.copytree(os.path.join(self.root, "ck"), os.path.join(self.local, "ck"))
        # What must be refused: a symlink to a file outside, a symlink to a directory outside,
        # a FIFO. What must not: a relative symlink that stays inside ROOT.
        secret = os.path.join(self.outside, "secret.safetensors")
        st.save_file({"secret": torch.arange(10)}, secret)
        os.symlink(secret, os.path.join(self.root, "escape.safetensors"))
        os.symlink(self.outside, os.path.join(self.root, "escape_dir"))
        os.symlink(SHARDS[0], os.path.join(self.root, "inner.safetensors"))
        os.mkfifo(os.path.join(self.root, "pipe.safetensors"))
        with open(os.path.join(self.root, "README"), "w") as f:
            f.write("hello\n")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    c = Checkpoint(str(tmp_path_factory.mktemp("netpeer")))
    yield c
    shutil.rmtree(c.base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the hosts


class Hosts:
    """The triangle, one agent per host, and S's seeder on ROOT (all interfaces)."""

    def __init__(self, tri: netns.Triangle, ck: Checkpoint):
        self.tri, self.ck = tri, ck
        self.extra: list = []  # victims and CLI seeders, stopped by close()
        env = {"CHAINIO_TOKEN": ""}  # only what a test passes counts
        self.agents = [Agent(tri.ns(h), h.upper(), env=env) for h in ("s", "f1", "f2")]
        self.s, self.f1, self.f2 = self.agents
        try:
            for a in self.agents:  # started together: their torch imports overlap
                a.wait_ready(90)
            self.port = self.s.must("seed", root=ck.root, token=TOKEN,
                                    chunk_bytes=2 * MiB)["port"]
        except BaseException:
            self.close()
            raise

    def seeder(self, fetcher: str, via: str = "s") -> str:
        """S's address as `fetcher` reaches it ("f1r": F1 through the relay)."""
        return f"{self.tri.ip('s', via if via != 's' else fetcher)}:{self.port}"

    def s_stats(self) -> dict:
        return self.s.must("stats")["stats"]

    def victim(self, timeout_ms: int = 5000) -> tuple[Agent, int]:
        """A throw-away seeder on ROOT in S, 1 MiB chunks (so bytes_served moves per MiB)."""
        a = Agent(self.tri.ns("s"), "S-victim", preload=False)
        self.extra.append(a)
        a.wait_ready(30)
        port = a.must("seed", root=self.ck.root, token=TOKEN, lite=True, chunk_bytes=MiB,
                      timeout_ms=timeout_ms)["port"]
        return a, port

    def close(self) -> None:
        for a in self.extra + self.agents:
            a.stop()


@pytest.fixture(scope="module")
def tri(chainio_net):
    t = netns.Triangle(mtu=9000, relayed=True, relay_mtu=1500)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(scope="module")
def hosts(tri, ck):
    h = None
    try:
        h = Hosts(tri, ck)
        yield h
    finally:
        if h is not None:
            h.close()


@pytest.fixture(scope="module")
def relay_f2(hosts, tri, ck):
    """F2 fetched the checkpoint into its cache_dir and serves it with `chainio seed` on its
    F1 link: a second source for F1. Yields its "ip:port"."""
    cache = os.path.join(ck.base, "cache-f2")
    r = hosts.f2.must("load", path=INDEX, peers=[hosts.seeder("f2")], token=TOKEN,
                      cache_dir=cache, ref=ck.shards)
    assert r["compare"]["identical"], fmt(r["compare"])
    cli = CliSeeder(tri.ns("f2"), cache, tri.ip("f2", "f1"), TOKEN)
    try:
        yield cli.addr
    finally:
        stats = cli.stop()
        assert stats["requests"] > 0, f"the relay seeder was never asked anything: {stats}"


@pytest.fixture
def wire(tri):
    """Starts relay.py on the relayed S<->F1 wire with a netem spec; stopped after the test."""
    started = []

    def start(spec: str, seed: int = 1):
        started.append(tri.start_relay(spec, seed))

    yield start
    if started and tri.relay_peer is not None:
        tri.stop_relay()


def load(agent: Agent, path: str, peers: list[str], ck: Checkpoint, timeout: float = 90,
         **kw) -> dict:
    return agent.call("load", timeout, path=path, peers=peers, ref=ck.shards, **kw)


def check_identical(r: dict, who: str) -> None:
    assert r.get("ok"), f"{who}: the load failed: {fmt(r)}"
    c = r["compare"]
    assert c["identical"], f"{who}: tensors differ from safetensors.torch.load_file: {fmt(c)}"
    assert c["tensors"] == 7 * len(SHARDS), fmt(c)


def check_report(r: dict, ck: Checkpoint, sources: list[str], transport: str | None = None,
                 shards: list[str] = SHARDS) -> None:
    """One entry per shard, fetched (not cached), every byte of its data region delivered by
    the listed sources, each on `transport` and without error."""
    rep = r["report"]
    assert [e["path"] for e in rep] == shards, fmt(rep)
    for e in rep:
        assert not e["from_cache"], fmt(e)
        assert [s["name"] for s in e["sources"]] == sources, fmt(e)
        assert e["bytes"] == ck.data[e["path"]] == sum(s["bytes"] for s in e["sources"]), fmt(e)
        for s in e["sources"]:
            assert s["error"] == "", f"{s['name']} failed: {fmt(e)}"
            if transport is not None and s["bytes"]:
                assert s["transport"] == transport, \
                    f"asked for {transport}, {s['name']} ran on {s['transport']!r}: {fmt(e)}"


# ---------------------------------------------------------------------------------------------
# 1, 7: bytes identical to a local load, on AF_XDP and on TCP, two fetchers at once


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_two_fetchers_get_identical_tensors(hosts, ck, transport):
    """F1 (by index) and F2 (by directory) load the checkpoint from S at the same time. xdp:
    transport="auto" must pick AF_XDP here (root, veth); tcp: CHAINIO_TRANSPORT=tcp."""
    env = {"CHAINIO_TRANSPORT": "tcp"} if transport == "tcp" else {}
    before = hosts.s_stats()
    jobs = {name: (agent, agent.send("load", path=path, peers=[hosts.seeder(name)], token=TOKEN,
                                     env=env, ref=ck.shards))
            for name, agent, path in (("f1", hosts.f1, INDEX), ("f2", hosts.f2, "ck"))}
    for name, (agent, cid) in jobs.items():
        _, r = agent.reply(cid, 90)
        check_identical(r, name)
        check_report(r, ck, [hosts.seeder(name)], transport)
    after = hosts.s_stats()
    served = after["bytes_served"] - before["bytes_served"]
    assert served >= 2 * ck.total, f"{before} -> {after}"
    assert after["sessions"] - before["sessions"] >= 2, f"{before} -> {after}"
    xdp = after["xdp_sessions"] - before["xdp_sessions"]
    if transport == "xdp":
        assert xdp >= 2, f"not every session ran on AF_XDP: {before} -> {after}"
        # MTU 9000: multi-buffer frames point at the seeder's read buffers (no copy).
        assert after["bytes_zero_copy"] > before["bytes_zero_copy"], f"{before} -> {after}"
    else:
        assert xdp == 0, f"CHAINIO_TRANSPORT=tcp, yet AF_XDP sessions: {before} -> {after}"


def test_fetchers_arriving_as_one_leaves_get_their_own_buffers(hosts, ck):
    """Each seeder session reads into chunk buffers of its own (a slot of the seeder's pool).
    Here a fetcher leaves and, within the seeder's 100 ms accept wait, two others arrive and
    read at once over TCP (TCP sessions, unlike AF_XDP ones at MTU 9000, read into the pool):
    every byte must still be right, or else the load must fail, never return other bytes."""
    env = {"CHAINIO_TRANSPORT": "tcp"}
    for rnd in range(3):
        hosts.f1.must("raw", method="stat", path=SHARDS[0], peers=[hosts.seeder("f1")],
                      token=TOKEN, transport="tcp")  # a session that opens and ends
        deadline = time.monotonic() + 10
        while hosts.s_stats()["active"]:
            assert time.monotonic() < deadline, "the seeder kept the session open"
        jobs = [(name, agent, agent.send("load", path=INDEX, peers=[hosts.seeder(name)],
                                         token=TOKEN, env=env, ref=ck.shards))
                for name, agent in (("f1", hosts.f1), ("f2", hosts.f2))]
        for name, agent, cid in jobs:
            _, r = agent.reply(cid, 90)
            if r.get("ok"):
                check_identical(r, f"{name}, round {rnd}")
            else:
                pytest.fail(f"{name}, round {rnd}: a load from a healthy seeder on a clean "
                            f"wire failed: {fmt(r['error'])}")


def test_no_seeder_reachable(hosts, ck):
    """Nothing listens on the seeder address: OSError naming it; with local_root the local
    copy is loaded instead (and the report says so)."""
    dead = f"{hosts.tri.ip('s', 'f2')}:1"
    err = call_error(load(hosts.f2, INDEX, [dead], ck, token=TOKEN))
    assert "OSError" in err["mro"] and err["errno"] in (errno.ECONNREFUSED, errno.EHOSTUNREACH), \
        fmt(err)
    assert dead in err["msg"], fmt(err)
    r = load(hosts.f2, INDEX, [dead], ck, token=TOKEN, local_root=ck.local)
    check_identical(r, "f2 (local copy)")
    for e in r["report"]:
        assert [(x["transport"], x["bytes"]) for x in e["sources"]] == \
            [("local", os.path.getsize(os.path.join(ck.local, e["path"])))], fmt(e)


# ---------------------------------------------------------------------------------------------
# 2: striping across the seeder and a fetcher relaying its cache


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_striped_across_seeder_and_relay(hosts, ck, relay_f2, transport):
    peers = [hosts.seeder("f1"), relay_f2]
    r = load(hosts.f1, INDEX, peers, ck, token=TOKEN, transport=transport)
    check_identical(r, "f1")
    check_report(r, ck, peers, transport)
    got = by_source(r["report"])
    assert all(got[p] > 0 for p in peers), f"not striped over both sources: {got}"


# ---------------------------------------------------------------------------------------------
# 3: a seeder killed or frozen in the middle of a transfer


def interrupt(hosts, ck, wire, relay, transport, fallback, sig, timeout_ms=5000):
    """F1 loads the checkpoint from a victim seeder on the slow relayed wire (+ the F2 relay or
    its local copy); once the victim has delivered its first data chunk (one more is in flight
    for ≥ a round trip of 20 ms), it gets `sig`. Returns (load reply, seconds from the signal
    to the end of the load, victim address, the victim's stats just before the signal)."""
    wire(SLOW_WIRE)
    victim, vport = hosts.victim()
    vaddr = f"{hosts.tri.ip('s', 'f1r')}:{vport}"
    peers = [vaddr] + ([relay] if fallback == "relay" else [])
    extra = {"local_root": ck.local} if fallback == "local" else {}
    cid = hosts.f1.send("load", path=INDEX, peers=peers, token=TOKEN, transport=transport,
                        timeout_ms=timeout_ms, ref=ck.shards, **extra)
    try:
        hosts.f1.started(cid)
        w = victim.must("wait_served", at_least=ck.preamble + 1, timeout_s=20)
        assert w["reached"], f"the victim never served a data chunk: {fmt(w)}"
        t_sig = victim.peer.kill(sig)
        t_loaded, r = hosts.f1.next_event(
            lambda e: e.get("event") in ("loaded", "reply") and e.get("id") == cid, 60)
        if r["event"] == "loaded":  # the reply follows once the tensors are compared
            _, r = hosts.f1.reply(cid, 60)
    finally:
        victim.peer.kill(signal.SIGKILL)
    return r, t_loaded - t_sig, vaddr, w["stats"]


def check_failover(r, ck, vaddr, fallback, victim_stats):
    """Identical tensors; the victim delivered part of one file and then failed (so it failed
    mid-transfer, not between requests); the rest came from the other source."""
    check_identical(r, "f1")
    rep = r["report"]
    assert [e["path"] for e in rep] == SHARDS, fmt(rep)
    mid = []
    for e in rep:
        names = [s["name"] for s in e["sources"]]
        assert names[0] == vaddr, fmt(e)
        assert e["bytes"] == ck.data[e["path"]] == sum(s["bytes"] for s in e["sources"]), fmt(e)
        v = e["sources"][0]
        if v["error"] and 0 < v["bytes"] < e["bytes"]:
            mid.append(e)
    assert mid, f"no file shows the victim failing in the middle of its transfer: {fmt(rep)}"
    assert victim_stats["bytes_served"] < ck.total, fmt(victim_stats)
    others = by_source(rep)
    rest = sum(n for name, n in others.items() if name != vaddr)
    assert rest > 0, f"nothing came from the remaining source: {others}"
    if fallback == "local":
        assert any(s["name"].startswith("local:") and s["transport"] == "local"
                   for e in rep for s in e["sources"]), fmt(rep)
    return mid[0]["sources"][0]["error"]


CASES = [(f, t) for f in ("relay", "local") for t in TRANSPORTS]


@pytest.mark.parametrize("fallback,transport", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_seeder_sigkilled_mid_transfer(hosts, ck, wire, tri, relay_f2, fallback, transport):
    r, waited, vaddr, vstats = interrupt(hosts, ck, wire, relay_f2, transport, fallback,
                                         signal.SIGKILL)
    why = check_failover(r, ck, vaddr, fallback, vstats)
    # A dead seeder's connection is reset at once: noticed without waiting for timeout_ms.
    assert "timed out" not in why, why
    assert waited < KILL_NOTICED_S, f"the load ended {waited:.2f}s after the kill: {why}"
    if transport == "xdp":  # the victim's XDP program went with its process
        gone, details = tri.wait_xdp_detached("s", "f1r", 3.0)
        assert gone, f"XDP program still attached after SIGKILL of the seeder:\n{details}"


@pytest.mark.parametrize("fallback,transport", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_seeder_sigstopped_mid_transfer(hosts, ck, wire, relay_f2, fallback, transport):
    """A frozen seeder keeps its connection open: only timeout_ms can tell. Its piece cannot
    be finished by anyone else before that, so the load ends no sooner than the timeout."""
    r, waited, vaddr, vstats = interrupt(hosts, ck, wire, relay_f2, transport, fallback,
                                         signal.SIGSTOP, timeout_ms=STALL_MS)
    why = check_failover(r, ck, vaddr, fallback, vstats)
    assert "timed out" in why and f"timeout_ms {STALL_MS}" in why, f"not a timeout: {why}"
    assert STALL_MS / 1000 * 0.9 <= waited < STALL_MS / 1000 + SLACK_S, \
        f"the load ended {waited:.2f}s after the seeder froze (timeout_ms={STALL_MS}): {why}"


# ---------------------------------------------------------------------------------------------
# 4: frames corrupted on the wire


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_corrupted_frames_are_resent_not_delivered(hosts, ck, wire, tri, transport):
    """relay.py flips a bit in 1% of the S->F1 frames (AF_XDP's UDP frames; TCP segments, whose
    checksum the kernel verifies, are dropped instead). The load must still be exact, all of
    it from S: detected and repaired by retransmission, not by failing over."""
    wire("corrupt 1%", seed=7)
    r = load(hosts.f1, SHARDS[0], [hosts.seeder("f1", via="f1r")], ck, api="load_file",
             token=TOKEN, transport=transport)
    stats = tri.stop_relay()
    ab = stats["a->b"]
    assert r.get("ok"), f"the load failed: {fmt(r)}\nwire: {fmt(stats)}"
    c = r["compare"]
    # load_file of one shard: its tensors are a subset of the reference.
    assert not c["mismatch"] and not c["extra"] and len(c["missing"]) == 7 * 2, fmt(c)
    check_report(r, ck, [hosts.seeder("f1", via="f1r")], transport, shards=[SHARDS[0]])
    if transport == "xdp":
        assert ab["udp"] > ck.data[SHARDS[0]] // 1500, f"data did not cross as UDP: {fmt(ab)}"
        assert ab["corrupted"] > 0, f"no frame was corrupted: {fmt(stats)}"
    else:
        assert ab["corrupt_dropped"] > 0, f"no segment was corrupted: {fmt(stats)}"


def test_forged_tcp_segment_is_never_delivered(hosts, ck, wire, tri):
    """relay.py flips a payload bit of one S->F1 TCP segment before its checksum is computed:
    TCP delivers it as good. The session's digest must catch it; the fetcher drops S and reads
    the rest from its local copy, and the tensors are still exact."""
    wire("forge-nth 40")
    addr = hosts.seeder("f1", via="f1r")
    r = load(hosts.f1, SHARDS[0], [addr], ck, api="load_file", token=TOKEN, transport="tcp",
             local_root=ck.local)
    stats = tri.stop_relay()
    assert stats["a->b"]["forged"] == 1, f"the relay forged nothing: {fmt(stats)}"
    assert r.get("ok"), f"the load failed: {fmt(r)}"
    c = r["compare"]
    assert not c["mismatch"] and not c["extra"] and len(c["missing"]) == 7 * 2, fmt(c)
    (e,) = r["report"]
    s = {x["name"]: x for x in e["sources"]}
    assert "digest" in s[addr]["error"], f"the forged segment went unnoticed: {fmt(e)}"
    assert any(n.startswith("local:") and x["bytes"] > 0 for n, x in s.items()), fmt(e)
    assert e["bytes"] == ck.data[SHARDS[0]], fmt(e)


# ---------------------------------------------------------------------------------------------
# 5: refusals


def call_error(r: dict) -> dict:
    assert not r.get("ok"), f"expected a refusal, got success: {fmt(r)}"
    return r["error"]


def test_wrong_token_is_refused(hosts, ck):
    before = hosts.s_stats()
    err = call_error(load(hosts.f2, INDEX, [hosts.seeder("f2")], ck, token="not-" + TOKEN))
    assert err["type"] == "PermissionError", fmt(err)
    assert "token" in err["msg"].lower(), fmt(err)
    after = hosts.s_stats()
    assert after["refused"] == before["refused"] + 1, f"{before} -> {after}"
    assert after["requests"] == before["requests"], f"a refused fetcher was served: {after}"
    # No token at all (argument or CHAINIO_TOKEN): refused before any connection.
    err = call_error(load(hosts.f2, INDEX, [hosts.seeder("f2")], ck))
    assert err["type"] == "ValueError" and "token" in err["msg"].lower(), fmt(err)
    # The token from the environment works.
    r = load(hosts.f2, SHARDS[2], [hosts.seeder("f2")], ck, api="load_file",
             env={"CHAINIO_TOKEN": TOKEN})
    assert r.get("ok") and not r["compare"]["mismatch"], fmt(r)


def test_paths_leaving_root_are_refused(hosts, ck):
    """By the loader (`..`, absolute: it never asks) and by the seeder itself (openat2
    RESOLVE_BENEATH), which the raw fetcher reaches with the same names."""
    bad = ["../outside/secret.safetensors", "ck/../../outside/secret.safetensors",
           os.path.join(ck.outside, "secret.safetensors"), ck.shards[0], "/etc/passwd",
           "escape.safetensors", "escape_dir/secret.safetensors"]
    peers = [hosts.seeder("f2")]
    for path in bad:
        err = call_error(load(hosts.f2, path, peers, ck, api="load_file", token=TOKEN))
        assert err["errno"] == errno.EXDEV and "OSError" in err["mro"], f"{path}: {fmt(err)}"
        assert "leaves the" in err["msg"], f"{path}: {fmt(err)}"
    before = hosts.s_stats()
    for path in bad:
        r = hosts.f2.call("raw", method="stat", path=path, peers=peers, token=TOKEN)
        err = call_error(r)
        assert err["errno"] == errno.EXDEV, f"the seeder did not refuse {path}: {fmt(err)}"
        assert "leaves the served directory" in err["msg"], f"{path}: {fmt(err)}"
        # A read (without a stat first) is refused too, with the seeders' own errno when
        # they all refused the same way.
        r = hosts.f2.call("raw", method="read", path=path, peers=peers, token=TOKEN, size=80,
                          length=80)
        err = call_error(r)
        assert err["errno"] == errno.EXDEV, f"{path}: {fmt(r)}"
        assert "leaves the served directory" in err["msg"], f"{path}: {fmt(err)}"
    after = hosts.s_stats()
    assert after["requests_failed"] - before["requests_failed"] >= 2 * len(bad), \
        f"{before} -> {after}"
    assert after["bytes_served"] == before["bytes_served"], f"{before} -> {after}"
    # A symlink that stays inside ROOT is an ordinary name.
    r = load(hosts.f2, "inner.safetensors", peers, ck, api="load_file", token=TOKEN)
    assert r.get("ok") and not r["compare"]["mismatch"] and len(r["compare"]["missing"]) == 14, \
        fmt(r)


def test_special_and_missing_files_are_refused(hosts, ck):
    peers = [hosts.seeder("f2")]
    err = call_error(load(hosts.f2, "pipe.safetensors", peers, ck, api="load_file", token=TOKEN))
    assert err["type"] == "ValueError" and "pipe.safetensors" in err["msg"], fmt(err)
    err = call_error(load(hosts.f2, "ck/none.safetensors", peers, ck, api="load_file",
                          token=TOKEN))
    assert err["type"] == "FileNotFoundError" and "none.safetensors" in err["msg"], fmt(err)
    # A listing offers regular files only: no symlink out of ROOT, no FIFO, no directory.
    r = hosts.f2.call("raw", method="list", path=".", peers=peers, token=TOKEN)
    assert r.get("ok"), fmt(r)
    names = [n for n, _ in r["result"]]
    assert ["README", 6] in r["result"], fmt(r)
    assert set(names) <= {"README", "inner.safetensors"}, fmt(r)


# ---------------------------------------------------------------------------------------------
# 6: cache_dir


def test_cache_dir_second_load_does_not_contact_seeders(hosts, ck):
    cache = os.path.join(ck.base, "cache-f1")
    kw = dict(cache_dir=cache, env={"CHAINIO_TOKEN": TOKEN})
    first = load(hosts.f1, INDEX, [hosts.seeder("f1")], ck, **kw)
    check_identical(first, "f1 (first load)")
    check_report(first, ck, [hosts.seeder("f1")])
    for rel in SHARDS + [INDEX]:
        assert filecmp.cmp(os.path.join(cache, rel), os.path.join(ck.root, rel), shallow=False), \
            f"cached {rel} differs from the seeder's"
    before = hosts.s_stats()
    second = load(hosts.f1, INDEX, [hosts.seeder("f1")], ck, **kw)
    after = hosts.s_stats()
    check_identical(second, "f1 (from the cache)")
    assert sorted(e["path"] for e in second["report"]) == SHARDS, fmt(second["report"])
    assert all(e["from_cache"] and not e["sources"] for e in second["report"]), \
        fmt(second["report"])
    for k in ("sessions", "refused", "requests", "bytes_served"):
        assert after[k] == before[k], f"the cached load reached the seeder: {before} -> {after}"
    # Nothing half-written is left in the cache.
    left = [f for _, _, fs in os.walk(cache) for f in fs if ".part" in f]
    assert not left, left
