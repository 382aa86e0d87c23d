"""Objects cross a veth pair bit-identical, on AF_XDP and on TCP, at MTU 1500, 3500 and 9000.

The sizes sit on the frame boundaries of the AF_XDP path: 3840 bytes is the most one 4 KiB
UMEM chunk carries without multi-buffer frames, 3839/4096 are one below/above it; 0 and 1 are
the degenerate objects; 1 MiB spans hundreds of frames and several ACK windows.
"""

from __future__ import annotations

import pytest
from netcase import TRANSPORTS, check_delivery, sizes_arg

MiB = 1 << 20
SIZES = [0, 1, 3839, 3840, 4096, MiB]
# Full list at the common MTUs, a subset at 3500 (the largest MTU a plain, non-frags XDP
# program attaches at on veth; the transport must pick its frame size accordingly).
CASES = [(mtu, size) for mtu in (1500, 9000) for size in SIZES]
CASES += [(3500, size) for size in (1, 3840, MiB)]
MIXED = [0, 1, 3839, 3840, 4096, 65537, MiB + 3, 5 * MiB]


def transfer(lab, net, transport, sizes, rounds=1, serve_extra=(), send_extra=(), timeout=60,
             env=None):
    srv, port = lab.serve(net, transport, "--sizes", sizes_arg(sizes), "--rounds", str(rounds),
                          *serve_extra, env=env)
    cli = lab.send(net, port, transport, "--sizes", sizes_arg(sizes), "--rounds", str(rounds),
                   *send_extra, env=env)
    _, cli_done = cli.result(timeout)
    _, srv_done = srv.result(timeout)
    return srv, srv_done, cli, cli_done


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mtu,size", CASES, ids=[f"mtu{m}-{s}B" for m, s in CASES])
def test_single_object(lab, mtu, size, transport):
    """One object per send, two sends on one session (different contents)."""
    net = lab.net(mtu)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, [size], rounds=2)
    check_delivery(srv, srv_done, cli, cli_done, [size], 2, transport)
    assert srv_done["stats"]["bytes_received"] == 2 * size, srv_done["stats"]


