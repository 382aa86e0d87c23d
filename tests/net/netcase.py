"""Helpers of the tests/net test modules (kept out of conftest.py so that importing them never
picks up another directory's conftest module)."""

from __future__ import annotations

import json

import netns

TRANSPORTS = ["xdp", "tcp"]


class Lab:
    """Namespaces and peer processes of one test; everything is torn down by the fixture."""

    def __init__(self):
        self.nets: list[netns.Net] = []
        self.peers: list[netns.Peer] = []

    def net(self, mtu: int = 1500, relay: bool = False) -> netns.Net:
        n = netns.Net(mtu=mtu, relay=relay)
        self.nets.append(n)
        return n

    def peer(self, ns: str, argv: list[str], **kw) -> netns.Peer:
        p = netns.Peer(ns, argv, **kw)
        self.peers.append(p)
        return p

    def serve(self, net: netns.Net, transport: str, *extra: str, env: dict | None = None,
              side: str = "b", timeout: float = 15,
              wrap: list[str] | None = None) -> tuple[netns.Peer, int]:
        """Starts `peer.py serve` on `side` (default B); returns (peer, TCP port)."""
        p = self.peer(net.ns(side), ["serve", "--bind", net.ip(side), "--transport", transport,
                                     *extra], env=env, name=f"serve[{transport}]@{side}",
                      wrap=wrap)
        _, ev = p.event("listening", timeout)
        return p, ev["port"]

    def send(self, net: netns.Net, port: int, transport: str, *extra: str,
             env: dict | None = None, side: str = "a", stdin: bool = False) -> netns.Peer:
        other = "b" if side == "a" else "a"
        return self.peer(net.ns(side), ["send", "--connect", net.ip(other), "--port", str(port),
                                        "--transport", transport, *extra],
                         env=env, name=f"send[{transport}]@{side}", stdin=stdin)

    def close(self) -> None:
        for p in self.peers:
            p.stop()
        for n in self.nets:
            n.close()


def sizes_arg(sizes: list[int]) -> str:
    return ",".join(str(s) for s in sizes)


def fmt(obj) -> str:
    return json.dumps(obj, indent=None, default=str)[:3000]


def round_events(peer: netns.Peer) -> list[dict]:
    return [e for _, e in peer.seen if e.get("event") == "round"]


def check_delivery(srv: netns.Peer, srv_done: dict, cli: netns.Peer, cli_done: dict,
                   sizes: list[int], rounds: int, transport: str) -> None:
    """Both sides succeeded on the requested transport, every round arrived bit-identical."""
    ctx = f"\nserver: {fmt(srv_done)}\nclient: {fmt(cli_done)}"
    assert cli_done.get("ok"), f"sender failed{ctx}\n{cli.describe()}"
    assert srv_done.get("ok"), f"receiver failed{ctx}\n{srv.describe()}"
    if transport in ("xdp", "tcp"):
        assert cli_done["kind"] == transport and srv_done["kind"] == transport, \
            f"asked for {transport}, got sender {cli_done['kind']!r} ({cli_done['fallback_reason']!r}), " \
            f"receiver {srv_done['kind']!r} ({srv_done['fallback_reason']!r})"
    got, sent = round_events(srv), round_events(cli)
    assert len(got) == rounds and len(sent) == rounds, f"rounds: got {len(got)}, sent {len(sent)}{ctx}"
    for g, s in zip(got, sent):
        assert g["sizes"] == sizes, f"round {g['round']}: sizes {g['sizes']} != {sizes}"
        assert not g["mismatch"], f"round {g['round']}: SILENT CORRUPTION {g['mismatch']}{ctx}"
        assert g["match"], f"round {g['round']}: {fmt(g)}"
        assert g["digests"] == s["digests"], f"round {g['round']}: digests differ{ctx}"
