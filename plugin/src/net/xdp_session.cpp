// The AF_XDP transport: ChainIO's own reliable delivery over UDP/IPv4 frames that we build, steered
// into our AF_XDP socket by our XDP program.
//
// A transfer (one send() call) is a manifest stream (object sizes and xxh3 digests; stream id
// kManifestStream) plus one stream per object, each cut into chunks of `payload_` bytes. The
// sender keeps at most `peer_window_` chunks unacknowledged, walks a send-ordered FIFO to resend
// chunks whose retransmission timeout (RTO, from measured RTTs) expired, and finishes when the
// receiver's DONE frame arrives, which the receiver sends only after every object's digest
// matched. The receiver writes each payload at its offset in the destination, acknowledges after
// every batch of frames (cumulative sequence + a 256-bit selective bitmap + its window) and
// answers frames of an already finished transfer with its DONE again, so a lost DONE costs one
// RTO. Manifests ride the frames rather than the TCP channel: a TCP message on the path of every
// transfer would make AF_XDP latency that of TCP. A transfer whose manifest and objects fit in
// one frame together sends the objects inside the manifest (kInlineObjects): one frame instead of
// 1 + objects, which on a copy-mode link is most of what a small message costs.
//
// Everything runs on the calling thread. Without busy_poll it spins for NetOptions::spin_us after
// the last progress (a reply often comes sooner than a wake-up would), then sleeps in
// io_uring_enter. Before it sleeps the ring polls the socket (one-shot,
// armed only then: an armed poll makes the peer's softirq wake us for every batch it delivers,
// even while we are busy with the previous one), its wait timeout is the retransmission timer,
// and TX is kicked with sendto(MSG_DONTWAIT) (see kick()).

#include <linux/if_xdp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "net/session_core.h"
#include "net/transports.h"
#include "net/xdp_port.h"

namespace chainio::net {
namespace {

constexpr uint16_t kManifestStream = 0xffff;
constexpr uint8_t kDoneFrame = 3;  // wire::Frame has kData/kAck; DONE: window = status errno
constexpr uint32_t kRxBatch = 64;
constexpr uint32_t kRunFrames = 16;
constexpr uint32_t kAckEvery = 32;
constexpr int64_t kAckDelay = 100'000;  // ns
constexpr uint32_t kMaxSegs = 4;
constexpr uint32_t kPktContd = 1;  // XDP_PKT_CONTD: not in bookworm's UAPI headers  // chunks per frame: 3 at MTU 9000

// A received frame: its chunks (one unless the socket is bound with XDP_USE_SG).
struct RxFrame {
    uint64_t addr[kMaxSegs];
    uint32_t len[kMaxSegs];
    uint32_t n = 0;
    uint32_t total() const {
        uint32_t t = 0;
        for (uint32_t i = 0; i < n; ++i) t += len[i];
        return t;
    }
};

// Payload bytes of a frame, possibly in several chunks.
struct Pieces {
    const uint8_t* p[kMaxSegs];
    uint32_t n[kMaxSegs];
    uint32_t count = 0;
};
constexpr int64_t kMinRto = 1'000'000;        // 1 ms: a blocking wait costs ~0.1 ms here
constexpr int64_t kMaxRto = 500'000'000;
constexpr int64_t kInitialRto = 20'000'000;
constexpr uint32_t kMaxManifest = 8 + (kManifestStream - 1) * 16;
// Manifest: u32 object count, u32 flags, then per object {u64 size, u64 digest}; with
// kInlineObjects the objects' bytes follow, in order (the whole manifest then fits one frame).
constexpr uint32_t kInlineObjects = 1;

class XdpSession final : public SessionCore {
public:
    XdpSession(int fd, uint64_t token, const NetOptions& o, std::unique_ptr<XdpPort> port,
               const XdpPeering& p)
        : SessionCore(fd, token, o, ""), port_(std::move(port)), self_(p.self), peer_(p.peer),
          payload_(p.payload) {
        chunks_per_frame_ = static_cast<uint32_t>(
            (wire::kFrameOverhead + payload_ + XdpPort::kFrameBytes - 1) / XdpPort::kFrameBytes);
        initial_window_ = std::max<uint32_t>(p.peer_rx_frames / 2 / chunks_per_frame_, 16);
    }

    ~XdpSession() override {
        // Say goodbye, and cancel what the ring holds before the socket and UMEM go.
        close();
    }

    TransportKind kind() const override { return TransportKind::kXdp; }
    std::span<std::byte> send_arena() override {
        return port_->sg() ? port_->arena() : std::span<std::byte>();
    }
    std::string describe() const override {
        return port_->describe() + ", " + std::to_string(payload_) + " B payload per frame";
    }