@pytest.mark.slow
@pytest.mark.parametrize("transport,mtu", [("xdp", 1500), ("xdp", 9000), ("tcp", 1500)])
def test_256mib(lab, transport, mtu):
    """One 256 MiB object: ~190k AF_XDP frames at MTU 1500 (far more than any window), and
    multi-buffer frames at 9000."""
    size = 256 * MiB
    net = lab.net(mtu)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, [size], timeout=120)
    check_delivery(srv, srv_done, cli, cli_done, [size], 1, transport)
    st = srv_done["stats"]
    assert st["bytes_received"] == size, st
    if transport == "xdp":
        # Frames carry at most MTU minus headers: the count proves it really went as frames.
        assert st["frames_received"] >= size // mtu, st


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mtu", [1500, 3500, 9000])
def test_concurrent_streams(lab, mtu, transport):
    """Eight objects of mixed sizes in one send (one stream each), twice."""
    net = lab.net(mtu)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, MIXED, rounds=2)
    check_delivery(srv, srv_done, cli, cli_done, MIXED, 2, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_recv_into(lab, transport):
    """recv_into() fills caller buffers (the peer checks their contents)."""
    net = lab.net(9000)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, MIXED, rounds=2,
                                            serve_extra=["--into"])
    check_delivery(srv, srv_done, cli, cli_done, MIXED, 2, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_small_objects(lab, transport):
    """256 objects in one send: many streams at once, each a little over one frame."""
    sizes = [4097 + 13 * i for i in range(256)]
    net = lab.net(9000)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, sizes)
    check_delivery(srv, srv_done, cli, cli_done, sizes, 1, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_recv_into_wrong_sizes_fails_cleanly(lab, transport):
    """A receiver whose buffers do not match the manifest gets an error (ValueError or
    OSError), the sender's send() fails instead of reporting delivery, nothing hangs."""
    net = lab.net(1500)
    srv, port = lab.serve(net, transport, "--sizes", "1000", "--into", "--timeout-ms", "2000")
    cli = lab.send(net, port, transport, "--sizes", "1001", "--timeout-ms", "2000")
    _, srv_done = srv.result(20)
    _, cli_done = cli.result(20)
    assert not srv_done["ok"], srv_done
    assert srv_done["error"]["type"] == "ValueError" or srv_done["error"]["is_oserror"], srv_done
    assert not cli_done["ok"], f"send() reported delivery the peer refused: {cli_done}"
    assert cli_done["error"]["is_oserror"], cli_done


# At MTU 1500 an AF_XDP frame carries 1432 payload bytes; a manifest is 8 bytes + 16 per object.
PAYLOAD_1500 = 1432


@pytest.mark.parametrize("sizes,frames", [
    ([0, 1, 100, 1000], 1),             # 1173 B with the manifest: one frame
    ([PAYLOAD_1500 - 24], 1),           # exactly one frame
    ([PAYLOAD_1500 - 23], 2),           # one byte more: manifest frame + data frame
    ([700, 700], 3),                    # 1448 B: each object in a frame of its own
], ids=["four-tiny", "fits-exactly", "one-byte-over", "two-over"])
def test_small_transfers_ride_in_the_manifest(lab, sizes, frames):
    """A transfer whose manifest and objects fit in one AF_XDP frame sends the objects inside
    the manifest (one frame, not 1 + objects: most of a small message's latency); one byte
    more and the objects go in frames of their own. Bytes are checked either way."""
    rounds = 3
    net = lab.net(1500)
    srv, srv_done, cli, cli_done = transfer(lab, net, "xdp", sizes, rounds=rounds)
    check_delivery(srv, srv_done, cli, cli_done, sizes, rounds, "xdp")
    st, rs = cli_done["stats"], srv_done["stats"]
    assert st["frames_sent"] - st["retransmits"] == frames * rounds, st
    assert rs["frames_received"] == frames * rounds, rs
    assert rs["bytes_received"] == sum(sizes) * rounds, rs


@pytest.mark.parametrize("transport,mtu", [("xdp", 9000), ("xdp", 1500), ("tcp", 9000)])
def test_send_arena_from_python(lab, transport, mtu):
    """NetSession is a buffer over its send arena (UMEM). Objects written there go out as
    descriptors pointing at them, without a copy, when frames are multi-buffer (AF_XDP at MTU
    9000); at MTU 1500 and on TCP the arena is empty and the sender copies as usual. Objects
    at odd offsets and sizes arrive intact either way."""
    sizes = [1 << 20, 4097, 1, 3 * (1 << 20) + 5]
    net = lab.net(mtu)
    srv, srv_done, cli, cli_done = transfer(lab, net, transport, sizes, rounds=2,
                                            send_extra=["--arena-bytes", str(8 << 20)])
    check_delivery(srv, srv_done, cli, cli_done, sizes, 2, transport)
    st = cli_done["stats"]
    if transport == "xdp" and mtu == 9000:
        assert cli_done["arena_bytes"] == 8 << 20, cli_done
        # Every data frame of the arena's objects was sent from it.
        assert st["frames_zero_copy"] >= 2 * sum(s // 8928 for s in sizes), st
    else:
        assert cli_done["arena_bytes"] == 0, cli_done
        assert st["frames_zero_copy"] == 0, st


def test_tcp_sessions_probe_their_socket_while_they_spin(lab):
    """A TCP session without busy-poll spins NetOptions::spin_us (CHAINIO_SPIN_US) after its
    last progress too: it reads the socket with RECVs that complete at once (recv_probes counts
    those that found nothing) before it arms one that waits, since a waiting RECV completes
    through io_uring's task work, later than a reply usually comes. With 0 it never probes;
    with 100 ms both sides wait for everything by probing. The bytes arrive intact both ways,
    with several control messages arriving together (a DONE and the next manifest)."""
    rounds, sizes = 20, [1000, 70000]
    probes = {}
    for spin in ("0", "100000"):
        srv, srv_done, cli, cli_done = transfer(lab, lab.net(1500), "tcp", sizes, rounds,
                                                env={"CHAINIO_SPIN_US": spin})
        check_delivery(srv, srv_done, cli, cli_done, sizes, rounds, "tcp")
        probes[spin] = (cli_done["stats"]["recv_probes"], srv_done["stats"]["recv_probes"])
    assert probes["0"] == (0, 0), probes
    assert probes["100000"][0] >= rounds and probes["100000"][1] >= rounds, probes


def test_blocking_sessions_spin_before_they_sleep(lab):
    """Without busy-poll an AF_XDP session spins NetOptions::spin_us (CHAINIO_SPIN_US) after
    its last progress before it sleeps in io_uring_enter. With 0 a wait for the peer's ACKs or
    DONE sleeps as soon as nothing is there (ring entries: 32-45 over 40 sends here); with a
    spin far longer than any round trip (100 ms) the sender never needs to sleep once the
    receiver is running (1). A malformed value is ignored with a warning (the default, 20 us,
    then applies). The bytes arrive intact in all three."""
    rounds, sizes = 40, [1000, 70000]
    enters = {}
    for spin in ("0", "100000", "soon"):
        srv, srv_done, cli, cli_done = transfer(lab, lab.net(9000), "xdp", sizes, rounds,
                                                env={"CHAINIO_SPIN_US": spin})
        check_delivery(srv, srv_done, cli, cli_done, sizes, rounds, "xdp")
        enters[spin] = cli_done["stats"]["ring_enters"]
        if spin == "soon":
            assert any("ignoring CHAINIO_SPIN_US=soon" in line for line in cli.stderr_lines), \
                cli.describe()
    assert enters["100000"] <= 3, enters
    assert enters["0"] >= rounds // 4, enters
