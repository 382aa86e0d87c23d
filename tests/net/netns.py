"""Network namespaces, veth pairs, netem and peer processes for tests/net and bench/net_bench.py.

Plain Python (no pytest): the benchmark imports it too. Everything it creates is named
``cionet-<pid>-<n>-<role>`` so that a later run can find and delete what a crashed run left.

Two topologies, both with 10.77.0.1/24 in namespace A and 10.77.0.2/24 in namespace B:

* direct: A[veth-a] <-> [veth-b]B                            (one veth pair)
* relay:  A[veth-a] <-> [pa] relay.py [pb] <-> [veth-b]B      (a third namespace in between)

and, for weight distribution (test_net_peer.py), Triangle: a seeder and two fetchers joined
pairwise, each link its own /24 in 10.78.0.0/16, plus an optional relayed seeder<->fetcher wire.

Network impairments need the relay topology: this kernel has no sch_netem, and an AF_XDP socket
transmits through __dev_direct_xmit(), which bypasses the qdisc of its device, so a netem qdisc
on veth-a or veth-b would never see ChainIO's data frames anyway. relay.py is a user-space
netem that every frame crosses (see its docstring). Relay-topology veths get one queue each:
the XDP program steers a frame to the AF_XDP socket of the receive queue it arrived on, and
the socket binds queue 0.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

PREFIX = "cionet"
IP_A = "10.77.0.1"
IP_B = "10.77.0.2"
DEV_A = "veth-a"
DEV_B = "veth-b"
HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
RELAY = os.path.join(HERE, "relay.py")

_counter = 0


def missing_tools() -> list[str]:
    # `tc` is not needed: impairments come from relay.py (see the module doc).
    return [t for t in ("ip",) if shutil.which(t) is None]


def sh(args: list[str], ns: str | None = None, check: bool = True, timeout: float = 20,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command (inside namespace `ns` when given), capturing text output."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> rc {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def _ns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def delete_ns(ns: str) -> None:
    """Kills what still runs inside `ns` (only our own peers ever run there), then deletes it."""
    for pid in _ns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def cleanup_stale() -> list[str]:
    """Deletes namespaces of ours whose creating process is gone (a crashed earlier run)."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    removed = []
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}-(\d+)-", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # a live run (another pytest or bench) owns it
        delete_ns(name)
        removed.append(name)
    return removed


def wait_no_xdp(details, timeout: float) -> tuple[bool, str]:
    """Polls `details()` (an `ip -d link show` text) until no XDP program is attached;
    returns (detached, last text)."""
    deadline = time.monotonic() + timeout
    while True:
        text = details()
        if "prog/xdp" not in text:
            return True, text
        if time.monotonic() > deadline:
            return False, text
        time.sleep(0.05)