    Status send(std::span<const Span> objects) override;
    Status recv(const std::function<void*(size_t, size_t)>& place) override;
    NetStats stats() const override {
        NetStats s = stats_;
        xdp_statistics x{};
        socklen_t len = sizeof(x);
        if (getsockopt(port_->fd(), SOL_XDP, XDP_STATISTICS, &x, &len) == 0) {
            s.xsk_rx_dropped = x.rx_dropped;
            s.xsk_rx_ring_full = x.rx_ring_full;
            s.xsk_rx_fill_empty = x.rx_fill_ring_empty_descs;
            s.xsk_invalid_descs = x.rx_invalid_descs + x.tx_invalid_descs;
        }
        return s;
    }

private:
    // ---- frames
    bool put_frame(uint8_t type, uint16_t stream, uint32_t transfer, uint32_t seq,
                   const uint8_t* payload, uint32_t len, uint32_t window, uint64_t payload_hash);
    bool put_frame(uint8_t type, uint16_t stream, uint32_t transfer, uint32_t seq,
                   const uint8_t* payload, uint32_t len, uint32_t window) {
        return put_frame(type, stream, transfer, seq, payload, len, window,
                         wire::piece_hash(payload, len));
    }
    // A frame whose payload stays where it is in the arena: one send chunk for the headers,
    // then descriptors pointing at the payload (split at chunk boundaries).
    bool put_borrowed(const wire::FrameHeader& h, const uint8_t* payload, uint32_t len);
    bool in_arena(const uint8_t* p, uint32_t len) const {
        const auto a = port_->arena();
        const auto* lo = reinterpret_cast<const uint8_t*>(a.data());
        return !a.empty() && port_->sg() && p >= lo && p + len <= lo + a.size();
    }
    void reap_completions();
    void kick();
    void process_rx(bool* progress);
    bool on_frame(const RxFrame& f);  // true: the frame is kept (early data)
    void recycle(const RxFrame& f);
    void replay_early();
    void refill(const uint64_t* addrs, uint32_t n);
    uint32_t rx_window() const;

    // ---- sender
    Stream& tx_stream(uint16_t id) { return id == kManifestStream ? tx_manifest_ : tx_streams_[id]; }
    const uint8_t* tx_source(uint16_t id, uint32_t seq, uint32_t* len);
    /// The piece hash of every chunk of `s` (the one pass a sender makes over the bytes).
    void hash_pieces(Stream& s) const;
    /// false: no room in the TX ring. `now`: the send time recorded (one clock read per batch).
    bool send_chunk(uint16_t id, uint32_t seq, bool again, int64_t now);
    void fill_window(bool* progress);
    void on_ack(const wire::FrameHeader& h, const uint8_t* body);
    void rtt_sample(int64_t ns);

    // ---- receiver
    Stream* rx_stream(uint16_t id);
    bool on_data(const wire::FrameHeader& h, const Pieces& payload);
    /// The stream of DATA frame `h` when it is a chunk not received yet of the transfer in
    /// progress (header unverified: its slot is empty anyway); else nullptr.
    Stream* rx_slot(const wire::FrameHeader& h);
    /// Copies the payload into its slot of `s`; returns its piece hash, taken there (in cache).
    uint64_t place(Stream& s, const wire::FrameHeader& h, const Pieces& payload);
    /// A checked chunk of `s`: new (`hash`: its piece hash) or a duplicate (nullptr); acks and
    /// completion follow.
    void take_chunk(const wire::FrameHeader& h, Stream& s, const uint64_t* hash);
    Status manifest_arrived();
    void stream_done(Stream& s, size_t index);
    /// Acknowledges what arrived: at once when `force`, else only once kAckEvery frames are
    /// unacknowledged or kAckDelay has passed since the last ACK (an ACK per frame would cost
    /// the receiver a frame and a sendto for every frame it gets).
    void send_acks(bool force = false);
    void send_done(uint32_t transfer, int status);

    void on_cqe(uint64_t tag, int res, uint32_t flags) override;
    void arm_poll();
    /// Frames in the TX ring that the kernel has not taken yet (copy mode needs more kicks).
    bool tx_backlog() const { return port_->tx.cached_prod != *port_->tx.consumer; }

    std::unique_ptr<XdpPort> port_;
    wire::Endpoint self_, peer_;
    uint32_t payload_;
    uint32_t initial_window_;
    uint16_t ip_id_ = 0;
    bool poll_armed_ = false;
    bool rx_heard_ = false;  // a frame of our session arrived in the batch being processed
    std::vector<uint64_t> recycle_;

    int64_t srtt_ = 0, rttvar_ = 0, rto_ = kInitialRto;

    // sender state (valid while sending_)
    bool sending_ = false;
    uint32_t next_transfer_ = 1;
    uint32_t tx_transfer_ = 0;
    std::vector<uint8_t> tx_manifest_bytes_;
    Stream tx_manifest_;
    std::vector<Stream> tx_streams_;
    std::deque<std::pair<uint16_t, uint32_t>> fifo_;
    uint32_t inflight_ = 0;
    uint32_t peer_window_ = 0;
    size_t rr_ = 0;   // stream that gets the next new chunk
    uint32_t run_ = 0;  // new chunks sent so far, for switching streams every kRunFrames
    bool tx_done_ = false;
    Status tx_result_;
    int64_t last_ack_ns_ = 0;

