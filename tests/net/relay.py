#!/usr/bin/env python3
"""A user-space netem: an Ethernet wire between two devices that loses, duplicates, corrupts,
delays and reorders frames. Runs inside the relay namespace of netns.Net(relay=True).

Why not `tc qdisc ... netem`: (1) this kernel has no sch_netem (CONFIG_NET_SCH_NETEM is not
set: "Specified qdisc kind is unknown"), and (2) even where it exists, an AF_XDP socket
transmits through __dev_direct_xmit(), which bypasses the qdisc of the device it sends on, so
netem on the veth of either host never sees ChainIO's data frames. Here every frame of either
host, AF_XDP or kernel, crosses this process: AF_PACKET sockets on the two relay-side veth ends
(PACKET_VNET_HDR keeps GSO and checksum-offload metadata, so kernel TCP keeps working).

Spec grammar (netem's): `loss P%`, `duplicate P%`, `corrupt P%`, `delay Tms [reorder P% [C%]]`,
combinable. Semantics follow netem: loss drops; duplicate sends a second copy; corrupt flips
one random bit of one random byte; with delay, a packet is held T ms, except that with
`reorder P% C%` a fraction P (correlation C) is sent at once, overtaking the held ones.
ARP passes untouched (neighbour resolution is not under test). A corrupted frame that carries
a checksum the kernel would verify (anything but UDP without checksum offload, e.g. kernel TCP
segments) is dropped instead: that is what the receiving kernel does with it, and flipping a
bit in a frame whose checksum the kernel has not computed yet would forge an undetectable
corruption no real link produces. UDP frames (ChainIO's AF_XDP frames) get the bit flip.

One word is not netem's: `forge-nth N` flips one bit in the payload of the N-th kernel TCP
segment from A to B that carries at least 1000 payload bytes, *before* the kernel computes its
checksum (the segment still has checksum offload pending): a corruption no TCP checksum can
see, which only an end-to-end digest catches. Counted as "forged".

Nor is `corrupt-seq P%`: in a fraction P of ChainIO's AF_XDP DATA frames it flips one of the low
six bits of the chunk sequence number in our frame header, so that the frame claims to be a
nearby chunk of the same object: a header corruption aimed at the receiver's placement (it
copies a chunk not received yet into its slot before checking it). Counted as "seq_corrupted".

Protocol: prints {"event": "ready"} once both sockets are bound; stops when a line arrives on
stdin (or stdin closes) and prints {"event": "done", "stats": {...}}.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
VNET_HDR = 10  # struct virtio_net_hdr
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1


def parse_spec(spec: str) -> dict:
    words = spec.split()
    cfg = {"loss": 0.0, "duplicate": 0.0, "corrupt": 0.0, "delay": 0.0, "reorder": 0.0,
           "reorder_corr": 0.0, "forge_nth": 0, "corrupt_seq": 0.0}

    def pct(w: str) -> float:
        if not w.endswith("%"):
            raise ValueError(f"expected a percentage, got {w!r} in {spec!r}")
        return float(w[:-1]) / 100

    def dur(w: str) -> float:
        for suffix, m in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
            if w.endswith(suffix):
                return float(w[: -len(suffix)]) * m
        raise ValueError(f"expected a duration, got {w!r} in {spec!r}")

    i = 0
    while i < len(words):
        w = words[i]
        if w in ("loss", "duplicate", "corrupt"):
            cfg[w] = pct(words[i + 1])
            i += 2
        elif w == "corrupt-seq":
            cfg["corrupt_seq"] = pct(words[i + 1])
            i += 2
        elif w == "forge-nth":
            cfg["forge_nth"] = int(words[i + 1])
            i += 2
        elif w == "delay":
            cfg["delay"] = dur(words[i + 1])
            i += 2
        elif w == "reorder":
            cfg["reorder"] = pct(words[i + 1])
            i += 2
            if i < len(words) and words[i].endswith("%"):
                cfg["reorder_corr"] = pct(words[i])
                i += 1
        else:
            raise ValueError(f"unsupported netem word {w!r} in {spec!r}")
    if cfg["reorder"] and not cfg["delay"]:
        raise ValueError("reorder needs a delay (as in netem)")
    return cfg


class Correlated:
    """netem's correlated random numbers: next = (1 - rho) * U + rho * last."""

    def __init__(self, rng: random.Random, rho: float):
        self.rng, self.rho, self.last = rng, rho, rng.random()

    def __call__(self) -> float:
        self.last = (1 - self.rho) * self.rng.random() + self.rho * self.last
        return self.last


