"""Transfers through an impaired wire (netem semantics, see relay.py): loss, reordering,
duplication and corruption must end in bytes that are intact. A clean error (an OSError on
both sides) would satisfy the issue's contract "intact or a clean error, never a silent
mismatch"; these impairments are mild enough that a reliable transport has to deliver, so
the tests demand delivery and say so when they get a clean error instead.
"""

from __future__ import annotations

import pytest
from netcase import TRANSPORTS, check_delivery, fmt, round_events, sizes_arg

MiB = 1 << 20
SIZES = [16 * MiB, 3840, 1, 0, 65536 + 7]
SPECS = ["loss 1%", "loss 5%", "delay 1ms reorder 25% 50%", "duplicate 5%", "corrupt 1%"]
CASES = [(1500, spec) for spec in SPECS] + [(9000, "loss 1%"), (9000, "corrupt 1%")]


def run_impaired(lab, transport, mtu, spec, sizes=SIZES, rounds=2, timeout_ms=5000):
    net = lab.net(mtu, relay=True)
    net.start_relay(spec, seed=mtu)
    args = ["--sizes", sizes_arg(sizes), "--rounds", str(rounds), "--timeout-ms", str(timeout_ms)]
    srv, port = lab.serve(net, transport, *args)
    cli = lab.send(net, port, transport, *args)
    _, cli_done = cli.result(120)
    _, srv_done = srv.result(30)
    wire = net.stop_relay()
    return srv, srv_done, cli, cli_done, wire


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mtu,spec", CASES, ids=[f"mtu{m}-{s.replace(' ', '_')}" for m, s in CASES])
def test_impaired_wire(lab, mtu, spec, transport):
    srv, srv_done, cli, cli_done, wire = run_impaired(lab, transport, mtu, spec)
    ctx = f"\nwire: {fmt(wire)}\nserver: {fmt(srv_done)}\nclient: {fmt(cli_done)}"
    # Never a silent mismatch: whatever a receiver reported as received is what was sent.
    for g, s in zip(round_events(srv), round_events(cli)):
        assert not g["mismatch"] and g["digests"] == s["digests"], f"SILENT CORRUPTION{ctx}"
    if not (srv_done["ok"] and cli_done["ok"]):
        clean = all(d.get("ok") or (d.get("error") or {}).get("is_oserror")
                    for d in (srv_done, cli_done))
        pytest.fail(f"{'clean error' if clean else 'UNCLEAN failure'} instead of delivery "
                    f"under '{spec}'{ctx}")
    check_delivery(srv, srv_done, cli, cli_done, SIZES, 2, transport)

    # The impairment really happened on the data path.
    ab, ba = wire["a->b"], wire["b->a"]
    key = {"loss": "lost", "duplicate": "duplicated", "corrupt": "corrupted",
           "delay": "delayed"}[spec.split()[0]]
    if transport == "tcp" and key == "corrupted":
        key = "corrupt_dropped"  # checksummed kernel segments are dropped, see relay.py
    assert ab[key] + ba[key] > 0, f"the relay applied no '{spec}'{ctx}"
    if "reorder" in spec:
        assert ab["sent_early"] + ba["sent_early"] > 0, ctx
    if transport == "xdp":
        assert ab["udp"] > 16 * MiB // mtu, f"data did not cross the relay as UDP frames{ctx}"
        rs, ss = srv_done["stats"], cli_done["stats"]
        if key == "corrupted":
            # The frame checksum catches flipped bits (a flip in the Ethernet/IP/UDP header
            # may also end as a loss, hence retransmits).
            assert rs["dropped_bad_check"] > 0 or ss["retransmits"] > 0, ctx
            assert rs["dropped_bad_check"] + ss["dropped_bad_check"] > 0, \
                f"{ab['corrupted'] + ba['corrupted']} frames corrupted, none caught by the " \
                f"frame checksum{ctx}"
        if key == "lost":
            assert ss["retransmits"] > 0, ctx
        if key == "duplicated":
            assert rs["duplicates"] + ss["duplicates"] > 0, ctx


