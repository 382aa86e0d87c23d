#pragma once

// What ChainIO peers put on the wire.
//
// Control channel (TCP, both transports): messages of a fixed 24-byte header followed by `len`
// body bytes. Bodies of HELLO and MANIFEST are JSON; DATA (TCP transport only) carries object
// bytes. All integers little-endian (both ends are checked to be little-endian hosts).
//
// Data frames (AF_XDP transport): Ethernet + IPv4 + UDP built by us, then a 40-byte FrameHeader
// and the payload. A DATA frame carries chunk `seq` of object `stream` of transfer `transfer`:
// bytes [seq * payload, seq * payload + len) of the object. An ACK frame carries the receiver's
// cumulative sequence (every chunk below it arrived), a 256-bit selective-ACK bitmap of the
// chunks above it, and the number of frames the receiver can still take (its send window).
// `check` = xxh3 of the header (check field zeroed) seeded with the payload's piece hash
// (xxh3 of the payload): corrupted frames are dropped and resent. The digest an AF_XDP manifest
// gives for an object is pieces_digest() of the piece hashes of its `payload`-sized chunks, so a
// sender hashes each byte once (the piece hashes serve the digest and every frame's check) and
// a receiver hashes each chunk once, in its destination right after copying it there.

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace chainio::net::wire {

// 2: frame checks and AF_XDP digests built on piece hashes; 3: small objects inline in the
// AF_XDP manifest
constexpr uint32_t kVersion = 3;

enum class Msg : uint32_t {
    kHello = 1,     ///< JSON: version, token (server), transport, mac, ip, udp_port, queue, mtu
    kManifest = 2,  ///< JSON: transfer, objects [{size, digest}]; a = transfer id
    kDone = 3,      ///< a = transfer id, b = 0 or errno; body = error text
    kError = 4,     ///< body = error text; the sender of it gives up on the session
    kClose = 5,     ///< orderly end of the session
    kData = 6,      ///< TCP transport: a = transfer << 32 | stream, b = offset; body = bytes
};

struct MsgHeader {
    uint32_t type;
    uint32_t len;  ///< body bytes that follow
    uint64_t a;
    uint64_t b;
};
static_assert(sizeof(MsgHeader) == 24);

/// Largest body accepted on the control channel outside DATA (a manifest of ~100k objects).
constexpr uint32_t kMaxControlBody = 16u << 20;

constexpr uint32_t kMagic = 0x4f494843;  // "CHIO"
enum class Frame : uint8_t { kData = 1, kAck = 2 };

struct FrameHeader {
    uint32_t magic;
    uint8_t version;
    uint8_t type;
    uint16_t stream;
    uint32_t transfer;
    uint32_t seq;
    uint64_t token;
    uint32_t len;
    uint32_t window;
    uint64_t check;
};
static_assert(sizeof(FrameHeader) == 40);

constexpr uint32_t kSackBits = 256;
struct AckBody {
    uint64_t sack[kSackBits / 64];  ///< bit i: chunk (seq + 1 + i) arrived
};

constexpr size_t kEthBytes = 14;
constexpr size_t kIpBytes = 20;
constexpr size_t kUdpBytes = 8;
constexpr size_t kL2L4Bytes = kEthBytes + kIpBytes + kUdpBytes;
constexpr size_t kFrameOverhead = kL2L4Bytes + sizeof(FrameHeader);

/// Addresses of one side, as exchanged in the hello.
struct Endpoint {
    uint8_t mac[6] = {};
    uint32_t ip = 0;     ///< network order
    uint16_t port = 0;   ///< UDP port the XDP program steers, host order
};

/// Writes Ethernet/IPv4/UDP headers for a datagram of `udp_payload` bytes at `p`.
void build_l2l4(uint8_t* p, const Endpoint& src, const Endpoint& dst, size_t udp_payload,
                uint16_t ip_id);

/// The end-to-end digest of an object (xxh3-64; an empty object has one too).
uint64_t object_digest(const void* data, size_t size);

/// The hash of one chunk's payload (xxh3-64).
uint64_t piece_hash(const void* payload, size_t len);
/// The digest of an object sent over AF_XDP: over the piece hashes of its chunks, in order.
uint64_t pieces_digest(const uint64_t* hashes, size_t count);

/// The frame checksum described above, from the payload's piece hash.
uint64_t frame_check(const FrameHeader& h, uint64_t payload_hash);
/// The same, hashing the payload.
uint64_t frame_check(const FrameHeader& h, const void* payload, size_t len);
/// The same over a payload in `count` pieces (a multi-buffer frame's chunks).
uint64_t frame_check(const FrameHeader& h, const uint8_t* const* pieces, const uint32_t* lens,
                     uint32_t count);

/// Parses the Ethernet/IPv4/UDP headers of a received frame; returns a pointer to the UDP
/// payload and its length, or nullptr when the frame is not a well-formed datagram to `port`.
const uint8_t* udp_payload(const uint8_t* frame, size_t len, uint16_t port, size_t* out_len);

}  // namespace chainio::net::wire
