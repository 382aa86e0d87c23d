#pragma once

// Peer transfers: a session between two processes moves whole objects (byte ranges of known
// size) over AF_XDP frames with ChainIO's own reliability, or over TCP when AF_XDP cannot run.
// Every object's xxh3 digest travels in a manifest on the session's TCP control channel and is
// checked by the receiver before anything is reported as delivered.
//
// Threading: a Session is driven by the thread that calls send()/recv() (its io_uring runs on
// that thread; no background thread). A Session is not thread-safe; different sessions may be
// used from different threads.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>

#include "chainio/status.h"

namespace chainio::net {

/// Which transport carries the bytes of a session.
enum class TransportKind {
    kAuto,  ///< AF_XDP when this process can attach our XDP program and open an AF_XDP socket
    kXdp,   ///< AF_XDP or fail
    kTcp,   ///< TCP (io_uring SEND/RECV on the control connection)
};

/// "auto", "xdp" or "tcp"; -EINVAL for anything else.
Result<TransportKind> parse_transport(const std::string& name);
const char* transport_name(TransportKind kind);

/// Options of a Listener or of connect(). Environment: CHAINIO_TRANSPORT=tcp|xdp overrides
/// kAuto.
struct NetOptions {
    TransportKind transport = TransportKind::kAuto;
    /// Interface for AF_XDP; empty: the interface that holds the TCP connection's local address.
    std::string ifname;
    uint32_t queue = 0;          ///< rx queue the AF_XDP socket binds to
    bool busy_poll = false;      ///< spin on the rings instead of sleeping in io_uring_enter
    /// Without busy_poll: spin this long after the last progress before sleeping in
    /// io_uring_enter (a wake-up costs ~10 us here; a reply often comes sooner). AF_XDP spins on
    /// its rings; TCP probes its socket with RECVs that complete at once. Environment:
    /// CHAINIO_SPIN_US overrides it.
    uint32_t spin_us = 20;
    uint32_t timeout_ms = 5000;  ///< a peer silent this long fails the transfer (-ETIMEDOUT)
    size_t umem_bytes = 16u << 20;  ///< AF_XDP UMEM (half receive, half send), 4 KiB frames
    /// AF_XDP: UMEM added for the caller to fill and send from without a copy (see
    /// Session::send_arena()). 0: none.
    size_t send_arena_bytes = 0;
    /// Shared secret. connect() presents it in the hello; a Listener with a non-empty `auth`
    /// refuses (-EACCES on both sides) a hello that does not carry the same string. It travels
    /// in clear on the control connection: it keeps strangers out, it is not encryption.
    std::string auth;
};

/// Counters of one session (monotonic).
struct NetStats {
    uint64_t bytes_sent = 0;        ///< payload bytes put on the wire: objects, retransmits and
                                    ///< (AF_XDP) the manifest, 8 + 16 bytes per object
    uint64_t bytes_received = 0;    ///< object payload bytes accepted (duplicates excluded)
    uint64_t frames_sent = 0;       ///< data frames (AF_XDP) or data messages (TCP) sent
    uint64_t frames_zero_copy = 0;  ///< AF_XDP frames whose payload was sent from the send
                                    ///< arena without a copy (retransmissions included)
    uint64_t frames_received = 0;   ///< data frames/messages accepted
    uint64_t acks_sent = 0;
    uint64_t acks_received = 0;
    uint64_t retransmits = 0;       ///< data frames sent again after a timeout or a SACK gap
    uint64_t duplicates = 0;        ///< data frames received twice (dropped)
    uint64_t dropped_bad_token = 0; ///< frames of another session (dropped)
    uint64_t dropped_bad_check = 0; ///< frames whose checksum failed: corrupted (dropped)
    uint64_t dropped_bad_len = 0;   ///< frames with impossible lengths/sequence (dropped)
    uint64_t dropped_stale = 0;     ///< frames of a finished transfer (dropped)
    uint64_t kicks = 0;             ///< TX wakeups (sendmsg on the AF_XDP socket)
    uint64_t ring_enters = 0;       ///< io_uring_enter calls made by the session's ring
    uint64_t recv_probes = 0;       ///< TCP: non-blocking RECVs that found nothing (spinning)
    uint64_t timeouts_fired = 0;    ///< retransmission timer expirations
    // The kernel's counters of the AF_XDP socket (XDP_STATISTICS); 0 on TCP.
    uint64_t xsk_rx_dropped = 0;         ///< frames the kernel dropped for us (no room, too big)
    uint64_t xsk_rx_ring_full = 0;       ///< ... because our RX ring was full
    uint64_t xsk_rx_fill_empty = 0;      ///< ... because our fill ring had no chunk
    uint64_t xsk_invalid_descs = 0;      ///< RX + TX descriptors the kernel refused
};

/// A writable destination or readable source of one object.
struct Span {
    void* data;
    size_t size;
};

class Session {
public:
    /// Connects to a Listener at ip:port and runs the hello (version, session token, addresses).
    /// Errors: -ECONNREFUSED, -ETIMEDOUT, -EPROTO (not a ChainIO peer or another version),
    /// -EOPNOTSUPP (transport kXdp requested and AF_XDP cannot run).
    static Result<std::unique_ptr<Session>> connect(const std::string& ip, uint16_t port,
                                                    const NetOptions& options);
    virtual ~Session();