def open_port(dev: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # else we would re-read our own sends
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((dev, ETH_P_ALL))
    s.setblocking(False)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="device toward host A")
    ap.add_argument("--b", required=True, help="device toward host B")
    ap.add_argument("--spec", default="", help="netem words, e.g. 'loss 1%%'")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cfg = parse_spec(args.spec)
    rng = random.Random(args.seed)
    reorder_rand = Correlated(rng, cfg["reorder_corr"])

    socks = {"a": open_port(args.a), "b": open_port(args.b)}
    other = {"a": "b", "b": "a"}
    by_fd = {s.fileno(): name for name, s in socks.items()}
    stats = {d: {"frames": 0, "bytes": 0, "lost": 0, "duplicated": 0, "corrupted": 0,
                 "corrupt_dropped": 0, "seq_corrupted": 0, "delayed": 0, "sent_early": 0,
                 "send_errors": 0, "udp": 0, "gso": 0, "forged": 0, "tcp_data": 0}
             for d in ("a->b", "b->a")}
    held: list = []  # (release time, seq, out side, frame)
    seq = 0
    buf = bytearray(VNET_HDR + 70000)
    view = memoryview(buf)

    def send(side: str, frame: bytes, st: dict) -> None:
        try:
            socks[side].send(frame)
        except (BlockingIOError, OSError):
            st["send_errors"] += 1  # a full queue or an oversize frame: the wire lost it

    def forward(src: str, frame: bytes) -> None:
        nonlocal seq
        st = stats[f"{src}->{other[src]}"]
        dst = other[src]
        st["frames"] += 1
        st["bytes"] += len(frame) - VNET_HDR
        eth = frame[VNET_HDR:]
        ethertype = struct.unpack_from("!H", eth, 12)[0] if len(eth) >= 14 else 0
        if ethertype == 0x0806:
            send(dst, frame, st)
            return
        is_udp = ethertype == 0x0800 and len(eth) >= 34 and eth[23] == 17
        needs_csum = frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM
        st["udp"] += is_udp
        st["gso"] += frame[1] != 0
        if cfg["forge_nth"] and src == "a" and ethertype == 0x0800 and needs_csum \
                and len(eth) >= 34 and eth[23] == 6:
            csum_start = struct.unpack_from("<H", frame, 6)[0]  # from the Ethernet header
            if csum_start + 20 <= len(eth):
                data_off = csum_start + (eth[csum_start + 12] >> 4) * 4
                if len(eth) - data_off >= 1000:
                    st["tcp_data"] += 1
                    if st["tcp_data"] == cfg["forge_nth"]:
                        b = bytearray(frame)
                        pos = VNET_HDR + data_off + rng.randrange(len(eth) - data_off)
                        b[pos] ^= 1 << rng.randrange(8)
                        frame = bytes(b)
                        st["forged"] += 1
        # Our frame header follows Ethernet (14) + IPv4 without options (20) + UDP (8): magic
        # "CHIO", version, type (1 = DATA), stream, transfer, then seq (little-endian) at 54.
        if cfg["corrupt_seq"] and is_udp and len(eth) >= 58 and eth[42:46] == b"CHIO" \
                and eth[47] == 1 and rng.random() < cfg["corrupt_seq"]:
            b = bytearray(frame)
            b[VNET_HDR + 54] ^= 1 << rng.randrange(6)
            frame = bytes(b)
            st["seq_corrupted"] += 1
        if cfg["loss"] and rng.random() < cfg["loss"]:
            st["lost"] += 1
            return
        copies = [frame]
        if cfg["duplicate"] and rng.random() < cfg["duplicate"]:
            st["duplicated"] += 1
            copies.append(frame)
        if cfg["corrupt"] and rng.random() < cfg["corrupt"]:
            if is_udp and not needs_csum and frame[1] == 0:
                b = bytearray(frame)
                pos = VNET_HDR + rng.randrange(len(eth))
                b[pos] ^= 1 << rng.randrange(8)
                copies[0] = bytes(b)
                st["corrupted"] += 1
            else:
                st["corrupt_dropped"] += 1
                copies = copies[1:]
        for c in copies:
            if cfg["delay"]:
                if cfg["reorder"] and reorder_rand() < cfg["reorder"]:
                    st["sent_early"] += 1
                    send(dst, c, st)
                    continue
                st["delayed"] += 1
                seq += 1
                heapq.heappush(held, (time.monotonic() + cfg["delay"], seq, dst, c, st))
            else:
                send(dst, c, st)

    poller = select.poll()
    for s in socks.values():
        poller.register(s.fileno(), select.POLLIN)
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    sys.stdout.write(json.dumps({"event": "ready", "config": cfg}) + "\n")
    sys.stdout.flush()
    running = True
    while running:
        timeout_ms = 200
        if held:
            timeout_ms = max(0, int((held[0][0] - time.monotonic()) * 1000))
        for fd, ev in poller.poll(timeout_ms):
            if fd == sys.stdin.fileno():
                running = False
                continue
            src = by_fd[fd]
            s = socks[src]
            for _ in range(256):
                try:
                    n = s.recv_into(buf)
                except BlockingIOError:
                    break
                forward(src, bytes(view[:n]))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, dst, frame, st = heapq.heappop(held)
            send(dst, frame, st)
    sys.stdout.write(json.dumps({"event": "done", "ok": True, "stats": stats}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