class _Lab:
    """What Net and Triangle share: the relay between two of their hosts (namespace `br`, when
    built with one), and their namespaces (and relay) going away on close(), which is
    idempotent, and on leaving a `with` block."""

    namespaces: list
    relay_peer: "Peer | None"
    br: "str | None"
    closed: bool

    @staticmethod
    def _base(tag: str) -> str:
        """A namespace-name prefix unique to this process and lab."""
        global _counter
        _counter += 1
        return f"{PREFIX}-{os.getpid()}-{_counter}{tag}"

    def start_relay(self, spec: str = "", seed: int = 1) -> "Peer":
        """Starts relay.py on the relayed wire with netem words `spec` ("" forwards untouched);
        returns once it forwards. Its side "a" is Net's a, Triangle's S (so `forge-nth` forges
        S->F1 segments). Stopped (and its stats collected) by stop_relay()/close()."""
        assert self.br, f"start_relay needs a {type(self).__name__} built with its relay"
        assert self.relay_peer is None
        self.relay_peer = Peer(self.br, ["--a", "pa", "--b", "pb", "--spec", spec,
                                         "--seed", str(seed)],
                               name=f"relay[{spec}]", script=RELAY, stdin=True)
        self.relay_peer.event("ready", 10)
        return self.relay_peer

    def stop_relay(self) -> dict:
        """Stops the relay; returns its per-direction counters ("a->b" is Net's a->b, S->F1)."""
        p, self.relay_peer = self.relay_peer, None
        if p is None:
            return {}
        try:
            p.send_line("stop")
            _, done = p.result(10)
            return done.get("stats", {})
        finally:
            p.stop()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.relay_peer is not None:
            self.relay_peer.stop()
            self.relay_peer = None
        for n in self.namespaces:
            delete_ns(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Net(_Lab):
    """Two (or three) namespaces joined by veth; always call close() (it is idempotent)."""

    def __init__(self, mtu: int = 1500, relay: bool = False, tag: str = ""):
        base = self._base(tag)
        self.mtu, self.relay = mtu, relay
        self.a, self.b = base + "-a", base + "-b"
        self.br = base + "-r" if relay else None
        self.relay_peer: "Peer | None" = None
        self.ip_a, self.ip_b, self.dev_a, self.dev_b = IP_A, IP_B, DEV_A, DEV_B
        self.closed = False
        self.namespaces = [n for n in (self.a, self.b, self.br) if n]
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, side: str) -> str:
        return {"a": self.a, "b": self.b}[side]

    def dev(self, side: str) -> str:
        return {"a": self.dev_a, "b": self.dev_b}[side]

    def ip(self, side: str) -> str:
        return {"a": self.ip_a, "b": self.ip_b}[side]

    def _build(self) -> None:
        for n in self.namespaces:
            sh(["ip", "netns", "add", n])
            sh(["ip", "-n", n, "link", "set", "lo", "up"])
            # No IPv6 chatter (router solicitations, DAD) on the links we measure.
            for conf in ("all", "default"):  # net sysctls are per namespace
                sh(["sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"], ns=n,
                   check=False)
        if not self.relay:
            sh(["ip", "link", "add", self.dev_a, "netns", self.a, "type", "veth",
                "peer", "name", self.dev_b, "netns", self.b])
        else:
            one_q = ["numtxqueues", "1", "numrxqueues", "1"]
            sh(["ip", "link", "add", self.dev_a, "netns", self.a, *one_q, "type", "veth",
                "peer", "name", "pa", "netns", self.br, *one_q])
            sh(["ip", "link", "add", self.dev_b, "netns", self.b, *one_q, "type", "veth",
                "peer", "name", "pb", "netns", self.br, *one_q])
            for port in ("pa", "pb"):
                sh(["ip", "-n", self.br, "link", "set", port, "mtu", str(self.mtu), "up"])
        for ns, dev, ip in ((self.a, self.dev_a, self.ip_a), (self.b, self.dev_b, self.ip_b)):
            sh(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev])
        # Wait for carrier on both ends (veth is up at once, the bridge ports too without STP).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = [sh(["ip", "-n", ns, "-o", "link", "show", "dev", dev]).stdout
                      for ns, dev in ((self.a, self.dev_a), (self.b, self.dev_b))]
            if all("LOWER_UP" in st for st in states):
                break
            time.sleep(0.02)

    def link_details(self, side: str) -> str:
        return sh(["ip", "-d", "link", "show", "dev", self.dev(side)], ns=self.ns(side)).stdout

    def xdp_attached(self, side: str) -> bool:
        return "prog/xdp" in self.link_details(side)

    def wait_xdp_detached(self, side: str, timeout: float = 2.0) -> tuple[bool, str]:
        return wait_no_xdp(lambda: self.link_details(side), timeout)


