"""A peer that dies (SIGKILL) or freezes (SIGSTOP) in the middle of a large transfer: the other
side raises an OSError within timeout_ms plus a little, and a killed AF_XDP process leaves no
XDP program behind on its interface (the bpf_link dies with the process)."""

from __future__ import annotations

import signal
import time

import pytest
from netcase import TRANSPORTS, fmt

MiB = 1 << 20
TIMEOUT_MS = 2000
SLACK_S = 3.0  # process exit, TCP teardown, a busy 2-core VM


def start_streaming(lab, transport, mtu=9000):
    """A sender that sends 64 MiB objects in a loop and a receiver that takes them, until one
    of them fails; returns once the first object has arrived (so the next is in flight)."""
    net = lab.net(mtu)
    common = ["--sizes", str(64 * MiB), "--loop", "--timeout-ms", str(TIMEOUT_MS)]
    srv, port = lab.serve(net, transport, *common, "--into", "--check", "none")
    cli = lab.send(net, port, transport, *common)
    srv.event("round", 60)
    cli.event("sending", 10)  # the sender is inside its next send()
    time.sleep(0.05)
    return net, srv, cli


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("victim", ["sender", "receiver"])
def test_peer_sigkill_mid_transfer(lab, transport, victim):
    net, srv, cli = start_streaming(lab, transport)
    dead, survivor = (cli, srv) if victim == "sender" else (srv, cli)
    t_kill = dead.kill(signal.SIGKILL)
    t_done, done = survivor.result(TIMEOUT_MS / 1000 + 30)
    waited = t_done - t_kill
    assert not done["ok"], f"the survivor reported success after its peer died: {fmt(done)}"
    err = done["error"]
    assert err["is_oserror"], f"not an OSError: {fmt(err)}"
    assert "ConnectionError" in err["mro"], f"a closed peer should give ConnectionError: {fmt(err)}"
    assert waited < TIMEOUT_MS / 1000 + SLACK_S, \
        f"the survivor took {waited:.2f}s to notice (timeout_ms={TIMEOUT_MS}): {fmt(err)}"
    assert done["kind"] == transport
    if transport == "xdp":
        side = "a" if victim == "sender" else "b"
        gone, details = net.wait_xdp_detached(side, 2.0)
        assert gone, f"XDP program still attached 2 s after SIGKILL of the {victim}:\n{details}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("victim", ["sender", "receiver"])
def test_peer_sigstop_mid_transfer(lab, transport, victim):
    """A frozen peer keeps its TCP connection open: only the timeout can end the wait, and it
    must end it as TimeoutError, not much later than timeout_ms."""
    net, srv, cli = start_streaming(lab, transport)
    frozen, survivor = (cli, srv) if victim == "sender" else (srv, cli)
    t_stop = frozen.kill(signal.SIGSTOP)
    try:
        t_done, done = survivor.result(TIMEOUT_MS / 1000 + 30)
    finally:
        frozen.kill(signal.SIGKILL)
    waited = t_done - t_stop
    assert not done["ok"], f"the survivor reported success with a frozen peer: {fmt(done)}"
    err = done["error"]
    assert err["type"] == "TimeoutError", f"expected TimeoutError, got {fmt(err)}"
    assert waited < TIMEOUT_MS / 1000 + SLACK_S, f"took {waited:.2f}s: {fmt(err)}"
    # Not before the timeout either (minus what of it may have elapsed before the stop).
    assert err["elapsed_in_call"] >= TIMEOUT_MS / 1000 * 0.9, fmt(err)
