"""The AF_XDP transport as the rest of the machine sees it: which transport a session picks,
that the XDP program leaves ordinary traffic (ICMP, kernel TCP) alone while it is attached,
and that it disappears with its process even on SIGKILL."""

from __future__ import annotations

import json
import shutil
import signal
import sys

import netns
import pytest
from netcase import check_delivery, fmt, sizes_arg

MiB = 1 << 20


def ping(net, src: str, dst: str) -> tuple[bool, str]:
    """`ping -c 3 -W 1` from namespace side `src` to side `dst`'s address (a raw-socket ICMP
    echo from peer.py when the ping binary is not installed)."""
    if shutil.which("ping"):
        r = netns.sh(["ping", "-c", "3", "-W", "1", net.ip(dst)], ns=net.ns(src), check=False)
        return r.returncode == 0, r.stdout + r.stderr
    r = netns.sh([sys.executable, netns.PEER, "icmp-ping", "--connect", net.ip(dst),
                  "--count", "3", "--wait", "1"], ns=net.ns(src), check=False, timeout=30)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])["ok"], r.stdout + r.stderr
    except (ValueError, IndexError):
        return False, r.stdout + r.stderr


def plain_tcp(lab, net, server_side: str) -> dict:
    """A kernel TCP connection (no ChainIO) moving 4 MiB and an answer."""
    client_side = "a" if server_side == "b" else "b"
    srv = lab.peer(net.ns(server_side), ["tcp-echo-server", "--bind", net.ip(server_side)],
                   name="plain-tcp-server")
    _, ev = srv.event("listening", 10)
    cli = lab.peer(net.ns(client_side), ["tcp-echo-client", "--connect", net.ip(server_side),
                                         "--port", str(ev["port"]), "--sizes", str(4 * MiB)],
                   name="plain-tcp-client")
    _, done = cli.result(30)
    srv.result(10)
    return done


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_xdp_coexists_and_detaches_on_sigkill(lab, mtu):
    net = lab.net(mtu)
    size = [MiB + 5]
    srv, port = lab.serve(net, "xdp", "--sizes", sizes_arg(size), "--rounds", "2",
                          "--timeout-ms", "30000")
    cli = lab.send(net, port, "xdp", "--sizes", sizes_arg(size), "--rounds", "2",
                   "--wait-stdin", "--timeout-ms", "30000", stdin=True)
    _, s_ev = srv.event("session", 15)
    _, c_ev = cli.event("session", 15)
    assert s_ev["kind"] == "xdp" and c_ev["kind"] == "xdp", (s_ev, c_ev)

    # Both sessions are up: our program sits on both interfaces.
    for side in "ab":
        details = net.link_details(side)
        assert "prog/xdp" in details, f"no XDP program on {net.dev(side)}:\n{details}"

    # ...and ordinary traffic still flows, both ways.
    for src, dst in (("a", "b"), ("b", "a")):
        ok, out = ping(net, src, dst)
        assert ok, f"ping {src}->{dst} failed with the XDP program attached:\n{out}"
    for server_side in "ba":
        done = plain_tcp(lab, net, server_side)
        assert done["ok"], f"kernel TCP broken with the XDP program attached: {fmt(done)}"

    # The AF_XDP session still works after that traffic.
    cli.send_line("go")
    _, r = srv.event("round", 30)
    assert r["match"] and not r["mismatch"], fmt(r)
    _, c_round = cli.event("round", 10)
    assert r["digests"] == c_round["digests"]

    # SIGKILL the receiver while it waits in recv() for round 2 with AF_XDP attached.
    srv.kill(signal.SIGKILL)
    gone, details = net.wait_xdp_detached("b", 2.0)
    assert gone, f"XDP program still on {net.dev_b} 2 s after SIGKILL:\n{details}"
    assert net.xdp_attached("a"), "the live sender's program went away with its peer"
    # ...and the sender, waiting between rounds (between reading stdin lines).
    cli.kill(signal.SIGKILL)
    gone, details = net.wait_xdp_detached("a", 2.0)
    assert gone, f"XDP program still on {net.dev_a} 2 s after SIGKILL:\n{details}"
    # With the program gone, the kernel path still works (nothing stale left in between).
    ok, out = ping(net, "a", "b")
    assert ok, out


def test_transport_xdp_really_is_xdp(lab):
    """kind == "xdp" is not just a label: payload bytes travel as frames (counted), not on TCP."""
    net = lab.net(1500)
    sizes = [4 * MiB]
    srv, port = lab.serve(net, "xdp", "--sizes", sizes_arg(sizes))
    cli = lab.send(net, port, "xdp", "--sizes", sizes_arg(sizes))
    _, cli_done = cli.result(30)
    _, srv_done = srv.result(30)
    check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "xdp")
    assert srv_done["fallback_reason"] == "" and cli_done["fallback_reason"] == ""
    st = srv_done["stats"]
    assert st["frames_received"] >= sizes[0] // 1500, f"too few frames for AF_XDP: {st}"
    assert cli_done["stats"]["frames_sent"] >= st["frames_received"], cli_done["stats"]