class Triangle(_Lab):
    """Three hosts, a seeder S and fetchers F1 and F2, each pair joined by its own veth pair
    and /24 subnet (always call close(); it is idempotent)::

        S [s-f1] 10.78.1.1 <-> 10.78.1.2 [f1-s] F1
        S [s-f2] 10.78.2.1 <-> 10.78.2.2 [f2-s] F2
       F1 [f1-f2] 10.78.3.1 <-> 10.78.3.2 [f2-f1] F2

    With ``relayed=True`` S and F1 are also joined through a fourth namespace running relay.py
    (started on demand by start_relay(); the path is dead until then)::

        S [s-r] 10.78.4.1 <-> [pa] relay.py [pb] <-> 10.78.4.2 [f1-r] F1

    so a fetcher in F1 picks the wire by the seeder address it connects to (AF_XDP binds the
    interface holding the connection's local address). Every veth has one queue (the AF_XDP
    socket binds queue 0, see the module doc); hosts route nothing between links.
    """

    HOSTS = ("s", "f1", "f2")
    # (host, peer) -> (device, address); the relayed S<->F1 wire has peer "f1r" / "sr".
    _LINKS = [(("s", "s-f1", "10.78.1.1"), ("f1", "f1-s", "10.78.1.2")),
              (("s", "s-f2", "10.78.2.1"), ("f2", "f2-s", "10.78.2.2")),
              (("f1", "f1-f2", "10.78.3.1"), ("f2", "f2-f1", "10.78.3.2"))]
    _RELAYED = (("s", "s-r", "10.78.4.1"), ("f1", "f1-r", "10.78.4.2"))

    def __init__(self, mtu: int = 9000, relayed: bool = False, relay_mtu: int = 1500,
                 tag: str = ""):
        base = self._base(tag)
        self.mtu, self.relay_mtu, self.relayed = mtu, relay_mtu, relayed
        self.names = {h: f"{base}-{h}" for h in self.HOSTS}
        self.br = f"{base}-r" if relayed else None
        self.namespaces = list(self.names.values()) + ([self.br] if self.br else [])
        self.relay_peer: "Peer | None" = None
        self.closed = False
        self._addr: dict[tuple[str, str], tuple[str, str]] = {}
        for (h1, d1, a1), (h2, d2, a2) in self._LINKS:
            self._addr[(h1, h2)] = (d1, a1)
            self._addr[(h2, h1)] = (d2, a2)
        if relayed:
            (h1, d1, a1), (h2, d2, a2) = self._RELAYED
            self._addr[(h1, h2 + "r")] = (d1, a1)
            self._addr[(h2, h1 + "r")] = (d2, a2)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return self.names[host]

    def ip(self, host: str, toward: str) -> str:
        """`host`'s address on its link to `toward` ("f1r"/"sr": the relayed S<->F1 wire)."""
        return self._addr[(host, toward)][1]

    def dev(self, host: str, toward: str) -> str:
        return self._addr[(host, toward)][0]

    def _build(self) -> None:
        one_q = ["numtxqueues", "1", "numrxqueues", "1"]
        for n in self.namespaces:
            sh(["ip", "netns", "add", n])
            sh(["ip", "-n", n, "link", "set", "lo", "up"])
            for conf in ("all", "default"):
                sh(["sh", "-c", f"echo 1 > /proc/sys/net/ipv6/conf/{conf}/disable_ipv6"], ns=n,
                   check=False)
        ends = []
        for (h1, d1, a1), (h2, d2, a2) in self._LINKS:
            sh(["ip", "link", "add", d1, "netns", self.names[h1], *one_q, "type", "veth",
                "peer", "name", d2, "netns", self.names[h2], *one_q])
            ends += [(self.names[h1], d1, a1, self.mtu), (self.names[h2], d2, a2, self.mtu)]
        if self.relayed:
            (h1, d1, a1), (h2, d2, a2) = self._RELAYED
            for h, d, a, port in ((h1, d1, a1, "pa"), (h2, d2, a2, "pb")):
                sh(["ip", "link", "add", d, "netns", self.names[h], *one_q, "type", "veth",
                    "peer", "name", port, "netns", self.br, *one_q])
                sh(["ip", "-n", self.br, "link", "set", port, "mtu", str(self.relay_mtu), "up"])
                ends.append((self.names[h], d, a, self.relay_mtu))
        for ns, dev, addr, mtu in ends:
            sh(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu), "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        deadline = time.monotonic() + 5
        while True:
            down = [(ns, dev) for ns, dev, _, _ in ends
                    if "LOWER_UP" not in sh(["ip", "-n", ns, "-o", "link", "show", "dev",
                                             dev]).stdout]
            if not down:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no carrier after 5 s on {down}")
            time.sleep(0.02)

    def link_details(self, host: str, toward: str) -> str:
        return sh(["ip", "-d", "link", "show", "dev", self.dev(host, toward)],
                  ns=self.ns(host)).stdout

    def wait_xdp_detached(self, host: str, toward: str,
                          timeout: float = 2.0) -> tuple[bool, str]:
        return wait_no_xdp(lambda: self.link_details(host, toward), timeout)


