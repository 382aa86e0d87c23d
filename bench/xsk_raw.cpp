// xsk_raw: the raw AF_XDP frame rate of a link, with no reliability on top: the ceiling that
// net_bench compares ChainIO's AF_XDP transport with. Same program, sockets and frame sizes as the
// transport (XdpPort, our XDP program), but frames are pre-built once and only recycled.
//
//   xsk_raw recv IFNAME PORT SECONDS
//   xsk_raw send IFNAME SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD_BYTES|auto SECONDS
//
// PAYLOAD auto: the object bytes per frame the transport itself uses at this MTU.
//
// Each prints one JSON line: frames, bytes (UDP payload), seconds, GB/s, CPU seconds.
#include <arpa/inet.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

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

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: xsk_raw recv IFNAME PORT SECONDS | xsk_raw send IFNAME "
                             "SRC_PORT DST_MAC DST_IP DST_PORT PAYLOAD SECONDS\n");
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
    uint64_t frames = 0, bytes = 0;
    if (mode == "recv") {
        const double secs = std::atof(argv[4]);
        const int64_t start_wait = now_ns();
        int64_t t0 = 0, last = 0;
        std::vector<uint64_t> back;
        // Counts from the first frame until `secs` have passed (or 10 s of nothing).
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
                if (!(d->options & kPktContd)) ++frames;
                back.push_back(d->addr & ~uint64_t(XdpPort::kFrameBytes - 1));
            }
            xsk_ring_cons__release(&p.rx, n);
            uint32_t f = 0;
            if (xsk_ring_prod__reserve(&p.fill, n, &f) == n) {
                for (uint32_t i = 0; i < n; ++i) *xsk_ring_prod__fill_addr(&p.fill, f + i) = back[i];
                xsk_ring_prod__submit(&p.fill, n);
            }
        }
        const double dt = double(last - t0) / 1e9;
        const uint64_t payload = bytes - frames * wire::kL2L4Bytes;
        std::printf("{\"mode\": \"recv\", \"frames\": %lu, \"payload_bytes\": %lu, \"seconds\": %.4f, "
                    "\"gbps\": %.4f, \"cpu_seconds\": %.3f, \"sg\": %s}\n",
                    frames, payload, dt, dt > 0 ? double(payload) / dt / 1e9 : 0.0, cpu_seconds(),
                    sg ? "true" : "false");
        return 0;
    }
    if (mode != "send" || argc < 9) return die("bad arguments");
    wire::Endpoint self, peer;
    std::memcpy(self.mac, itf.value().mac, 6);
    self.ip = itf.value().ip;
    self.port = port;
    if (!mac_from_string(argv[4], peer.mac)) return die("bad MAC");
    inet_pton(AF_INET, argv[5], &peer.ip);
    peer.port = static_cast<uint16_t>(std::atoi(argv[6]));
    const uint32_t payload = std::strcmp(argv[7], "auto") == 0
                                 ? xdp_payload_for_mtu(itf.value().mtu, sg) +
                                       static_cast<uint32_t>(sizeof(wire::FrameHeader))
                                 : static_cast<uint32_t>(std::atoi(argv[7]));
    const double secs = std::atof(argv[8]);
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
                "\"seconds\": %.4f, \"gbps\": %.4f, \"cpu_seconds\": %.3f, \"sg\": %s}\n",
                frames, payload, bytes, dt, double(bytes) / dt / 1e9, cpu_seconds() - c0,
                sg ? "true" : "false");
    return 0;
}