def test_auto_picks_xdp_as_root(lab):
    net = lab.net(9000)
    sizes = [MiB]
    srv, port = lab.serve(net, "auto", "--sizes", sizes_arg(sizes))
    cli = lab.send(net, port, "auto", "--sizes", sizes_arg(sizes))
    _, cli_done = cli.result(30)
    _, srv_done = srv.result(30)
    check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "auto")
    assert (srv_done["kind"], cli_done["kind"]) == ("xdp", "xdp"), \
        f"auto fell back: server {srv_done['fallback_reason']!r}, client {cli_done['fallback_reason']!r}"


@pytest.mark.parametrize("where", ["both", "client", "server"])
def test_env_forces_tcp(lab, where):
    """CHAINIO_TRANSPORT=tcp on either side makes an "auto" session TCP on both, and the side
    that was forced says why."""
    net = lab.net(1500)
    sizes = [MiB, 1]
    env = {"CHAINIO_TRANSPORT": "tcp"}
    srv, port = lab.serve(net, "auto", "--sizes", sizes_arg(sizes),
                          env=env if where in ("both", "server") else None)
    cli = lab.send(net, port, "auto", "--sizes", sizes_arg(sizes),
                   env=env if where in ("both", "client") else None)
    _, cli_done = cli.result(30)
    _, srv_done = srv.result(30)
    check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "tcp")
    forced = [d for side, d in (("server", srv_done), ("client", cli_done))
              if where in ("both", side)]
    for d in forced:
        assert "CHAINIO_TRANSPORT" in d["fallback_reason"], d["fallback_reason"]
    for d in (srv_done, cli_done):
        assert d["fallback_reason"], "a TCP session must say why it is not on AF_XDP"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_without_capabilities_the_session_falls_back_to_tcp(lab):
    """A server without CAP_BPF/CAP_NET_ADMIN cannot load the XDP program: an "auto" session
    runs on TCP on both sides, and both say why (the capability, on the server's side)."""
    net = lab.net(1500)
    sizes = [MiB, 1]
    drop = ["setpriv", "--bounding-set", "-net_admin,-bpf,-sys_admin"]
    srv, port = lab.serve(net, "auto", "--sizes", sizes_arg(sizes), wrap=drop)
    cli = lab.send(net, port, "auto", "--sizes", sizes_arg(sizes))
    _, cli_done = cli.result(30)
    _, srv_done = srv.result(30)
    check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "tcp")
    assert "CAP_BPF" in srv_done["fallback_reason"], srv_done["fallback_reason"]
    assert "the peer cannot run AF_XDP" in cli_done["fallback_reason"], cli_done["fallback_reason"]


def test_xdp_against_tcp_is_consistent(lab):
    """One side insists on AF_XDP, the other on TCP: both fail cleanly, or they agree."""
    net = lab.net(1500)
    sizes = [MiB]
    srv, port = lab.serve(net, "xdp", "--sizes", sizes_arg(sizes), "--timeout-ms", "3000")
    cli = lab.send(net, port, "tcp", "--sizes", sizes_arg(sizes), "--timeout-ms", "3000")
    _, cli_done = cli.result(30)
    _, srv_done = srv.result(30)
    if cli_done["ok"] and srv_done["ok"]:
        assert cli_done["kind"] == srv_done["kind"], (srv_done, cli_done)
        assert srv_done["kind"] == "xdp", f"transport='xdp' ran {srv_done['kind']}"
    else:
        for d in (srv_done, cli_done):
            assert d["ok"] or d["error"]["is_oserror"], fmt(d)
        assert not (cli_done["ok"] or srv_done["ok"]), \
            f"one side succeeded alone: server {fmt(srv_done)} client {fmt(cli_done)}"


def test_xdp_sessions_back_to_back(lab):
    """A new AF_XDP session on the same interfaces right after the previous one closed (the
    queue may answer EBUSY for a few hundred ms after close): still AF_XDP, still intact."""
    net = lab.net(1500)
    sizes = [MiB]
    for i in range(3):
        srv, port = lab.serve(net, "xdp", "--sizes", sizes_arg(sizes), "--seed", str(i))
        cli = lab.send(net, port, "xdp", "--sizes", sizes_arg(sizes), "--seed", str(i))
        _, cli_done = cli.result(30)
        _, srv_done = srv.result(30)
        check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "xdp")