    // receiver state
    bool receiving_ = false;
    uint32_t last_done_transfer_ = 0;
    int last_done_status_ = 0;
    bool redo_done_ = false;
    Stream rx_manifest_;
    std::vector<uint8_t> rx_manifest_bytes_;
    bool have_manifest_ = false;
    std::vector<Stream> rx_streams_;
    size_t rx_complete_ = 0;
    const std::function<void*(size_t, size_t)>* place_ = nullptr;
    std::vector<RxFrame> early_;  // frames of the next transfer, kept until recv() is ready
    uint32_t early_chunks_ = 0;
    RxFrame partial_;  // chunks of a multi-buffer frame whose last chunk has not come yet
    uint32_t chunks_per_frame_ = 1;
    std::vector<std::pair<uint16_t, uint32_t>> ack_due_;  // stream, highest seq unacknowledged
    uint32_t ack_frames_ = 0;   // frames received since the last ACK
    int64_t last_ack_sent_ns_ = 0;
    Status rx_error_;
};

// ---------------------------------------------------------------- frames

bool XdpSession::put_frame(uint8_t type, uint16_t stream, uint32_t transfer, uint32_t seq,
                           const uint8_t* payload, uint32_t len, uint32_t window,
                           uint64_t payload_hash) {
    wire::FrameHeader h{};
    h.magic = wire::kMagic;
    h.version = wire::kVersion;
    h.type = type;
    h.stream = stream;
    h.transfer = transfer;
    h.seq = seq;
    h.token = token_;
    h.len = len;
    h.window = window;
    h.check = wire::frame_check(h, payload_hash);
    if (len && in_arena(payload, len)) return put_borrowed(h, payload, len);
    const size_t bytes = wire::kFrameOverhead + len;
    const uint32_t segs =
        static_cast<uint32_t>((bytes + XdpPort::kFrameBytes - 1) / XdpPort::kFrameBytes);
    if (port_->free_tx.size() < segs) return false;
    uint32_t idx = 0;
    if (xsk_ring_prod__reserve(&port_->tx, segs, &idx) != segs) return false;
    size_t done = 0;  // payload bytes placed
    for (uint32_t i = 0; i < segs; ++i) {
        const uint64_t addr = port_->free_tx.back();
        port_->free_tx.pop_back();
        uint8_t* f = port_->frame(addr);
        size_t room = XdpPort::kFrameBytes;
        size_t used = 0;
        if (i == 0) {
            wire::build_l2l4(f, self_, peer_, sizeof(h) + len, ip_id_++);
            std::memcpy(f + wire::kL2L4Bytes, &h, sizeof(h));
            used = wire::kFrameOverhead;
            room -= used;
        }
        const size_t n = std::min(room, size_t(len) - done);
        if (n) std::memcpy(f + used, payload + done, n);
        done += n;
        xdp_desc* d = xsk_ring_prod__tx_desc(&port_->tx, idx + i);
        d->addr = addr;
        d->len = static_cast<uint32_t>(used + n);
        d->options = i + 1 < segs ? kPktContd : 0;
    }
    xsk_ring_prod__submit(&port_->tx, segs);
    return true;
}

bool XdpSession::put_borrowed(const wire::FrameHeader& h, const uint8_t* payload, uint32_t len) {
    constexpr uint32_t kMaxDescs = 8;  // header + payload pieces (4 for 8928 B in 4 KiB chunks)
    uint64_t addr[kMaxDescs];
    uint32_t n[kMaxDescs];
    uint32_t segs = 1;
    for (uint64_t a = port_->addr_of(payload), left = len; left;) {
        if (segs == kMaxDescs) return false;
        const uint64_t room = XdpPort::kFrameBytes - a % XdpPort::kFrameBytes;
        addr[segs] = a;
        n[segs] = static_cast<uint32_t>(std::min<uint64_t>(room, left));
        a += n[segs];
        left -= n[segs];
        ++segs;
    }
    if (port_->free_tx.empty()) return false;
    uint32_t idx = 0;
    if (xsk_ring_prod__reserve(&port_->tx, segs, &idx) != segs) return false;
    addr[0] = port_->free_tx.back();
    port_->free_tx.pop_back();
    n[0] = static_cast<uint32_t>(wire::kFrameOverhead);
    uint8_t* f = port_->frame(addr[0]);
    wire::build_l2l4(f, self_, peer_, sizeof(h) + len, ip_id_++);
    std::memcpy(f + wire::kL2L4Bytes, &h, sizeof(h));
    for (uint32_t i = 0; i < segs; ++i) {
        xdp_desc* d = xsk_ring_prod__tx_desc(&port_->tx, idx + i);
        d->addr = addr[i];
        d->len = n[i];
        d->options = i + 1 < segs ? kPktContd : 0;
    }
    xsk_ring_prod__submit(&port_->tx, segs);
    ++stats_.frames_zero_copy;
    return true;
}

void XdpSession::reap_completions() {
    uint32_t idx = 0;
    const uint32_t n = xsk_ring_cons__peek(&port_->comp, port_->tx_frames(), &idx);
    for (uint32_t i = 0; i < n; ++i) {
        const uint64_t addr = *xsk_ring_cons__comp_addr(&port_->comp, idx + i);
        if (!port_->in_arena(addr)) port_->free_tx.push_back(addr);  // arena bytes: the caller's
    }
    if (n) xsk_ring_cons__release(&port_->comp, n);
}

void XdpSession::kick() {
    // Copy mode transmits only inside sendmsg, at most 32 frames per call (then -EAGAIN). This
    // is a plain sendto(MSG_DONTWAIT), not a SENDMSG SQE: io_uring turns that -EAGAIN into a
    // wait for POLLOUT, which an AF_XDP socket reports only while its TX ring is at most half
    // full, so a full ring would park the kick (and the session) for good.
    for (int i = 0; i < 64 && tx_backlog(); ++i) {
        if (port_->zero_copy() && !xsk_ring_prod__needs_wakeup(&port_->tx)) return;
        ++stats_.kicks;
        if (::sendto(port_->fd(), nullptr, 0, MSG_DONTWAIT, nullptr, 0) >= 0) continue;
        if (errno == EAGAIN || errno == EBUSY || errno == ENOBUFS || errno == EINTR) continue;
        return;  // ENETDOWN, ENXIO: the frames stay queued and are resent after the RTO
    }
}

void XdpSession::arm_poll() {
    if (poll_armed_) return;
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    if (!s) return;
    io_uring_prep_poll_add(s, port_->fd(), POLLIN);
    io_uring_sqe_set_data64(s, kXskPoll);
    poll_armed_ = true;
    ++inflight_ops_;
}

void XdpSession::on_cqe(uint64_t tag, int res, uint32_t flags) {
    (void)res;
    (void)flags;
    if (tag == kXskPoll) poll_armed_ = false;
}

uint32_t XdpSession::rx_window() const {
    // Chunks the kernel can still fill, minus what we keep for the next transfer.
    const uint32_t posted = port_->rx_frames() - xsk_prod_nb_free(&port_->fill, port_->rx_frames());
    return (posted > early_chunks_ ? posted - early_chunks_ : 0) / chunks_per_frame_;
}

void XdpSession::refill(const uint64_t* addrs, uint32_t n) {
    uint32_t idx = 0;
    while (n) {
        const uint32_t got = xsk_ring_prod__reserve(&port_->fill, n, &idx);
        if (!got) return;  // cannot happen: we never hold more than rx_frames chunks
        for (uint32_t i = 0; i < got; ++i) *xsk_ring_prod__fill_addr(&port_->fill, idx + i) = addrs[i];
        xsk_ring_prod__submit(&port_->fill, got);
        addrs += got;
        n -= got;
    }
}

void XdpSession::recycle(const RxFrame& f) {
    for (uint32_t i = 0; i < f.n; ++i)
        recycle_.push_back(f.addr[i] & ~uint64_t(XdpPort::kFrameBytes - 1));
}

void XdpSession::process_rx(bool* progress) {
    for (int round = 0; round < 16; ++round) {
        uint32_t idx = 0;
        const uint32_t n = xsk_ring_cons__peek(&port_->rx, kRxBatch, &idx);
        if (!n) break;
        *progress = true;
        recycle_.clear();
        for (uint32_t i = 0; i < n; ++i) {
            const xdp_desc* d = xsk_ring_cons__rx_desc(&port_->rx, idx + i);
            if (partial_.n < kMaxSegs) {
                partial_.addr[partial_.n] = d->addr;
                partial_.len[partial_.n] = d->len;
            } else {
                recycle_.push_back(d->addr & ~uint64_t(XdpPort::kFrameBytes - 1));
            }
            ++partial_.n;
            if (d->options & kPktContd) continue;  // more chunks of this frame follow
            if (partial_.n > kMaxSegs) {
                ++stats_.dropped_bad_len;
                partial_.n = kMaxSegs;
                recycle(partial_);
            } else if (!on_frame(partial_)) {
                recycle(partial_);
            }
            partial_.n = 0;
        }
        xsk_ring_cons__release(&port_->rx, n);
        if (rx_heard_) heard();  // one clock read per batch, not per frame
        rx_heard_ = false;
        refill(recycle_.data(), static_cast<uint32_t>(recycle_.size()));
        send_acks();
    }
    if (redo_done_) {
        redo_done_ = false;
        send_done(last_done_transfer_, last_done_status_);
    }
}

bool XdpSession::on_frame(const RxFrame& f) {
    size_t ulen = 0;
    const uint8_t* first = port_->frame(f.addr[0]);
    const uint8_t* u = wire::udp_payload(first, f.total(), self_.port, &ulen);
    // The headers must sit in the first chunk.
    if (!u || ulen < sizeof(wire::FrameHeader) || f.len[0] < wire::kFrameOverhead) {
        ++stats_.dropped_bad_len;
        return false;
    }
    wire::FrameHeader h;
    std::memcpy(&h, u, sizeof(h));
    if (h.magic != wire::kMagic || h.version != wire::kVersion || h.len != ulen - sizeof(h)) {
        ++stats_.dropped_bad_len;
        return false;
    }
    Pieces pieces;
    size_t left = h.len;
    const size_t in_first = std::min<size_t>(left, f.len[0] - wire::kFrameOverhead);
    pieces.p[0] = u + sizeof(h);
    pieces.n[0] = static_cast<uint32_t>(in_first);
    pieces.count = 1;
    left -= in_first;
    for (uint32_t i = 1; i < f.n && left; ++i) {
        const size_t n = std::min<size_t>(left, f.len[i]);
        pieces.p[pieces.count] = port_->frame(f.addr[i]);
        pieces.n[pieces.count++] = static_cast<uint32_t>(n);
        left -= n;
    }
    if (left) {
        ++stats_.dropped_bad_len;
        return false;
    }
    // The common case, a new chunk of the transfer being received: copy it to its destination
    // and hash it there, while it is in cache. The slot is empty, so if the check then fails
    // (the frame was corrupted, its header included) nothing is lost: the chunk stays missing.
    if (Stream* s = rx_slot(h)) {
        const uint64_t ph = place(*s, h, pieces);
        if (wire::frame_check(h, ph) != h.check) {
            ++stats_.dropped_bad_check;
            return false;
        }
        rx_heard_ = true;
        take_chunk(h, *s, &ph);
        return false;
    }
    if (wire::frame_check(h, pieces.p, pieces.n, pieces.count) != h.check) {
        ++stats_.dropped_bad_check;
        return false;
    }
    if (h.token != token_) {
        ++stats_.dropped_bad_token;
        return false;
    }
    rx_heard_ = true;
    switch (h.type) {
    case static_cast<uint8_t>(wire::Frame::kData): {
        const bool keep = on_data(h, pieces);
        if (keep) {
            early_.push_back(f);
            early_chunks_ += f.n;
        }
        return keep;
    }
    case static_cast<uint8_t>(wire::Frame::kAck):
        if (h.len != sizeof(wire::AckBody) + 8 || pieces.count != 1) {
            ++stats_.dropped_bad_len;
            return false;
        }
        on_ack(h, pieces.p[0]);
        return false;
    case kDoneFrame:
        if (sending_ && h.transfer == tx_transfer_ && !tx_done_) {
            tx_done_ = true;
            tx_result_ = h.window == 0 ? Status()
                         : h.window == EBADMSG
                             ? Status(EBADMSG, "the peer found an object whose digest differs "
                                               "from the manifest's")
                             : Status(static_cast<int>(h.window), "the peer refused the transfer");
        }
        return false;
    default:
        ++stats_.dropped_bad_len;
        return false;
    }
}

void XdpSession::replay_early() {
    // May run inside process_rx (the manifest completed): keep its recycle_ list untouched.
    auto kept = std::move(early_);
    early_.clear();
    early_chunks_ = 0;
    std::vector<uint64_t> back;
    for (const RxFrame& f : kept) {
        if (on_frame(f)) continue;
        for (uint32_t i = 0; i < f.n; ++i)
            back.push_back(f.addr[i] & ~uint64_t(XdpPort::kFrameBytes - 1));
    }
    refill(back.data(), static_cast<uint32_t>(back.size()));
}

// ---------------------------------------------------------------- sender

const uint8_t* XdpSession::tx_source(uint16_t id, uint32_t seq, uint32_t* len) {
    Stream& s = tx_stream(id);
    const size_t off = size_t(seq) * payload_;
    *len = static_cast<uint32_t>(std::min<size_t>(payload_, s.size - off));
    return s.data + off;
}

void XdpSession::hash_pieces(Stream& s) const {
    s.piece.resize(s.chunks);
    for (uint32_t i = 0; i < s.chunks; ++i) {
        const size_t off = size_t(i) * payload_;
        s.piece[i] = wire::piece_hash(s.data + off, std::min<size_t>(payload_, s.size - off));
    }
}

bool XdpSession::send_chunk(uint16_t id, uint32_t seq, bool again, int64_t now) {
    uint32_t len = 0;
    const uint8_t* p = tx_source(id, seq, &len);
    // Manifest frames carry the manifest's total size (the receiver learns it from any of them).
    const uint32_t window = id == kManifestStream ? static_cast<uint32_t>(tx_manifest_.size) : 0;
    Stream& s = tx_stream(id);
    if (!put_frame(static_cast<uint8_t>(wire::Frame::kData), id, tx_transfer_, seq, p, len, window,
                   s.piece[seq]))
        return false;
    s.sent_ns[seq] = now;
    if (again) {
        s.resent[seq >> 6] |= uint64_t{1} << (seq & 63);
        ++stats_.retransmits;
    } else {
        ++inflight_;
    }
    fifo_.emplace_back(id, seq);
    ++stats_.frames_sent;
    stats_.bytes_sent += len;
    return true;
}

void XdpSession::fill_window(bool* progress) {
    const int64_t now = now_ns();
    // Resends first: the oldest unacknowledged chunks whose RTO expired.
    bool expired = false;
    while (!fifo_.empty() && !port_->free_tx.empty()) {
        auto [id, seq] = fifo_.front();
        Stream& s = tx_stream(id);
        if (s.has(seq)) {
            fifo_.pop_front();
            continue;
        }
        if (s.sent_ns[seq] + rto_ > now) break;
        fifo_.pop_front();
        if (!send_chunk(id, seq, true, now)) {
            fifo_.emplace_front(id, seq);  // the TX ring is full: again after completions
            break;
        }
        if (!expired) ++stats_.timeouts_fired;
        expired = true;
        *progress = true;
    }
    // New chunks, the manifest first, then the objects round robin.
    while (inflight_ < peer_window_ && !port_->free_tx.empty()) {
        uint16_t id;
        if (tx_manifest_.next_new < tx_manifest_.chunks) {
            id = kManifestStream;
        } else {
            size_t tries = 0;
            while (tries < tx_streams_.size() &&
                   tx_streams_[rr_].next_new >= tx_streams_[rr_].chunks) {
                rr_ = (rr_ + 1) % tx_streams_.size();
                ++tries;
            }
            if (tries == tx_streams_.size()) break;
            id = static_cast<uint16_t>(rr_);
            // A run of frames per stream keeps the receiver's writes sequential.
            if (++run_ % kRunFrames == 0) rr_ = (rr_ + 1) % tx_streams_.size();
        }
        Stream& s = tx_stream(id);
        if (!send_chunk(id, s.next_new, false, now)) break;  // TX ring full: after completions
        ++s.next_new;
        *progress = true;
    }
}

void XdpSession::rtt_sample(int64_t r) {
    if (srtt_ == 0) {
        srtt_ = r;
        rttvar_ = r / 2;
    } else {
        const int64_t err = r > srtt_ ? r - srtt_ : srtt_ - r;
        rttvar_ = (3 * rttvar_ + err) / 4;
        srtt_ = (7 * srtt_ + r) / 8;
    }
    rto_ = std::clamp(srtt_ + 4 * rttvar_, kMinRto, kMaxRto);
}

void XdpSession::on_ack(const wire::FrameHeader& h, const uint8_t* body) {
    ++stats_.acks_received;
    if (!sending_ || h.transfer != tx_transfer_) return;
    if (h.stream != kManifestStream && h.stream >= tx_streams_.size()) {
        ++stats_.dropped_bad_len;
        return;
    }
    Stream& s = tx_stream(h.stream);
    peer_window_ = h.window;
    last_ack_ns_ = now_ns();
    int64_t newest = 0;
    auto ack = [&](uint32_t i) {
        if (i >= s.chunks || i >= s.next_new || !s.mark(i)) return;
        --inflight_;
        if (!(s.resent[i >> 6] >> (i & 63) & 1)) newest = std::max(newest, s.sent_ns[i]);
    };
    const uint32_t cum = std::min(h.seq, s.chunks);
    for (uint32_t i = s.cum; i < cum; ++i) ack(i);
    uint32_t base;
    wire::AckBody a;
    std::memcpy(&base, body, 4);
    std::memcpy(&a, body + 8, sizeof(a));
    for (uint32_t w = 0; w < wire::kSackBits / 64; ++w) {
        for (uint64_t bits = a.sack[w]; bits; bits &= bits - 1) {
            const uint32_t i = base + w * 64 + static_cast<uint32_t>(__builtin_ctzll(bits));
            if (i < s.chunks) ack(i);
        }
    }
    if (newest) rtt_sample(last_ack_ns_ - newest);
}

Status XdpSession::send(std::span<const Span> objects) {
    CHAINIO_RETURN_IF_ERROR(usable());
    if (objects.size() >= kManifestStream)
        return Status(EINVAL, "at most " + std::to_string(kManifestStream - 1) + " objects per send");
    tx_transfer_ = next_transfer_++;
    tx_streams_.assign(objects.size(), Stream{});
    size_t whole = 8 + 16 * objects.size();  // the manifest with the objects inline
    for (const Span& o : objects) whole += std::min<size_t>(o.size, payload_ + 1);
    const uint32_t flags = !objects.empty() && whole <= payload_ ? kInlineObjects : 0;
    tx_manifest_bytes_.assign(8, 0);
    const uint32_t count = static_cast<uint32_t>(objects.size());
    std::memcpy(tx_manifest_bytes_.data(), &count, 4);
    std::memcpy(tx_manifest_bytes_.data() + 4, &flags, 4);
    for (size_t i = 0; i < objects.size(); ++i) {
        Stream& s = tx_streams_[i];
        s.data = static_cast<uint8_t*>(objects[i].data);
        s.size = objects[i].size;
        s.init(static_cast<uint32_t>((s.size + payload_ - 1) / payload_), true);
        hash_pieces(s);
        s.digest = wire::pieces_digest(s.piece.data(), s.piece.size());
        uint64_t rec[2] = {s.size, s.digest};
        const auto* r = reinterpret_cast<const uint8_t*>(rec);
        tx_manifest_bytes_.insert(tx_manifest_bytes_.end(), r, r + sizeof(rec));
    }
    if (flags & kInlineObjects) {
        for (Stream& s : tx_streams_) {
            tx_manifest_bytes_.insert(tx_manifest_bytes_.end(), s.data, s.data + s.size);
            s.init(0, true);  // nothing of its own to send: it rides in the manifest
        }
    }
    tx_manifest_ = Stream{};
    tx_manifest_.data = tx_manifest_bytes_.data();
    tx_manifest_.size = tx_manifest_bytes_.size();
    tx_manifest_.init(static_cast<uint32_t>((tx_manifest_.size + payload_ - 1) / payload_), true);
    hash_pieces(tx_manifest_);
    fifo_.clear();
    inflight_ = 0;
    rr_ = 0;
    run_ = 0;
    peer_window_ = initial_window_;
    tx_done_ = false;
    tx_result_ = Status();
    sending_ = true;
    heard();
    restart_spin();
    last_ack_ns_ = now_ns();
    Status st;
    for (;;) {
        bool progress = false;
        reap_completions();
        process_rx(&progress);
        if (tx_done_) break;
        fill_window(&progress);
        // Everything acknowledged but no DONE yet: probe with the last manifest chunk, which
        // makes a receiver that already finished repeat its DONE.
        const bool all_acked = tx_manifest_.complete() &&
            std::all_of(tx_streams_.begin(), tx_streams_.end(),
                        [](const Stream& s) { return s.complete(); });
        if (all_acked && now_ns() - last_ack_ns_ > rto_ && !port_->free_tx.empty()) {
            const uint32_t seq = tx_manifest_.chunks - 1;
            uint32_t len = 0;
            const uint8_t* p = tx_source(kManifestStream, seq, &len);
            if (put_frame(static_cast<uint8_t>(wire::Frame::kData), kManifestStream, tx_transfer_,
                          seq, p, len, static_cast<uint32_t>(tx_manifest_.size),
                          tx_manifest_.piece[seq])) {
                ++stats_.retransmits;
                last_ack_ns_ = now_ns();
            }
        }
        kick();
        Message m;
        if (pop_message(&m)) {
            st = peer_gone(m);
            break;
        }
        if (st = check_silence("acknowledgements"); !st) break;
        if (progress) restart_spin();
        const bool block = !progress && !tx_backlog() && spin_over();
        if (block) arm_poll();
        int64_t wake = now_ns() + 50'000'000;
        if (!fifo_.empty()) {
            const auto [id, seq] = fifo_.front();
            wake = std::min(wake, tx_stream(id).sent_ns[seq] + rto_);
        }
        if (all_acked) wake = std::min(wake, last_ack_ns_ + rto_);
        if (st = pump(block, wake); !st) break;
    }
    if (!st && !tx_done_) {
        // A peer that confirmed and then closed: its DONE frame may have come with the close.
        bool ignored = false;
        reap_completions();
        process_rx(&ignored);
    }
    sending_ = false;
    if (tx_done_) return tx_result_;
    return fail(st, st.code() != -ECONNRESET);
}

// ---------------------------------------------------------------- receiver

Stream* XdpSession::rx_stream(uint16_t id) {
    if (id == kManifestStream) return &rx_manifest_;
    return id < rx_streams_.size() ? &rx_streams_[id] : nullptr;
}

Stream* XdpSession::rx_slot(const wire::FrameHeader& h) {
    if (h.type != static_cast<uint8_t>(wire::Frame::kData) || h.token != token_ || !receiving_ ||
        h.transfer != last_done_transfer_ + 1)
        return nullptr;
    if (h.stream == kManifestStream ? rx_manifest_.size == 0 || h.window != rx_manifest_.size
                                    : !have_manifest_)
        return nullptr;
    Stream* s = rx_stream(h.stream);
    if (!s || h.seq >= s->chunks || s->has(h.seq) ||
        h.len != std::min<size_t>(payload_, s->size - size_t(h.seq) * payload_))
        return nullptr;
    return s;
}

uint64_t XdpSession::place(Stream& s, const wire::FrameHeader& h, const Pieces& payload) {
    uint8_t* const dst = s.data + size_t(h.seq) * payload_;
    uint8_t* w = dst;
    for (uint32_t i = 0; i < payload.count; ++i) {
        std::memcpy(w, payload.p[i], payload.n[i]);
        w += payload.n[i];
    }
    return wire::piece_hash(dst, h.len);
}

bool XdpSession::on_data(const wire::FrameHeader& h, const Pieces& payload) {
    if (!receiving_ || h.transfer != last_done_transfer_ + 1) {
        if (h.transfer == last_done_transfer_ && last_done_transfer_) {
            redo_done_ = true;  // our DONE was lost: say it again
            ++stats_.dropped_stale;
            return false;
        }
        // The next transfer's first frames may beat our call to recv(): keep a few.
        if (h.transfer == last_done_transfer_ + 1 && early_chunks_ < port_->rx_frames() / 4)
            return true;
        ++stats_.dropped_stale;
        return false;
    }
    if (h.stream != kManifestStream && !have_manifest_) {
        if (early_chunks_ < port_->rx_frames() / 4) return true;
        ++stats_.dropped_stale;
        return false;
    }
    if (h.stream == kManifestStream && rx_manifest_.size == 0) {
        // Records only (8 + 16 per object), or records and inline objects within one frame;
        // the count and flags in its first bytes are checked once it has arrived.
        if (h.window < 8 ||
            (h.window > payload_ && (h.window > kMaxManifest || (h.window - 8) % 16))) {
            ++stats_.dropped_bad_len;
            return false;
        }
        rx_manifest_bytes_.assign(h.window, 0);
        rx_manifest_.data = rx_manifest_bytes_.data();
        rx_manifest_.size = h.window;
        rx_manifest_.init(static_cast<uint32_t>((h.window + payload_ - 1) / payload_), false);
        rx_manifest_.piece.resize(rx_manifest_.chunks);
    }
    Stream* s = rx_stream(h.stream);
    if (!s || h.seq >= s->chunks ||
        (h.stream == kManifestStream && h.window != rx_manifest_.size) ||
        h.len != std::min<size_t>(payload_, s->size - size_t(h.seq) * payload_)) {
        ++stats_.dropped_bad_len;
        return false;
    }
    if (s->has(h.seq)) {
        take_chunk(h, *s, nullptr);
    } else {
        const uint64_t ph = place(*s, h, payload);
        take_chunk(h, *s, &ph);
    }
    return false;
}

void XdpSession::take_chunk(const wire::FrameHeader& h, Stream& s, const uint64_t* hash) {
    if (!hash) {
        ++stats_.duplicates;
    } else {
        s.mark(h.seq);
        s.piece[h.seq] = *hash;
        ++stats_.frames_received;
        if (h.stream != kManifestStream) stats_.bytes_received += h.len;
    }
    ++ack_frames_;
    auto due = std::find_if(ack_due_.begin(), ack_due_.end(),
                            [&](const auto& p) { return p.first == h.stream; });
    if (due == ack_due_.end()) {
        ack_due_.emplace_back(h.stream, h.seq);
    } else {
        due->second = std::max(due->second, h.seq);
    }
    if (s.complete()) {
        if (h.stream == kManifestStream) {
            if (!have_manifest_ && rx_error_.is_ok()) rx_error_ = manifest_arrived();
        } else if (!s.verified) {
            stream_done(s, h.stream);
        }
    }
}

Status XdpSession::manifest_arrived() {
    have_manifest_ = true;
    const uint8_t* m = rx_manifest_bytes_.data();
    const size_t n = rx_manifest_bytes_.size();
    uint32_t count = 0, flags = 0;
    std::memcpy(&count, m, 4);
    std::memcpy(&flags, m + 4, 4);
    const bool inl = flags == kInlineObjects;
    // Inline objects must fit the manifest's one frame, which bounds every size read below.
    size_t need = 8 + size_t(count) * 16;
    for (uint32_t i = 0; inl && i < count && need <= n; ++i) {
        uint64_t size = 0;
        std::memcpy(&size, m + 8 + size_t(i) * 16, 8);
        need += std::min<uint64_t>(size, n + 1);
    }
    if ((flags != 0 && !inl) || n != need || (inl && n > payload_))
        return Status(EPROTO, "malformed manifest: " + std::to_string(n) + " bytes for " +
                                  std::to_string(count) + " objects, flags " +
                                  std::to_string(flags));
    rx_streams_.assign(count, Stream{});
    const uint8_t* inline_bytes = m + 8 + size_t(count) * 16;
    for (uint32_t i = 0; i < count; ++i) {
        Stream& s = rx_streams_[i];
        std::memcpy(&s.size, m + 8 + i * 16, 8);
        std::memcpy(&s.digest, m + 16 + i * 16, 8);
        s.data = static_cast<uint8_t*>((*place_)(i, s.size));
        if (!s.data && s.size)
            return Status(ENOMEM, "no destination for object " + std::to_string(i) + " of " +
                                      std::to_string(s.size) + " B");
        if (inl) {
            // All of it is here: copy it to its place and hash it there, as for a frame.
            s.init(0, false);
            if (s.size) {
                std::memcpy(s.data, inline_bytes, s.size);
                s.piece.assign(1, wire::piece_hash(s.data, s.size));
                stats_.bytes_received += s.size;
            }
            inline_bytes += s.size;
            continue;
        }
        s.init(static_cast<uint32_t>((s.size + payload_ - 1) / payload_), false);
        s.piece.resize(s.chunks);
    }
    for (uint32_t i = 0; i < count; ++i) {
        if (rx_streams_[i].chunks == 0) stream_done(rx_streams_[i], i);  // empty or inline
    }
    // Replay the frames that came before the manifest.
    replay_early();
    return {};
}

void XdpSession::stream_done(Stream& s, size_t index) {
    s.verified = true;
    ++rx_complete_;
    // Every piece hash was taken in the destination, so this checks the bytes where they lie.
    if (wire::pieces_digest(s.piece.data(), s.piece.size()) != s.digest && rx_error_.is_ok()) {
        rx_error_ = Status(EBADMSG, "object " + std::to_string(index) +
                                        " arrived with another digest than its manifest's");
    }
}

void XdpSession::send_acks(bool force) {
    if (receiving_ && have_manifest_ && rx_complete_ == rx_streams_.size()) {
        ack_due_.clear();  // the transfer is complete: the DONE about to go says it all
        ack_frames_ = 0;
        return;
    }
    if (ack_due_.empty()) return;
    const int64_t now = now_ns();
    if (!force && ack_frames_ < kAckEvery && now - last_ack_sent_ns_ < kAckDelay) return;
    ack_frames_ = 0;
    last_ack_sent_ns_ = now;
    const uint32_t window = rx_window();
    for (auto [id, hi] : ack_due_) {
        Stream* s = rx_stream(id);
        if (!s) continue;
        uint8_t body[8 + sizeof(wire::AckBody)] = {};
        const uint32_t base = std::max(s->cum, hi >= wire::kSackBits ? hi - wire::kSackBits + 1 : 0);
        wire::AckBody a{};
        for (uint32_t i = 0; i < wire::kSackBits && base + i < s->chunks; ++i) {
            if (s->has(base + i)) a.sack[i / 64] |= uint64_t{1} << (i % 64);
        }
        std::memcpy(body, &base, 4);
        std::memcpy(body + 8, &a, sizeof(a));
        if (put_frame(static_cast<uint8_t>(wire::Frame::kAck), id, last_done_transfer_ + 1,
                      s->cum, body, sizeof(body), window))
            ++stats_.acks_sent;
    }
    ack_due_.clear();
    kick();
}

void XdpSession::send_done(uint32_t transfer, int status) {
    reap_completions();
    put_frame(kDoneFrame, 0, transfer, 0, nullptr, 0, static_cast<uint32_t>(status));
    kick();
}

Status XdpSession::recv(const std::function<void*(size_t, size_t)>& place) {
    CHAINIO_RETURN_IF_ERROR(usable());
    place_ = &place;
    rx_manifest_ = Stream{};  // sized by its first frame
    have_manifest_ = false;
    rx_streams_.clear();
    rx_complete_ = 0;
    rx_error_ = Status();
    receiving_ = true;
    heard();
    restart_spin();
    // Frames kept before this call belong to this transfer: handle them now.
    {
        replay_early();
        send_acks(true);
    }
    Status st;
    const uint32_t transfer = last_done_transfer_ + 1;
    for (;;) {
        bool progress = false;
        reap_completions();
        process_rx(&progress);
        if (!rx_error_.is_ok()) break;
        if (have_manifest_ && rx_complete_ == rx_streams_.size()) break;
        Message m;
        if (pop_message(&m)) {
            st = peer_gone(m);
            receiving_ = false;
            return fail(st, false);
        }
        if (st = check_silence(have_manifest_ ? "object bytes" : "a transfer"); !st) break;
        if (progress) restart_spin();
        const bool block = !progress && !tx_backlog() && spin_over();
        send_acks(block);  // nothing more to read now: acknowledge before sleeping
        if (block) arm_poll();
        if (st = pump(block, now_ns() + 50'000'000); !st) break;
    }
    receiving_ = false;
    place_ = nullptr;
    if (!st) return fail(st);
    last_done_transfer_ = transfer;
    last_done_status_ = rx_error_.is_ok() ? 0 : rx_error_.error_number();
    send_done(transfer, last_done_status_);
    if (!rx_error_.is_ok()) return rx_error_;
    return {};
}

}  // namespace

bool xdp_needs_sg(int mtu) { return mtu > 0 && size_t(mtu) + wire::kEthBytes > XdpPort::kMaxRxFrame; }

uint32_t xdp_payload_for_mtu(int mtu, bool sg) {
    const size_t l3_overhead = wire::kIpBytes + wire::kUdpBytes + sizeof(wire::FrameHeader);
    const size_t by_mtu = mtu > 0 && size_t(mtu) > l3_overhead ? size_t(mtu) - l3_overhead : 0;
    const size_t by_chunk = sg ? kMaxSegs * XdpPort::kFrameBytes - wire::kFrameOverhead
                               : XdpPort::kMaxRxFrame - wire::kFrameOverhead;
    return static_cast<uint32_t>(std::min(by_mtu, by_chunk) & ~size_t(7));
}

Result<std::unique_ptr<Session>> make_xdp_session(int fd, uint64_t token, const NetOptions& o,
                                                  std::unique_ptr<XdpPort> port,
                                                  const XdpPeering& peering) {
    if (peering.payload < 64) return Status(EINVAL, "MTU too small for AF_XDP frames");
    auto s = std::make_unique<XdpSession>(fd, token, o, std::move(port), peering);
    CHAINIO_RETURN_IF_ERROR(s->start());
    return std::unique_ptr<Session>(std::move(s));
}

}  // namespace chainio::net
