// xsk_raw: the raw AF_XDP figures of a link, with no reliability on top: the ceilings that
// net_bench compares ChainIO's AF_XDP transport with. Same program, sockets and frame sizes as the
// transport (XdpPort, our XDP program), but frames are pre-built once and only recycled.
//
//   xsk_raw recv IFNAME PORT SECONDS
//   xsk_raw send IFNAME SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD_BYTES|auto SECONDS
//   xsk_raw echo IFNAME PORT SECONDS
//   xsk_raw ping IFNAME SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD_BYTES COUNT WARMUP
//
// recv/send: the frame rate. PAYLOAD auto: the object bytes per frame the transport itself uses
// at this MTU (plus its frame header).
// echo/ping: the round trip of one frame, busy-polling on both sides: ping sends a frame of
// PAYLOAD_BYTES of UDP payload and spins on its RX ring until echo (which spins too) has sent it
// back with addresses swapped; COUNT timed round trips after WARMUP. echo stops SECONDS after
// its first frame or after 2 s without one.
//
// Each prints one JSON line: frames, bytes (UDP payload), seconds, GB/s or latencies, CPU seconds.
//
// XSK_RAW_WORK=copy+hash (recv and send): the frames also carry the per-byte work that ChainIO's
// transport cannot skip, with nothing else of it (no ACKs, windows or retransmissions): the
// sender hashes each 256 MiB object once (xxh3 per frame payload, as its manifest digest needs)
// and then copies every frame's payload from that object into the frame; the receiver copies
// every payload out into a 256 MiB destination and hashes it there. The rate that leaves is the
// ceiling for a transport that checks every byte end to end on this link.
#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "net/control.h"
#include "net/wire.h"
#include "net/xdp_port.h"
#include "net/transports.h"

using namespace chainio;
using namespace chainio::net;

