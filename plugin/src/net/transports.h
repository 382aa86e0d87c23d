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

/// Object bytes per frame for an MTU, without SG: the frame must fit one copy-mode chunk.
uint32_t xdp_payload_for_mtu(int mtu);

}  // namespace chainio::net
