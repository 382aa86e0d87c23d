// The frame format of the AF_XDP transport (plugin/src/net/wire.*) and the per-stream chunk
// bookkeeping (Stream in net/session_core.h). End-to-end transfers between network namespaces are
// tested in tests/net.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "net/session_core.h"
#include "net/transports.h"
#include "net/wire.h"

namespace chainio::net {
namespace {

wire::Endpoint endpoint(uint8_t last, const char* ip, uint16_t port) {
    wire::Endpoint e;
    for (int i = 0; i < 6; ++i) e.mac[i] = static_cast<uint8_t>(0x10 + i);
    e.mac[5] = last;
    inet_pton(AF_INET, ip, &e.ip);
    e.port = port;
    return e;
}

std::vector<uint8_t> frame(size_t payload, uint16_t dport = 7000) {
    std::vector<uint8_t> f(wire::kL2L4Bytes + payload);
    wire::build_l2l4(f.data(), endpoint(1, "10.0.0.1", 5000), endpoint(2, "10.0.0.2", dport),
                     payload, 42);
    for (size_t i = 0; i < payload; ++i) f[wire::kL2L4Bytes + i] = static_cast<uint8_t>(i * 7);
    return f;
}

TEST(NetWire, BuiltHeadersParseBack) {
    auto f = frame(1000);
    size_t n = 0;
    const uint8_t* p = wire::udp_payload(f.data(), f.size(), 7000, &n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(n, 1000u);
    EXPECT_EQ(p, f.data() + wire::kL2L4Bytes);
    EXPECT_EQ(f[0 + 5], 2);  // destination MAC first
    EXPECT_EQ(f[6 + 5], 1);
}

TEST(NetWire, Ipv4HeaderChecksumVerifies) {
    auto f = frame(64);
    uint32_t sum = 0;
    for (size_t i = 0; i < wire::kIpBytes; i += 2)
        sum += uint32_t(f[wire::kEthBytes + i]) << 8 | f[wire::kEthBytes + i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    EXPECT_EQ(sum, 0xffffu);  // a correct header sums to all ones
}

TEST(NetWire, OtherPortShortOrTruncatedFramesAreRejected) {
    auto f = frame(100);
    size_t n = 0;
    EXPECT_EQ(wire::udp_payload(f.data(), f.size(), 7001, &n), nullptr);
    EXPECT_EQ(wire::udp_payload(f.data(), wire::kL2L4Bytes - 1, 7000, &n), nullptr);
    // The IP total length says 100 payload bytes; a frame cut short is not trusted.
    EXPECT_EQ(wire::udp_payload(f.data(), f.size() - 1, 7000, &n), nullptr);
    auto g = f;
    g[12] = 0x86;  // IPv6 ethertype
    g[13] = 0xdd;
    EXPECT_EQ(wire::udp_payload(g.data(), g.size(), 7000, &n), nullptr);
    g = f;
    g[wire::kEthBytes + 9] = 6;  // TCP
    EXPECT_EQ(wire::udp_payload(g.data(), g.size(), 7000, &n), nullptr);
}

TEST(NetWire, EthernetPaddingIsIgnored) {
    auto f = frame(4);  // below the 60-byte Ethernet minimum once padded
    f.resize(60, 0);
    size_t n = 0;
    ASSERT_NE(wire::udp_payload(f.data(), f.size(), 7000, &n), nullptr);
    EXPECT_EQ(n, 4u);
}

TEST(NetWire, FrameCheckCoversHeaderAndPayload) {
    wire::FrameHeader h{};
    h.magic = wire::kMagic;
    h.type = 1;
    h.seq = 9;
    h.token = 0x1234;
    h.len = 5;
    const uint8_t payload[5] = {1, 2, 3, 4, 5};
    const uint64_t c = wire::frame_check(h, payload, 5);
    h.check = c;
    EXPECT_EQ(wire::frame_check(h, payload, 5), c) << "the check field itself is excluded";
    uint8_t flipped[5] = {1, 2, 3, 4, 4};
    EXPECT_NE(wire::frame_check(h, flipped, 5), c);
    wire::FrameHeader other = h;
    other.seq = 10;
    EXPECT_NE(wire::frame_check(other, payload, 5), c);
    other = h;
    other.token = 0x1235;
    EXPECT_NE(wire::frame_check(other, payload, 5), c);
}

TEST(NetWire, FrameCheckFromPieceHashOrPiecesAgree) {
    // The sender checks frames from stored piece hashes, the receiver from the bytes it placed
    // (one buffer) or from a multi-buffer frame's chunks: all three must give the same check.
    wire::FrameHeader h{};
    h.magic = wire::kMagic;
    h.type = 1;
    h.len = 9000;
    std::vector<uint8_t> payload(9000);
    for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<uint8_t>(i * 7 + 3);
    const uint64_t c = wire::frame_check(h, payload.data(), payload.size());
    EXPECT_EQ(wire::frame_check(h, wire::piece_hash(payload.data(), payload.size())), c);
    const uint8_t* pieces[3] = {payload.data(), payload.data() + 3786, payload.data() + 7882};
    const uint32_t lens[3] = {3786, 4096, 9000 - 7882};
    EXPECT_EQ(wire::frame_check(h, pieces, lens, 3), c);
    EXPECT_EQ(wire::piece_hash(nullptr, 0), wire::piece_hash(payload.data(), 0));
}

TEST(NetWire, PiecesDigestDependsOnEveryPieceAndItsPlace) {
    // The AF_XDP object digest is over the chunks' piece hashes in order: a chunk placed at the
    // wrong offset (two swapped) or a changed chunk must change it.
    const uint64_t a = wire::piece_hash("first", 5), b = wire::piece_hash("second", 6);
    const uint64_t ab[2] = {a, b}, ba[2] = {b, a};
    const uint64_t aa[2] = {a, a};
    EXPECT_NE(wire::pieces_digest(ab, 2), wire::pieces_digest(ba, 2));
    EXPECT_NE(wire::pieces_digest(ab, 2), wire::pieces_digest(aa, 2));
    EXPECT_NE(wire::pieces_digest(ab, 2), wire::pieces_digest(ab, 1));
    EXPECT_EQ(wire::pieces_digest(ab, 2), wire::pieces_digest(ab, 2));
}

TEST(NetWire, PayloadPerFrameFitsMtuAndCopyModeChunk) {
    EXPECT_EQ(xdp_payload_for_mtu(1500) % 8, 0u);
    EXPECT_LE(xdp_payload_for_mtu(1500) + wire::kFrameOverhead, 1514u);
    EXPECT_LE(xdp_payload_for_mtu(9000) + wire::kFrameOverhead, 3840u);
    EXPECT_LE(xdp_payload_for_mtu(3500) + wire::kFrameOverhead, 3514u);
    EXPECT_EQ(xdp_payload_for_mtu(0), 0u);
    EXPECT_EQ(xdp_payload_for_mtu(60), 0u);
}

TEST(NetStream, CumulativeSequenceFollowsHoles) {
    Stream s;
    s.init(130, true);
    EXPECT_EQ(s.bits.size(), 3u);
    EXPECT_TRUE(s.mark(1));
    EXPECT_EQ(s.cum, 0u);
    EXPECT_TRUE(s.mark(0));
    EXPECT_EQ(s.cum, 2u);
    EXPECT_FALSE(s.mark(0)) << "a duplicate is reported";
    for (uint32_t i = 3; i < 130; ++i) EXPECT_TRUE(s.mark(i));
    EXPECT_EQ(s.cum, 2u);
    EXPECT_FALSE(s.complete());
    EXPECT_TRUE(s.mark(2));
    EXPECT_EQ(s.cum, 130u);
    EXPECT_TRUE(s.complete());
}

TEST(NetStream, EmptyObjectIsCompleteAtOnce) {
    Stream s;
    s.init(0, false);
    EXPECT_TRUE(s.complete());
    EXPECT_EQ(s.cum, 0u);
}

}  // namespace
}  // namespace chainio::net