namespace {

double cpu_seconds() {
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    return double(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           double(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

int die(const std::string& what) {
    std::fprintf(stderr, "xsk_raw: %s\n", what.c_str());
    return 1;
}

constexpr uint32_t kPktContd = 1;

// Hands RX chunks back to the fill ring (the kernel copies the next frames into them).
void refill(XdpPort& p, const uint64_t* chunks, uint32_t n) {
    uint32_t f = 0;
    if (n && xsk_ring_prod__reserve(&p.fill, n, &f) == n) {
        for (uint32_t i = 0; i < n; ++i) *xsk_ring_prod__fill_addr(&p.fill, f + i) = chunks[i];
        xsk_ring_prod__submit(&p.fill, n);
    }
}

// Frees every completed send chunk (back into p.free_tx).
void reap(XdpPort& p) {
    uint32_t idx = 0;
    const uint32_t n = xsk_ring_cons__peek(&p.comp, 512, &idx);
    for (uint32_t i = 0; i < n; ++i) p.free_tx.push_back(*xsk_ring_cons__comp_addr(&p.comp, idx + i));
    if (n) xsk_ring_cons__release(&p.comp, n);
}

// Copies one frame into free send chunks, posts it as one descriptor per chunk and kicks TX.
bool send_frame(XdpPort& p, const uint8_t* frame, size_t len) {
    const auto segs = static_cast<uint32_t>((len + XdpPort::kFrameBytes - 1) / XdpPort::kFrameBytes);
    uint32_t t = 0;
    if (p.free_tx.size() < segs || xsk_ring_prod__reserve(&p.tx, segs, &t) != segs) return false;
    for (uint32_t s = 0; s < segs; ++s) {
        const uint64_t addr = p.free_tx.back();
        p.free_tx.pop_back();
        const size_t n = std::min<size_t>(len - size_t(s) * XdpPort::kFrameBytes, XdpPort::kFrameBytes);
        std::memcpy(p.frame(addr), frame + size_t(s) * XdpPort::kFrameBytes, n);
        xdp_desc* d = xsk_ring_prod__tx_desc(&p.tx, t + s);
        d->addr = addr;
        d->len = static_cast<uint32_t>(n);
        d->options = s + 1 < segs ? kPktContd : 0;
    }
    xsk_ring_prod__submit(&p.tx, segs);
    ::sendto(p.fd(), nullptr, 0, MSG_DONTWAIT, nullptr, 0);
    return true;
}

// Spins until one whole frame (all its descriptors) is in the RX ring or `deadline` passes;
// copies it into `out` and returns its length (0 at the deadline).
// (No allocation here: this is the path whose latency the ping reports.)
size_t recv_frame(XdpPort& p, std::vector<uint8_t>& out, int64_t deadline) {
    constexpr uint32_t kMaxChunks = 8;  // a 9000 B frame takes 3
    out.clear();
    uint64_t back[kMaxChunks];
    uint32_t nb = 0;
    for (;;) {
        uint32_t idx = 0;
        if (xsk_ring_cons__peek(&p.rx, 1, &idx) == 1) {
            const xdp_desc* d = xsk_ring_cons__rx_desc(&p.rx, idx);
            const uint8_t* data = p.frame(d->addr);
            out.insert(out.end(), data, data + d->len);
            const bool last = !(d->options & kPktContd);
            back[nb++] = d->addr & ~uint64_t(XdpPort::kFrameBytes - 1);
            xsk_ring_cons__release(&p.rx, 1);
            if (last || nb == kMaxChunks) {  // a longer chain is not ours: dropped
                refill(p, back, nb);
                if (!last) {
                    out.clear();
                    nb = 0;
                    continue;
                }
                return out.size();
            }
            continue;
        }
        if (now_ns() > deadline) {
            refill(p, back, nb);
            return 0;
        }
    }
}

// XSK_RAW_WORK=copy+hash: see the top of the file.
bool work_mode() {
    const char* w = std::getenv("XSK_RAW_WORK");
    return w && std::strcmp(w, "copy+hash") == 0;
}

constexpr size_t kWorkObject = size_t(256) << 20;

// A pre-faulted object-sized buffer for the copy+hash work.
std::vector<uint8_t> work_buffer() {
    std::vector<uint8_t> b(kWorkObject);
    for (size_t i = 0; i < b.size(); i += 4096) b[i] = static_cast<uint8_t>(i >> 12);
    return b;
}

int run_recv(XdpPort& p, double secs, bool sg) {
    uint64_t frames = 0, bytes = 0;
    const bool work = work_mode();
    std::vector<uint8_t> dst = work ? work_buffer() : std::vector<uint8_t>();
    size_t at = 0, piece_start = 0;  // where the next payload goes in dst, and its frame's
    bool at_frame_start = true;
    uint64_t sink = 0;  // keeps the hashes alive
    const int64_t start_wait = now_ns();
    int64_t t0 = 0, last = 0;
    std::vector<uint64_t> back;
    // Counts from the first frame until `secs` have passed (or 2 s of nothing).
    while (true) {
        const int64_t now = now_ns();
        if (t0 && now - t0 > int64_t(secs * 1e9)) break;
        if (!t0 && now - start_wait > 30'000'000'000) break;
        if (t0 && now - last > 2'000'000'000) break;
        uint32_t idx = 0;
        const uint32_t n = xsk_ring_cons__peek(&p.rx, 64, &idx);
        if (!n) continue;
        if (!t0) t0 = now;
        last = now;
        back.clear();
        for (uint32_t i = 0; i < n; ++i) {
            const xdp_desc* d = xsk_ring_cons__rx_desc(&p.rx, idx + i);
            bytes += d->len;
            if (work) {
                // The payload: the chunk minus the headers in a frame's first chunk.
                const size_t skip = at_frame_start ? wire::kL2L4Bytes : 0;
                const size_t len = d->len > skip ? d->len - skip : 0;
                // The next object starts at a frame, with room for any frame (< 64 KiB): a
                // frame's payload is never split, and its hash below covers all of it.
                if (at_frame_start && at + (64u << 10) > dst.size()) at = piece_start = 0;
                std::memcpy(dst.data() + at, p.frame(d->addr) + skip, len);
                at += len;
                at_frame_start = !(d->options & kPktContd);
                if (at_frame_start) {  // a frame's payload complete: hash it in place
                    sink += wire::piece_hash(dst.data() + piece_start, at - piece_start);
                    piece_start = at;
                }
            }
            if (!(d->options & kPktContd)) ++frames;
            back.push_back(d->addr & ~uint64_t(XdpPort::kFrameBytes - 1));
        }
        xsk_ring_cons__release(&p.rx, n);
        refill(p, back.data(), static_cast<uint32_t>(back.size()));
    }
    if (sink == 1) std::fprintf(stderr, " ");  // never: uses the hashes
    const double dt = double(last - t0) / 1e9;
    const uint64_t payload = bytes - frames * wire::kL2L4Bytes;
    std::printf("{\"mode\": \"recv\", \"frames\": %lu, \"payload_bytes\": %lu, \"seconds\": %.4f, "
                "\"gbps\": %.4f, \"cpu_seconds\": %.3f, \"sg\": %s, \"work\": \"%s\"}\n",
                frames, payload, dt, dt > 0 ? double(payload) / dt / 1e9 : 0.0, cpu_seconds(),
                sg ? "true" : "false", work ? "copy+hash" : "none");
    return 0;
}

int run_send(XdpPort& p, const wire::Endpoint& self, const wire::Endpoint& peer, uint32_t payload,
             double secs, bool sg) {
    uint64_t frames = 0, bytes = 0;
    const size_t frame_bytes = wire::kL2L4Bytes + payload;
    const uint32_t segs = static_cast<uint32_t>((frame_bytes + XdpPort::kFrameBytes - 1) / XdpPort::kFrameBytes);
    // Pre-build every send chunk once: frames are groups of `segs` consecutive chunks.
    std::vector<uint64_t> pool = p.free_tx;  // ascending: chunk rx_frames() + i
    const size_t groups = pool.size() / segs;
    for (size_t g = 0; g < groups; ++g) {
        wire::build_l2l4(p.frame(pool[g * segs]), self, peer, payload, static_cast<uint16_t>(g));
    }
    std::vector<uint32_t> free_groups;
    for (size_t g = 0; g < groups; ++g) free_groups.push_back(static_cast<uint32_t>(g));
    const bool work = work_mode();
    std::vector<uint8_t> src = work ? work_buffer() : std::vector<uint8_t>();
    std::vector<uint64_t> pieces;
    size_t objects = 0;     // digest passes made
    size_t at = src.size();  // the next payload's offset in src; the end: hash the next object
    const int64_t t0 = now_ns();
    const double c0 = cpu_seconds();
    while (now_ns() - t0 < int64_t(secs * 1e9)) {
        uint32_t idx = 0;
        const uint32_t n = xsk_ring_cons__peek(&p.comp, 512, &idx);
        for (uint32_t i = 0; i < n; ++i) {
            // Send chunks are numbered from rx_frames(); a group is free again once its first
            // chunk completes (the kernel completes a frame's chunks together).
            const uint64_t chunk = *xsk_ring_cons__comp_addr(&p.comp, idx + i) / XdpPort::kFrameBytes -
                                   p.rx_frames();
            if (chunk % segs == 0) free_groups.push_back(static_cast<uint32_t>(chunk / segs));
        }
        if (n) xsk_ring_cons__release(&p.comp, n);
        uint32_t batch = 0;
        while (batch < 32 && !free_groups.empty()) {
            uint32_t t = 0;
            if (xsk_ring_prod__reserve(&p.tx, segs, &t) != segs) break;
            const uint32_t g = free_groups.back();
            free_groups.pop_back();
            if (work) {
                if (at + payload > src.size()) {  // a new object: its digest pass
                    pieces.clear();
                    for (size_t o = 0; o + payload <= src.size(); o += payload)
                        pieces.push_back(wire::piece_hash(src.data() + o, payload));
                    at = 0;
                    ++objects;
                }
                size_t done = 0;
                for (uint32_t s = 0; done < payload; ++s) {
                    const size_t skip = s == 0 ? wire::kL2L4Bytes : 0;
                    const size_t n = std::min<size_t>(XdpPort::kFrameBytes - skip, payload - done);
                    std::memcpy(p.frame(pool[g * segs + s]) + skip, src.data() + at + done, n);
                    done += n;
                }
                at += payload;
            }
            size_t left = frame_bytes;
            for (uint32_t s = 0; s < segs; ++s) {
                xdp_desc* d = xsk_ring_prod__tx_desc(&p.tx, t + s);
                d->addr = pool[g * segs + s];
                d->len = static_cast<uint32_t>(std::min<size_t>(left, XdpPort::kFrameBytes));
                d->options = s + 1 < segs ? kPktContd : 0;
                left -= d->len;
            }
            xsk_ring_prod__submit(&p.tx, segs);
            ++batch;
            ++frames;
            bytes += payload;
        }
        ::sendto(p.fd(), nullptr, 0, MSG_DONTWAIT, nullptr, 0);
    }
    const double dt = double(now_ns() - t0) / 1e9;
    std::printf("{\"mode\": \"send\", \"frames\": %lu, \"udp_payload\": %u, \"payload_bytes\": %lu, "
                "\"seconds\": %.4f, \"gbps\": %.4f, \"cpu_seconds\": %.3f, \"sg\": %s, "
                "\"work\": \"%s\", \"objects_hashed\": %zu}\n",
                frames, payload, bytes, dt, double(bytes) / dt / 1e9, cpu_seconds() - c0,
                sg ? "true" : "false", work ? "copy+hash" : "none", objects);
    return 0;
}

// Sends every frame back with Ethernet, IPv4 and UDP source and destination swapped (the IPv4
// checksum is a sum of 16-bit words, so swapping two of them keeps it valid).
int run_echo(XdpPort& p, double secs) {
    std::vector<uint8_t> f;
    uint64_t frames = 0;
    const int64_t start = now_ns();
    int64_t first = 0, last = 0;
    for (;;) {
        const int64_t now = now_ns();
        if (first ? now - first > int64_t(secs * 1e9) || now - last > 2'000'000'000
                  : now - start > 30'000'000'000) {
            break;
        }
        reap(p);
        if (recv_frame(p, f, now + 100'000'000) < wire::kL2L4Bytes) continue;
        last = now_ns();
        if (!first) first = last;
        uint8_t tmp[6];
        std::memcpy(tmp, f.data(), 6);
        std::memcpy(f.data(), f.data() + 6, 6);
        std::memcpy(f.data() + 6, tmp, 6);
        uint8_t* ip = f.data() + wire::kEthBytes;
        std::swap_ranges(ip + 12, ip + 16, ip + 16);
        uint8_t* udp = ip + wire::kIpBytes;
        std::swap_ranges(udp, udp + 2, udp + 2);
        if (send_frame(p, f.data(), f.size())) ++frames;
    }
    std::printf("{\"mode\": \"echo\", \"frames\": %lu, \"cpu_seconds\": %.3f}\n", frames,
                cpu_seconds());
    return 0;
}

int run_ping(XdpPort& p, const wire::Endpoint& self, const wire::Endpoint& peer, uint32_t payload,
             uint32_t count, uint32_t warmup) {
    std::vector<uint8_t> frame(wire::kL2L4Bytes + payload, 0xa5), reply;
    wire::build_l2l4(frame.data(), self, peer, payload, 1);
    std::vector<double> us;
    us.reserve(count);
    uint32_t lost = 0;
    double c0 = 0;
    for (uint32_t i = 0; i < warmup + count && lost < 10; ++i) {
        if (i == warmup) c0 = cpu_seconds();
        reap(p);
        const int64_t t0 = now_ns();
        if (!send_frame(p, frame.data(), frame.size())) return die("no free send chunk");
        const size_t n = recv_frame(p, reply, t0 + 1'000'000'000);
        const int64_t t1 = now_ns();
        if (n != frame.size()) {  // lost (or a stray frame): not a sample
            ++lost;
            continue;
        }
        if (i >= warmup) us.push_back(double(t1 - t0) / 1e3);
    }
    if (us.empty()) return die("no reply from the echo side");
    const double cpu = cpu_seconds() - c0;
    std::vector<double> sorted = us;
    std::sort(sorted.begin(), sorted.end());
    auto pct = [&](double q) { return sorted[std::min(sorted.size() - 1, size_t(q * double(sorted.size())))]; };
    double sum = 0;
    for (double v : us) sum += v;
    std::printf("{\"mode\": \"ping\", \"udp_payload\": %u, \"n\": %zu, \"lost\": %u, \"p50_us\": %.2f, "
                "\"p99_us\": %.2f, \"mean_us\": %.2f, \"min_us\": %.2f, \"cpu_seconds\": %.3f}\n",
                payload, us.size(), lost, pct(0.5), pct(0.99), sum / double(us.size()), sorted[0], cpu);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr,
                     "usage: xsk_raw recv IFNAME PORT SECONDS\n"
                     "       xsk_raw send IFNAME SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD|auto SECONDS\n"
                     "       xsk_raw echo IFNAME PORT SECONDS\n"
                     "       xsk_raw ping IFNAME SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD COUNT WARMUP\n");
        return 2;
    }
    const std::string mode = argv[1];
    auto itf = find_interface(0, argv[2]);
    if (!itf) return die(itf.status().to_string());
    const bool sg = xdp_needs_sg(itf.value().mtu);
    const uint16_t port = static_cast<uint16_t>(std::atoi(argv[3]));
    auto xp = XdpPort::open(itf.value(), 0, port, 16u << 20, sg);
    if (!xp) return die(xp.status().to_string());
    XdpPort& p = *xp.value();
    if (mode == "recv") return run_recv(p, std::atof(argv[4]), sg);
    if (mode == "echo") return run_echo(p, std::atof(argv[4]));
    const bool ping = mode == "ping";
    if ((mode != "send" && !ping) || argc < (ping ? 10 : 9)) return die("bad arguments");
    wire::Endpoint self, peer;
    std::memcpy(self.mac, itf.value().mac, 6);
    self.ip = itf.value().ip;
    self.port = port;
    if (!mac_from_string(argv[4], peer.mac)) return die("bad MAC");
    if (inet_pton(AF_INET, argv[5], &peer.ip) != 1) return die("bad IPv4 address");
    peer.port = static_cast<uint16_t>(std::atoi(argv[6]));
    const uint32_t payload = std::strcmp(argv[7], "auto") == 0
                                 ? xdp_payload_for_mtu(itf.value().mtu, sg) +
                                       static_cast<uint32_t>(sizeof(wire::FrameHeader))
                                 : static_cast<uint32_t>(std::atoi(argv[7]));
    if (ping) {
        if (wire::kL2L4Bytes + payload > size_t(itf.value().mtu) + wire::kEthBytes ||
            (!sg && wire::kL2L4Bytes + payload > XdpPort::kMaxRxFrame)) {
            return die("PAYLOAD does not fit one frame at this MTU");
        }
        return run_ping(p, self, peer, payload, static_cast<uint32_t>(std::atoi(argv[8])),
                        static_cast<uint32_t>(std::atoi(argv[9])));
    }
    return run_send(p, self, peer, payload, std::atof(argv[8]), sg);
}
