#pragma once

// What both transports share: the session's io_uring (driven by the calling thread), the TCP
// control channel read and written through that ring, peer-silence deadlines, and failing
// cleanly (nothing in flight into caller memory when an error is returned).

#include <liburing.h>

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "chainio/net.h"
#include "net/control.h"
#include "net/wire.h"

namespace chainio::net {

/// One object of a transfer, with the per-chunk bookkeeping both ends keep.
struct Stream {
    uint8_t* data = nullptr;
    size_t size = 0;
    uint64_t digest = 0;
    uint32_t chunks = 0;
    uint32_t count = 0;     ///< chunks acknowledged (sender) or received (receiver)
    uint32_t cum = 0;       ///< every chunk below it is acknowledged/received
    uint32_t next_new = 0;  ///< sender: first chunk never sent
    size_t count_bytes = 0; ///< TCP receiver: bytes arrived (in order)
    bool verified = false;  ///< receiver: complete and its digest checked
    std::vector<uint64_t> bits;
    std::vector<int64_t> sent_ns;  ///< sender: time of the last send of each chunk
    std::vector<uint64_t> resent;  ///< sender: chunk was sent more than once (no RTT sample)
    std::vector<uint64_t> piece;   ///< AF_XDP: wire::piece_hash of each chunk

    void init(uint32_t n, bool sender);
    bool has(uint32_t i) const { return bits[i >> 6] >> (i & 63) & 1; }
    /// Marks chunk i; false if it was already marked.
    bool mark(uint32_t i);
    bool complete() const { return count == chunks; }
};

class SessionCore : public Session {
public:
    SessionCore(int fd, uint64_t token, const NetOptions& options, std::string fallback);
    ~SessionCore() override;
    /// Creates the ring and arms the control channel read.
    Status start();
    const std::string& fallback_reason() const override { return fallback_; }
    NetStats stats() const override { return stats_; }
    void close() override;
    void set_timeout_ms(uint32_t timeout_ms) override { options_.timeout_ms = timeout_ms; }
    void abort() override;

protected:
    enum Tag : uint64_t { kCtlRecv = 1, kCtlSend = 2, kXskPoll = 3, kCancel = 5 };

    /// Submits what is queued, then (may_block) waits for one completion or until wake_at_ns,
    /// and dispatches every completion. Errors of the control channel are returned.
    Status pump(bool may_block, int64_t wake_at_ns);
    /// Completions of transport-owned operations (tags other than kCtl*).
    virtual void on_cqe(uint64_t tag, int res, uint32_t flags) = 0;
    /// Where the body of a DATA control message goes (TCP transport); nullptr: protocol error.
    virtual uint8_t* data_target(const wire::MsgHeader& h) { (void)h; return nullptr; }
    /// A DATA body has fully arrived at data_target(h).
    virtual Status on_data(const wire::MsgHeader& h) { (void)h; return Status(EPROTO, "unexpected data"); }

    /// Queues a control message; `body` is copied unless `borrowed` (then it must stay valid
    /// until out_idle()).
    void queue_message(wire::Msg type, uint64_t a, uint64_t b, std::string body);
    void queue_borrowed(wire::Msg type, uint64_t a, uint64_t b, const uint8_t* p, size_t n);
    size_t out_bytes() const { return out_bytes_; }
    bool out_idle() const { return out_.empty(); }
    /// The next complete control message, if any.
    bool pop_message(Message* m);

    /// -ETIMEDOUT when nothing was heard from the peer for timeout_ms.
    Status check_silence(const char* waiting_for) const;
    void heard() { last_heard_ns_ = now_ns(); }
    /// Whether a waiting loop may sleep now: never with busy_poll; otherwise once it has spun
    /// for NetOptions::spin_us since restart_spin() (its last progress; pump() restarts it for
    /// every completion it dispatches but a probe that found nothing). A reply often comes
    /// sooner than a wake-up would. The AF_XDP loop spins on its rings; pump() itself spins for
    /// TCP, probing the socket (probe_recv_).
    bool spin_over() const {
        return !options_.busy_poll && now_ns() - spin_start_ns_ >= spin_ns_;
    }
    void restart_spin() { spin_start_ns_ = now_ns(); }
    /// Puts the session out of service with `st`: tells the peer, cancels everything in flight
    /// (no operation touches caller memory after this returns) and returns `st`.
    Status fail(Status st, bool tell_peer = true);
    Status usable() const;

