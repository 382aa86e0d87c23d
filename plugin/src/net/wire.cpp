#include "net/wire.h"

#include <arpa/inet.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#ifdef CHAINIO_XXH_DISPATCH
#include <xxh_x86dispatch.h>  // XXH3_64bits & co. -> the library's AVX2/AVX-512 builds
#endif

namespace chainio::net::wire {
namespace {

uint16_t ip_checksum(const uint8_t* p, size_t n) {
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2) sum += uint32_t(p[i]) << 8 | p[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons(static_cast<uint16_t>(~sum));
}

void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

}  // namespace

void build_l2l4(uint8_t* p, const Endpoint& src, const Endpoint& dst, size_t udp_payload,
                uint16_t ip_id) {
    std::memcpy(p, dst.mac, 6);
    std::memcpy(p + 6, src.mac, 6);
    put16(p + 12, htons(0x0800));
    uint8_t* ip = p + kEthBytes;
    ip[0] = 0x45;  // IPv4, 20-byte header
    ip[1] = 0;
    put16(ip + 2, htons(static_cast<uint16_t>(kIpBytes + kUdpBytes + udp_payload)));
    put16(ip + 4, htons(ip_id));
    put16(ip + 6, htons(0x4000));  // don't fragment
    ip[8] = 64;
    ip[9] = 17;  // UDP
    put16(ip + 10, 0);
    std::memcpy(ip + 12, &src.ip, 4);
    std::memcpy(ip + 16, &dst.ip, 4);
    const uint16_t csum = ip_checksum(ip, kIpBytes);
    std::memcpy(ip + 10, &csum, 2);
    uint8_t* udp = ip + kIpBytes;
    put16(udp, htons(src.port));
    put16(udp + 2, htons(dst.port));
    put16(udp + 4, htons(static_cast<uint16_t>(kUdpBytes + udp_payload)));
    put16(udp + 6, 0);  // no UDP checksum (IPv4 allows it); frame_check covers our bytes
}

uint64_t object_digest(const void* data, size_t size) {
    static const uint8_t empty = 0;
    return XXH3_64bits(size ? data : &empty, size);
}

uint64_t piece_hash(const void* payload, size_t len) { return object_digest(payload, len); }

uint64_t pieces_digest(const uint64_t* hashes, size_t count) {
    return piece_hash(hashes, count * sizeof(uint64_t));
}

uint64_t frame_check(const FrameHeader& h, uint64_t payload_hash) {
    FrameHeader z = h;
    z.check = 0;
    return XXH3_64bits_withSeed(&z, sizeof(z), payload_hash);
}

uint64_t frame_check(const FrameHeader& h, const void* payload, size_t len) {
    return frame_check(h, piece_hash(payload, len));
}

uint64_t frame_check(const FrameHeader& h, const uint8_t* const* pieces, const uint32_t* lens,
                     uint32_t count) {
    if (count == 1) return frame_check(h, pieces[0], lens[0]);
    XXH3_state_t st;  // the hash of the concatenated pieces, as piece_hash() of one buffer
    XXH3_64bits_reset(&st);
    for (uint32_t i = 0; i < count; ++i) XXH3_64bits_update(&st, pieces[i], lens[i]);
    return frame_check(h, XXH3_64bits_digest(&st));
}

const uint8_t* udp_payload(const uint8_t* f, size_t len, uint16_t port, size_t* out_len) {
    if (len < kL2L4Bytes) return nullptr;
    uint16_t ethertype;
    std::memcpy(&ethertype, f + 12, 2);
    if (ethertype != htons(0x0800)) return nullptr;
    const uint8_t* ip = f + kEthBytes;
    if ((ip[0] >> 4) != 4 || ip[9] != 17) return nullptr;
    const size_t ihl = size_t(ip[0] & 0xf) * 4;
    if (ihl < kIpBytes || kEthBytes + ihl + kUdpBytes > len) return nullptr;
    uint16_t tot;
    std::memcpy(&tot, ip + 2, 2);
    const size_t ip_len = ntohs(tot);
    if (ip_len < ihl + kUdpBytes || kEthBytes + ip_len > len) return nullptr;
    const uint8_t* udp = ip + ihl;
    uint16_t dport, ulen;
    std::memcpy(&dport, udp + 2, 2);
    std::memcpy(&ulen, udp + 4, 2);
    if (ntohs(dport) != port) return nullptr;
    const size_t udp_len = ntohs(ulen);
    if (udp_len < kUdpBytes || udp_len > ip_len - ihl) return nullptr;
    *out_len = udp_len - kUdpBytes;
    return udp + kUdpBytes;
}

}  // namespace chainio::net::wire