def test_corruption_tcp_cannot_see_is_caught_by_the_digest(lab):
    """The relay flips one payload bit of a kernel TCP segment before its checksum is computed
    (see relay.py, forge-nth): TCP delivers the wrong byte as good. The ChainIO TCP transport's
    end-to-end xxh3 digest must turn that into an error (or a resend that ends intact), never
    into a successful send()/recv() of wrong bytes."""
    sizes = [16 * MiB]
    net = lab.net(1500, relay=True)
    net.start_relay("forge-nth 40")
    args = ["--sizes", sizes_arg(sizes), "--rounds", "1", "--timeout-ms", "3000"]
    srv, port = lab.serve(net, "tcp", *args)
    cli = lab.send(net, port, "tcp", *args)
    _, cli_done = cli.result(60)
    _, srv_done = srv.result(30)
    wire = net.stop_relay()
    ctx = f"\nwire: {fmt(wire)}\nserver: {fmt(srv_done)}\nclient: {fmt(cli_done)}"
    assert wire["a->b"]["forged"] == 1, f"the relay forged nothing{ctx}"
    for g in round_events(srv):
        assert not g["mismatch"], f"SILENT CORRUPTION delivered by recv(){ctx}"
    if srv_done["ok"] and cli_done["ok"]:
        check_delivery(srv, srv_done, cli, cli_done, sizes, 1, "tcp")
    else:
        assert not cli_done["ok"], f"send() reported delivery of corrupted bytes{ctx}"
        for d in (srv_done, cli_done):
            assert d["ok"] or d["error"]["is_oserror"], f"unclean error{ctx}"


def test_corrupted_sequence_numbers_never_misplace_bytes(lab):
    """The AF_XDP receiver copies a chunk it has not received yet into its slot before checking
    the frame (so that it hashes the bytes in cache, where they will stay). A frame whose
    sequence number was corrupted on the wire therefore writes into another chunk's slot first.
    That must only ever be a slot still empty (one already received is never written again),
    the frame must then fail its check, and the object must still arrive intact. The relay
    rewrites 5% of the DATA frames to name a nearby chunk (relay.py, corrupt-seq)."""
    sizes = [16 * MiB, 65536 + 7]
    srv, srv_done, cli, cli_done, wire = run_impaired(lab, "xdp", 1500, "corrupt-seq 5%",
                                                      sizes=sizes)
    ctx = f"\nwire: {fmt(wire)}\nserver: {fmt(srv_done)}\nclient: {fmt(cli_done)}"
    check_delivery(srv, srv_done, cli, cli_done, sizes, 2, "xdp")
    moved = wire["a->b"]["seq_corrupted"]
    assert moved > 100, f"the relay moved only {moved} frames{ctx}"
    # Rewritten frames that reached the socket fail their check (some never do: the kernel
    # drops frames when the fill ring runs dry), and only those: nothing else was impaired.
    bad = srv_done["stats"]["dropped_bad_check"]
    assert moved // 2 < bad <= moved, f"{bad} frames failed the check, {moved} rewritten{ctx}"


@pytest.mark.parametrize("spec", ["loss 5%", "corrupt 5%", "duplicate 5%"])
def test_small_inline_transfers_on_an_impaired_wire(lab, spec):
    """Transfers small enough to ride inside their manifest frame (test_net_transfer) get the
    same guarantees: 60 rounds of four tiny objects through a lossy, corrupting or duplicating
    wire arrive intact, and the impairment hit the frames that carried them."""
    sizes = [0, 1, 100, 1000]
    srv, srv_done, cli, cli_done, wire = run_impaired(lab, "xdp", 1500, spec, sizes=sizes,
                                                      rounds=60)
    ctx = f"\nwire: {fmt(wire)}\nserver: {fmt(srv_done)}\nclient: {fmt(cli_done)}"
    check_delivery(srv, srv_done, cli, cli_done, sizes, 60, "xdp")
    rs, ss = srv_done["stats"], cli_done["stats"]
    key = {"loss": "lost", "corrupt": "corrupted", "duplicate": "duplicated"}[spec.split()[0]]
    assert wire["a->b"][key] + wire["b->a"][key] > 0, f"the relay applied no '{spec}'{ctx}"
    assert ss["frames_sent"] - ss["retransmits"] == 60, f"not one frame per transfer{ctx}"
    if key == "corrupted":
        assert rs["dropped_bad_check"] + ss["dropped_bad_check"] > 0, ctx
    if key == "lost":
        assert ss["retransmits"] > 0, ctx
