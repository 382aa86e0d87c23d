#include "net/xdp_port.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "xdp_steer.h"
#include "xdp_steer.skel.h"

namespace chainio::net {
namespace {

std::mutex g_claims_mu;
// Interfaces with an XdpPort in this process: (network namespace inode, ifindex), since
// interface numbers repeat across namespaces (each veth end may be ifindex 2 in its own).
std::set<std::pair<uint64_t, unsigned>> g_claims;

uint64_t netns_id() {
    struct stat st {};
    return stat("/proc/thread-self/ns/net", &st) == 0 ? st.st_ino : 0;
}

// Not in bookworm's UAPI headers (Linux 6.6+).
constexpr uint16_t kXdpUseSg = 1 << 4;

int no_print(enum libbpf_print_level, const char*, va_list) { return 0; }

}  // namespace

Result<std::unique_ptr<XdpPort>> XdpPort::open(const LocalInterface& itf, uint32_t queue,
                                               uint16_t udp_port, size_t umem_bytes, bool sg,
                                               size_t arena_bytes) {
    std::unique_ptr<XdpPort> p(new XdpPort());
    p->sg_ = sg;
    p->ifindex_ = itf.ifindex;
    p->ifname_ = itf.name;
    {
        std::lock_guard<std::mutex> lock(g_claims_mu);
        p->netns_ = netns_id();
        if (!g_claims.insert({p->netns_, itf.ifindex}).second)
            return Status(EBUSY, "this process already runs an AF_XDP session on " + itf.name);
        p->claimed_ = true;
    }
    CHAINIO_RETURN_IF_ERROR(p->attach(itf, udp_port));
    const size_t frames = std::max<size_t>(umem_bytes / kFrameBytes, 256);
    // Ring sizes must be powers of two: the largest that fits half the UMEM.
    uint32_t half = 1;
    while (size_t(half) * 4 <= frames) half *= 2;
    p->rx_frames_ = half;
    p->tx_frames_ = half;
    BufferPoolOptions po;
    const size_t frames_bytes = size_t(2) * half * kFrameBytes;
    arena_bytes = (arena_bytes + kFrameBytes - 1) / kFrameBytes * kFrameBytes;
    po.bytes = frames_bytes + arena_bytes;
    po.chunk_bytes = kFrameBytes;
    auto pool = BufferPool::create(po);
    if (!pool) return pool.status();
    p->pool_ = std::move(pool.value());
    p->area_ = p->pool_->base();
    if (arena_bytes) {
        p->arena_ = p->pool_->base() + frames_bytes;
        p->arena_bytes_ = arena_bytes;
        p->arena_offset_ = frames_bytes;
    }
    CHAINIO_RETURN_IF_ERROR(p->bind_socket(itf, queue));
    return p;
}

Status XdpPort::attach(const LocalInterface& itf, uint16_t udp_port) {
    libbpf_set_print(no_print);
    skel_ = xdp_steer_bpf__open();
    if (!skel_) return Status::from_errno("open the XDP program");
    skel_->rodata->dst_port = htons(udp_port);
    skel_->rodata->dst_ip = itf.ip;
    skel_->rodata->count_only = 0;
    if (int err = xdp_steer_bpf__load(skel_); err)
        return Status(err, "load the XDP program (needs CAP_BPF and CAP_NET_ADMIN)");
    // The linear program first; veth refuses it above ~3.5 KB MTU (ERANGE): then the frags one.
    link_ = bpf_program__attach_xdp(skel_->progs.chainio_xdp, static_cast<int>(itf.ifindex));
    if (!link_) {
        link_ = bpf_program__attach_xdp(skel_->progs.chainio_xdp_mb, static_cast<int>(itf.ifindex));
        frags_ = link_ != nullptr;
    }
    if (!link_) return Status::from_errno("attach the XDP program to " + itf.name);
    return {};
}

Status XdpPort::bind_socket(const LocalInterface& itf, uint32_t queue) {
    xsk_umem_config uc{};
    uc.fill_size = rx_frames_;
    uc.comp_size = tx_frames_;
    uc.frame_size = kFrameBytes;
    uc.frame_headroom = 0;
    uc.flags = 0;
    Status last;
    // Zero-copy first; veth and most virtual NICs only do copy mode. A queue that was just
    // released (our failed zero-copy bind included) answers EBUSY for a few hundred ms.
    for (uint16_t mode : {uint16_t(XDP_ZEROCOPY), uint16_t(XDP_COPY)}) {
        for (int attempt = 0; attempt < 40; ++attempt) {
            if (int err = xsk_umem__create(&umem_, area_, pool_->size(), &fill, &comp, &uc); err)
                return Status(err, "create the AF_XDP UMEM (locked memory limit?)");
            xsk_socket_config sc{};
            sc.rx_size = rx_frames_;
            sc.tx_size = tx_frames_;
            sc.libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD;
            sc.xdp_flags = 0;
            sc.bind_flags = static_cast<uint16_t>(mode | XDP_USE_NEED_WAKEUP |
                                                  (sg_ ? kXdpUseSg : 0));
            const int err = xsk_socket__create(&xsk_, itf.name.c_str(), queue, umem_, &rx, &tx,
                                               &sc);
            if (err == 0) {
                zero_copy_ = mode == XDP_ZEROCOPY;
                goto bound;
            }
            xsk_umem__delete(umem_);
            umem_ = nullptr;
            xsk_ = nullptr;
            last = Status(err, std::string("bind an AF_XDP socket to ") + itf.name + " queue " +
                                   std::to_string(queue) +
                                   (mode == XDP_ZEROCOPY ? " (zero-copy)" : " (copy mode)"));
            if (err != -EBUSY) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
        }
    }
    return last;
bound:
    if (int err = xsk_socket__update_xskmap(xsk_, bpf_map__fd(skel_->maps.xsks_map)); err)
        return Status(err, "insert the AF_XDP socket into the XSKMAP");
    uint32_t idx = 0;
    if (xsk_ring_prod__reserve(&fill, rx_frames_, &idx) != rx_frames_)
        return Status(ENOSPC, "fill ring smaller than its UMEM half");
    for (uint32_t i = 0; i < rx_frames_; ++i)
        *xsk_ring_prod__fill_addr(&fill, idx + i) = uint64_t(i) * kFrameBytes;
    xsk_ring_prod__submit(&fill, rx_frames_);
    free_tx.reserve(tx_frames_);
    for (uint32_t i = 0; i < tx_frames_; ++i)
        free_tx.push_back(uint64_t(rx_frames_ + i) * kFrameBytes);
    return {};
}

XdpPort::~XdpPort() {
    if (xsk_) xsk_socket__delete(xsk_);
    if (umem_) xsk_umem__delete(umem_);
    if (link_) bpf_link__destroy(link_);
    if (skel_) xdp_steer_bpf__destroy(skel_);
    if (claimed_) {
        std::lock_guard<std::mutex> lock(g_claims_mu);
        g_claims.erase({netns_, ifindex_});
    }
}

int XdpPort::fd() const { return xsk_socket__fd(xsk_); }

uint64_t XdpPort::counter(int index) const {
    const int ncpu = libbpf_num_possible_cpus();
    if (ncpu <= 0 || !skel_) return 0;
    std::vector<uint64_t> v(static_cast<size_t>(ncpu));
    const uint32_t key = static_cast<uint32_t>(index);
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.steer_stats), &key, v.data()) != 0) return 0;
    uint64_t sum = 0;
    for (uint64_t x : v) sum += x;
    return sum;
}

std::string XdpPort::describe() const {
    return "AF_XDP on " + ifname_ + (zero_copy_ ? " (zero-copy)" : " (copy mode)") +
           (frags_ ? ", xdp.frags program" : "") + (sg_ ? ", multi-buffer frames" : "") + ", " + std::to_string(rx_frames_) + "+" +
           std::to_string(tx_frames_) + " frames of " + std::to_string(kFrameBytes) + " B";
}

}  // namespace chainio::net