class PeerError(AssertionError):
    pass


class Peer:
    """A subprocess in a namespace that prints one JSON object per line on stdout.

    Lines are read by a thread and time-stamped on arrival, so a test can measure how long a
    peer took to react (to a kill of its partner, say) without trusting the peer's own clock."""

    def __init__(self, ns: str, argv: list[str], env: dict | None = None, name: str = "peer",
                 script: str = PEER, stdin: bool = False, wrap: list[str] | None = None,
                 text_events: bool = False):
        self.name = name
        # text_events: a line that is not a JSON object also arrives as {"event": "text",
        # "line": ...} (for programs that print plain text, e.g. `chainio seed`).
        self.text_events = text_events
        # `wrap` runs the interpreter through a command, e.g. setpriv to drop capabilities.
        self.cmd = ["ip", "netns", "exec", ns, *(wrap or []), sys.executable, "-u", script, *argv]
        full_env = dict(os.environ)
        full_env.pop("CHAINIO_TRANSPORT", None)
        full_env.update(env or {})
        self.events: "queue.Queue[tuple[float, dict]]" = queue.Queue()
        self.seen: list[tuple[float, dict]] = []
        self.stderr_lines: list[str] = []
        self.stdout_other: list[str] = []
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  text=True, env=full_env, start_new_session=True)
        self._t_out = threading.Thread(target=self._read_out, daemon=True)
        self._t_err = threading.Thread(target=self._read_err, daemon=True)
        self._t_out.start()
        self._t_err.start()

    def _read_out(self) -> None:
        for line in self.p.stdout:
            t = time.monotonic()
            line = line.strip()
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                self.events.put((t, obj))
            else:
                self.stdout_other.append(line)
                if self.text_events:
                    self.events.put((t, {"event": "text", "line": line}))
        self.events.put((time.monotonic(), {"event": "__eof__"}))

    def _read_err(self) -> None:
        for line in self.p.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.p.pid

    def describe(self) -> str:
        err = "\n".join(self.stderr_lines[-40:])
        other = "\n".join(self.stdout_other[-10:])
        events = "\n".join(json.dumps(e)[:600] for _, e in self.seen[-8:])
        return (f"[{self.name}] {' '.join(self.cmd)}\n  rc={self.p.poll()}\n  events:\n{events}"
                f"\n  stdout(other):\n{other}\n  stderr:\n{err}")

    def event(self, name: str, timeout: float) -> tuple[float, dict]:
        """Waits for the next line whose "event" is `name` (or a "done" line, which ends every
        peer, or end of output); returns (arrival time, object). Raises PeerError on timeout or
        when the peer ended without that event."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"no '{name}' event within {timeout:.1f}s\n{self.describe()}")
            try:
                t, obj = self.events.get(timeout=left)
            except queue.Empty:
                continue
            ev = obj.get("event")
            if ev == name:
                self.seen.append((t, obj))
                return t, obj
            if ev in ("done", "__eof__"):
                self.events.put((t, obj))  # keep the end for result()
                raise PeerError(f"peer ended before '{name}'\n{self.describe()}"
                                + (f"\n  final: {json.dumps(obj)[:2000]}" if ev == "done" else ""))
            self.seen.append((t, obj))

    def result(self, timeout: float) -> tuple[float, dict]:
        """Waits for the final "done" line and the process exit."""
        t, obj = self.event("done", timeout)
        try:
            self.p.wait(timeout=max(1.0, timeout / 4))
        except subprocess.TimeoutExpired:
            pass
        return t, obj

    def send_line(self, text: str = "go") -> None:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Signals the peer (its python process: `ip netns exec` execs it, no fork); returns
        the time of the signal."""
        t = time.monotonic()
        try:
            os.kill(self.p.pid, sig)
        except ProcessLookupError:
            pass
        return t

    def stop(self) -> None:
        if self.p.poll() is None:
            self.kill(signal.SIGKILL)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.p.stdin,):
            try:
                if f:
                    f.close()
            except OSError:
                pass