    io_uring ring_{};
    bool ring_ok_ = false;
    int fd_;
    uint64_t token_;
    NetOptions options_;
    std::string fallback_;
    NetStats stats_{};
    uint32_t inflight_ops_ = 0;  ///< SQEs submitted whose final CQE has not arrived
    /// TCP: a completed send means the peer's kernel took the bytes, so it counts as contact.
    bool count_sends_as_heard_ = false;
    /// TCP: while spinning (busy_poll, or within spin_us of the last progress) read the control
    /// channel with RECVs that complete at once, data or -EAGAIN, instead of one that waits. A
    /// waiting RECV completes through io_uring's poll and task-work path when the bytes come,
    /// slower than the peer's reply usually is; a probe finds the bytes in the socket itself.
    bool probe_recv_ = false;

private:
    struct Out {
        wire::MsgHeader header{};
        std::string owned;
        const uint8_t* body = nullptr;
        size_t body_len = 0;
        size_t sent = 0;  ///< bytes of header + body already written
    };
    /// `probe`: MSG_DONTWAIT, completes at once (see probe_recv_).
    void arm_recv(bool probe);
    void arm_send();
    Status on_recv(int res);
    Status on_send(int res);
    /// Takes what the staging buffer holds: headers, control bodies and the first bytes of
    /// DATA bodies. Stops while a control message waits in the inbox (a DATA header that
    /// follows a manifest can be placed only once the caller has taken the manifest).
    Status parse_staged();
    /// A header was read: where its body goes.
    Status begin_body();
    /// The body of rx_header_ is complete.
    Status end_body();
    io_uring_sqe* sqe();

    // Sending: one SENDMSG carries the queued messages up to kSendIov iovecs and, past the
    // first, kCoalesceBytes, so a DONE, a manifest and a small object leave in one call while
    // a large body still goes on its own (a single SENDMSG of several MiB was slower).
    static constexpr int kSendIov = 16;
    static constexpr size_t kCoalesceBytes = 64u << 10;
    std::deque<Out> out_;
    size_t out_bytes_ = 0;
    bool send_armed_ = false;
    msghdr send_msg_{};
    iovec send_iov_[kSendIov]{};

    // Receiving: RECV into a staging buffer, so that one completion can bring several small
    // messages (a DONE, then the next manifest and its bytes). The rest of a body of at least
    // kDirectBytes is read straight into its place, with no copy.
    static constexpr size_t kStageBytes = 16u << 10;
    static constexpr size_t kDirectBytes = 4096;
    static constexpr size_t kProbeBodyBytes = 64u << 10;  ///< larger rests of a body: no probes
    bool recv_armed_ = false;
    bool recv_probe_ = false;   ///< the armed RECV is a probe
    bool recv_direct_ = false;  ///< the armed RECV writes into the body's place
    std::vector<uint8_t> stage_;
    size_t stage_lo_ = 0, stage_hi_ = 0;  ///< unparsed bytes: stage_[lo, hi)
    uint64_t parsed_ = 0;  ///< headers and body pieces taken from the staging buffer
    bool in_body_ = false;
    wire::MsgHeader rx_header_{};
    size_t rx_got_ = 0;
    uint8_t* rx_target_ = nullptr;
    std::vector<uint8_t> rx_body_;
    std::deque<Message> inbox_;

    int64_t last_heard_ns_ = 0;
    int64_t spin_ns_ = 0;        // NetOptions::spin_us or CHAINIO_SPIN_US, in ns
    int64_t spin_start_ns_ = 0;  // last progress of the waiting loop
    Status broken_;
    bool closed_ = false;
};

/// The error of a session that is closed.
Status closed_error();

/// The Status for an ERROR or CLOSE control message that arrives in the middle of a transfer:
/// the peer's error, or its goodbye (-ECONNRESET).
Status peer_gone(const Message& m);

}  // namespace chainio::net
