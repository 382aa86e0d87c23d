#pragma once

// Blocking socket helpers for the TCP control channel's setup (connect, hello) and facts about
// local interfaces. Once a session runs, its control traffic goes through the session's ring.

#include <netinet/in.h>

#include <cstdint>
#include <string>
#include <vector>

#include "chainio/status.h"
#include "net/wire.h"

namespace chainio::net {

/// Milliseconds on CLOCK_MONOTONIC.
int64_t now_ns();

/// A non-blocking TCP socket (CLOEXEC) and the IPv4 address ip:port; -EINVAL for a bad address.
Result<int> tcp_socket(const std::string& ip, uint16_t port, sockaddr_in* sa);

/// A non-blocking-connected TCP socket to ip:port (TCP_NODELAY, CLOEXEC), within timeout_ms.
Result<int> tcp_connect(const std::string& ip, uint16_t port, uint32_t timeout_ms);

struct Message {
    wire::MsgHeader header{};
    std::vector<uint8_t> body;
};

/// Writes one control message, waiting at most timeout_ms for the socket.
Status send_message(int fd, wire::Msg type, uint64_t a, uint64_t b, const std::string& body,
                    uint32_t timeout_ms);
/// Reads one control message (body up to wire::kMaxControlBody), within timeout_ms.
Result<Message> recv_message(int fd, uint32_t timeout_ms);

/// A local interface carrying an IPv4 address.
struct LocalInterface {
    std::string name;
    unsigned ifindex = 0;
    uint8_t mac[6] = {};
    uint32_t ip = 0;  ///< network order
    int mtu = 0;
};

/// The interface named `ifname`, or (empty name) the one holding address `ip` (network order).
Result<LocalInterface> find_interface(uint32_t ip, const std::string& ifname);

/// "aa:bb:cc:dd:ee:ff" and back.
std::string mac_to_string(const uint8_t mac[6]);
bool mac_from_string(const std::string& s, uint8_t mac[6]);

/// Local and remote IPv4 address + port of a connected socket (network-order address).
Status socket_addresses(int fd, uint32_t* local_ip, uint16_t* local_port, uint32_t* peer_ip,
                        uint16_t* peer_port);

std::string ip_to_string(uint32_t ip);

/// 64 random bits from getrandom(2).
uint64_t random_token();

}  // namespace chainio::net
