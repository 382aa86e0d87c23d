#pragma once

// One AF_XDP socket on one interface queue, with ChainIO's XDP program attached to the
// interface through a bpf_link (gone when the process exits, even on SIGKILL). The UMEM is a
// BufferPool of 4 KiB chunks: the first half feeds the fill ring (receive), the second half is
// the send pool. A process holds at most one XdpPort per interface (one XDP program per link).

#include <xdp/xsk.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chainio/buffer_pool.h"
#include "chainio/status.h"
#include "net/control.h"

struct xdp_steer_bpf;
struct bpf_link;

namespace chainio::net {

class XdpPort {
public:
    static constexpr uint32_t kFrameBytes = 4096;
    /// Largest frame a copy-mode receiver accepts in one chunk (4096 - XDP headroom).
    static constexpr uint32_t kMaxRxFrame = 3840;

    /// Attaches the program (steering UDP to `udp_port` at itf.ip into queue `queue`) and binds
    /// the socket, zero-copy when the driver allows, else copy mode. Errors name the step.
    static Result<std::unique_ptr<XdpPort>> open(const LocalInterface& itf, uint32_t queue,
                                                 uint16_t udp_port, size_t umem_bytes,
                                                 bool sg, size_t arena_bytes = 0);
    ~XdpPort();
    XdpPort(const XdpPort&) = delete;
    XdpPort& operator=(const XdpPort&) = delete;

    int fd() const;
    bool zero_copy() const { return zero_copy_; }
    bool frags_program() const { return frags_; }
    /// Bound with XDP_USE_SG: frames may span several chunks (XDP_PKT_CONTD descriptors).
    bool sg() const { return sg_; }
    uint8_t* frame(uint64_t addr) { return static_cast<uint8_t*>(xsk_umem__get_data(area_, addr)); }
    /// UMEM after the receive and send frames, for payloads the caller places itself.
    std::span<std::byte> arena() const { return {arena_, arena_bytes_}; }
    /// Whether a UMEM address lies in the arena (its completions are not send frames).
    bool in_arena(uint64_t addr) const { return arena_bytes_ && addr >= arena_offset_; }
    /// The UMEM address of p, which must lie in the UMEM.
    uint64_t addr_of(const void* p) const {
        return static_cast<uint64_t>(static_cast<const std::byte*>(p) -
                                     static_cast<const std::byte*>(area_));
    }
    uint32_t rx_frames() const { return rx_frames_; }
    uint32_t tx_frames() const { return tx_frames_; }
    /// Sum over CPUs of the program's counter `index` (enum chainio_xdp_counter).
    uint64_t counter(int index) const;
    std::string describe() const;

    xsk_ring_prod fill{};
    xsk_ring_cons rx{};
    xsk_ring_prod tx{};
    xsk_ring_cons comp{};
    std::vector<uint64_t> free_tx;  ///< send chunks not in the TX or completion ring

private:
    XdpPort() = default;
    Status attach(const LocalInterface& itf, uint16_t udp_port);
    Status bind_socket(const LocalInterface& itf, uint32_t queue);

    std::unique_ptr<BufferPool> pool_;
    void* area_ = nullptr;
    std::byte* arena_ = nullptr;
    size_t arena_bytes_ = 0;
    uint64_t arena_offset_ = 0;
    xsk_umem* umem_ = nullptr;
    xsk_socket* xsk_ = nullptr;
    xdp_steer_bpf* skel_ = nullptr;
    bpf_link* link_ = nullptr;
    unsigned ifindex_ = 0;
    uint64_t netns_ = 0;
    bool claimed_ = false;
    bool zero_copy_ = false;
    bool frags_ = false;
    bool sg_ = false;
    uint32_t rx_frames_ = 0;
    uint32_t tx_frames_ = 0;
    std::string ifname_;
};

}  // namespace chainio::net