    /// Sends every object at once (one stream each) and returns when the peer has received and
    /// verified all of them. Errors: -ETIMEDOUT (peer silent for timeout_ms), -ECONNRESET (peer
    /// closed), -EBADMSG (the peer reported a digest mismatch), -EPROTO.
    virtual Status send(std::span<const Span> objects) = 0;

    /// Receives the objects of the peer's next send(). `place(i, size)` is called once per
    /// object when the manifest arrives and returns where object i goes (nullptr: refuse, the
    /// transfer fails with -ENOMEM on both sides). Returns after every digest matched.
    virtual Status recv(const std::function<void*(size_t index, size_t size)>& place) = 0;

    /// Memory that send() transmits without copying it: on AF_XDP with multi-buffer frames, the
    /// UMEM part NetOptions::send_arena_bytes reserved (4 KiB-aligned, so O_DIRECT reads can
    /// land in it); frames then carry their payload as descriptors pointing into it. Empty when
    /// the transport has none (TCP sends from any memory without a user-space copy; AF_XDP
    /// without SG must copy each payload next to its headers). Valid for the session's life;
    /// the caller must not change bytes of an object while send() runs.
    virtual std::span<std::byte> send_arena() { return {}; }

    virtual TransportKind kind() const = 0;
    /// Why the session is not on AF_XDP ("" when it is).
    virtual const std::string& fallback_reason() const = 0;
    /// Extra facts for logs and `chainio doctor`: XDP mode (copy/zero-copy), payload per frame.
    virtual std::string describe() const = 0;
    virtual NetStats stats() const = 0;
    /// Tells the peer and closes; further calls fail with -ENOTCONN.
    virtual void close() = 0;
    /// How long a silent peer is tolerated from the next send()/recv() on (NetOptions::timeout_ms).
    virtual void set_timeout_ms(uint32_t timeout_ms) = 0;
    /// The one call allowed from another thread while send()/recv() runs: shuts the control
    /// connection down, so that the blocked call fails (-ECONNRESET) at once. The owner still
    /// closes and destroys the session.
    virtual void abort() = 0;

protected:
    Session() = default;
};

/// A TCP listening socket accepting ChainIO peers.
class Listener {
public:
    /// Listens on ip:port (port 0: any). Errors: the bind/listen errno.
    static Result<std::unique_ptr<Listener>> create(const std::string& ip, uint16_t port,
                                                    const NetOptions& options);
    ~Listener();
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    uint16_t port() const { return port_; }
    /// Waits up to timeout_ms for one peer and runs the hello. Errors: -ETIMEDOUT, -EPROTO.
    Result<std::unique_ptr<Session>> accept(uint32_t timeout_ms);
    /// accept() in two steps, so that a server can run each hello on its own thread and a
    /// connection that never says hello holds up no one else: accept_connection() waits up to
    /// timeout_ms for a TCP connection and returns its descriptor; handshake() takes it over
    /// (closing it on failure) and runs the hello, waiting up to options.timeout_ms for the
    /// peer. Hellos may run concurrently: what follows a valid token (setting up the
    /// transport) runs one at a time.
    Result<int> accept_connection(uint32_t timeout_ms);
    Result<std::unique_ptr<Session>> handshake(int fd);

private:
    Listener(int fd, uint16_t port, NetOptions options)
        : fd_(fd), port_(port), options_(std::move(options)) {}
    int fd_;
    uint16_t port_;
    NetOptions options_;
    std::mutex setup_mu_;
};

}  // namespace chainio::net
