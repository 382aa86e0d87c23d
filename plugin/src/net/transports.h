#pragma once

// Factories of the two transports, used by the hello in session.cpp.

#include <memory>
#include <string>

#include "chainio/net.h"
#include "net/wire.h"

namespace chainio::net {

class XdpPort;

/// A session whose bytes travel on the TCP connection `fd` (taken over).
Result<std::unique_ptr<Session>> make_tcp_session(int fd, uint64_t token, const NetOptions& o,
                                                  std::string fallback);

/// What the hello settled for an AF_XDP session.
struct XdpPeering {
    wire::Endpoint self;
    wire::Endpoint peer;
    uint32_t payload = 0;          ///< object bytes per data frame
    uint32_t peer_rx_frames = 0;   ///< the peer's fill ring: the first send window
};

/// A session whose bytes travel as AF_XDP frames on `port`; `fd` stays the control channel.
Result<std::unique_ptr<Session>> make_xdp_session(int fd, uint64_t token, const NetOptions& o,
                                                  std::unique_ptr<XdpPort> port,
                                                  const XdpPeering& peering);

/// Whether frames of this MTU need multi-buffer (SG) AF_XDP descriptors: a copy-mode chunk holds
/// at most XdpPort::kMaxRxFrame bytes.
bool xdp_needs_sg(int mtu);
/// Object bytes per frame for an MTU: with `sg` a frame spans several chunks (up to the MTU),
/// without it a frame must fit one chunk. 0 when the MTU leaves no room.
uint32_t xdp_payload_for_mtu(int mtu, bool sg = false);

}  // namespace chainio::net
