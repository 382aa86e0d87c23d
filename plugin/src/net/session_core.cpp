#include "net/session_core.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "log.h"

namespace chainio::net {

void Stream::init(uint32_t n, bool sender) {
    chunks = n;
    count = cum = next_new = 0;
    bits.assign((n + 63) / 64, 0);
    if (sender) {
        sent_ns.assign(n, 0);
        resent.assign((n + 63) / 64, 0);
    }
}

bool Stream::mark(uint32_t i) {
    uint64_t& w = bits[i >> 6];
    const uint64_t bit = uint64_t{1} << (i & 63);
    if (w & bit) return false;
    w |= bit;
    ++count;
    while (cum < chunks && has(cum)) ++cum;
    return true;
}

Status closed_error() { return Status(ENOTCONN, "the session is closed"); }

Status peer_gone(const Message& m) {
    if (m.header.type == static_cast<uint32_t>(wire::Msg::kError))
        return Status(m.header.b ? static_cast<int>(m.header.b) : EPROTO,
                      "the peer failed: " + std::string(m.body.begin(), m.body.end()));
    return Status(ECONNRESET, "the peer closed the session");
}

namespace {
// NetOptions::spin_us, unless CHAINIO_SPIN_US says otherwise.
int64_t spin_us(uint32_t configured) {
    const char* env = std::getenv("CHAINIO_SPIN_US");
    if (env == nullptr || *env == '\0') return configured;
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (*end != '\0' || v < 0 || v > 1'000'000) {
        log::once(log::Level::kWarn, "bad-spin-env",
                  std::string("ignoring CHAINIO_SPIN_US=") + env + ": not 0..1000000");
        return configured;
    }
    return v;
}
}  // namespace

SessionCore::SessionCore(int fd, uint64_t token, const NetOptions& options, std::string fallback)
    : fd_(fd), token_(token), options_(options), fallback_(std::move(fallback)),
      spin_ns_(spin_us(options.spin_us) * 1000) {}

SessionCore::~SessionCore() {
    if (ring_ok_) {
        if (inflight_ops_) (void)fail(Status(ECANCELED, "session destroyed"));
        io_uring_queue_exit(&ring_);
    }
    if (fd_ >= 0) ::close(fd_);
}

Status SessionCore::start() {
    // io_uring answers -EAGAIN instead of waiting on O_NONBLOCK sockets.
    const int fl = fcntl(fd_, F_GETFL);
    if (fl >= 0) fcntl(fd_, F_SETFL, fl & ~O_NONBLOCK);
    if (int err = io_uring_queue_init(256, &ring_, 0); err < 0)
        return Status(err, "io_uring_queue_init for the session");
    ring_ok_ = true;
    stage_.resize(kStageBytes);
    heard();
    return {};
}

io_uring_sqe* SessionCore::sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    if (!s) {
        io_uring_submit(&ring_);
        ++stats_.ring_enters;
        s = io_uring_get_sqe(&ring_);
    }
    return s;  // 256 entries and a handful of ops in flight: never null after a submit
}

void SessionCore::arm_recv(bool probe) {
    if (recv_armed_ || closed_ || !broken_.is_ok()) return;
    uint8_t* p;
    size_t want;
    recv_direct_ = in_body_ && stage_lo_ == stage_hi_ && rx_header_.len - rx_got_ >= kDirectBytes;
    if (recv_direct_) {
        p = (rx_target_ ? rx_target_ : rx_body_.data()) + rx_got_;
        want = rx_header_.len - rx_got_;
        // A large body arrives segment after segment: probing it would take each as it comes
        // (10x the RECVs of bulk receiving, +10-25% CPU per GB), so it gets one MSG_WAITALL.
        if (want > kProbeBodyBytes) probe = false;
    } else {
        if (stage_lo_ == stage_hi_) {
            stage_lo_ = stage_hi_ = 0;
        } else if (stage_lo_) {
            std::memmove(stage_.data(), stage_.data() + stage_lo_, stage_hi_ - stage_lo_);
            stage_hi_ -= stage_lo_;
            stage_lo_ = 0;
        }
        // Full: the caller has a message to take first (a RECV of 0 bytes would read as the
        // peer's close).
        if (stage_hi_ == stage_.size()) return;
        p = stage_.data() + stage_hi_;
        want = stage_.size() - stage_hi_;
    }
    io_uring_sqe* s = sqe();
    // A probe takes what is there (io_uring answers -EAGAIN for MSG_DONTWAIT instead of
    // waiting). A waiting RECV into the staging buffer returns what the first segment brings;
    // one into a body's place waits for all of it.
    io_uring_prep_recv(s, fd_, p, want, probe ? MSG_DONTWAIT : recv_direct_ ? MSG_WAITALL : 0);
    io_uring_sqe_set_data64(s, kCtlRecv);
    recv_armed_ = true;
    recv_probe_ = probe;
    ++inflight_ops_;
}

void SessionCore::arm_send() {
    if (send_armed_ || out_.empty() || !broken_.is_ok()) return;
    // Deque elements stay where they are while others are pushed behind them, so the iovecs
    // (headers and SSO bodies included) stay valid until the completion.
    int n = 0;
    size_t bytes = 0;
    for (Out& o : out_) {
        const size_t left = sizeof(o.header) + o.body_len - o.sent;
        if (n + 2 > kSendIov || (n && bytes + left > kCoalesceBytes)) break;
        bytes += left;
        const size_t hb = sizeof(o.header);
        if (o.sent < hb) {
            send_iov_[n++] = {reinterpret_cast<uint8_t*>(&o.header) + o.sent, hb - o.sent};
        }
        const size_t body_done = o.sent > hb ? o.sent - hb : 0;
        const uint8_t* body = o.body ? o.body : reinterpret_cast<const uint8_t*>(o.owned.data());
        if (o.body_len > body_done) {
            send_iov_[n++] = {const_cast<uint8_t*>(body) + body_done, o.body_len - body_done};
        }
    }
    send_msg_ = {};
    send_msg_.msg_iov = send_iov_;
    send_msg_.msg_iovlen = static_cast<size_t>(n);
    io_uring_sqe* s = sqe();
    io_uring_prep_sendmsg(s, fd_, &send_msg_, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, kCtlSend);
    send_armed_ = true;
    ++inflight_ops_;
}

void SessionCore::queue_message(wire::Msg type, uint64_t a, uint64_t b, std::string body) {
    Out o;
    o.header = {static_cast<uint32_t>(type), static_cast<uint32_t>(body.size()), a, b};
    o.body_len = body.size();
    o.owned = std::move(body);
    out_bytes_ += sizeof(o.header) + o.body_len;
    out_.push_back(std::move(o));
}

void SessionCore::queue_borrowed(wire::Msg type, uint64_t a, uint64_t b, const uint8_t* p,
                                 size_t n) {
    Out o;
    o.header = {static_cast<uint32_t>(type), static_cast<uint32_t>(n), a, b};
    o.body = p;
    o.body_len = n;
    out_bytes_ += sizeof(o.header) + n;
    out_.push_back(std::move(o));
}

bool SessionCore::pop_message(Message* m) {
    if (inbox_.empty()) return false;
    *m = std::move(inbox_.front());
    inbox_.pop_front();
    return true;
}

Status SessionCore::on_recv(int res) {
    recv_armed_ = false;
    if (res == -ECANCELED || res == -EINTR || res == -EAGAIN) return {};
    if (res == 0) return Status(ECONNRESET, "the peer closed the connection");
    if (res < 0) return Status(res, "control channel receive");
    heard();
    if (recv_direct_) {
        rx_got_ += static_cast<size_t>(res);
        return rx_got_ < rx_header_.len ? Status() : end_body();
    }
    stage_hi_ += static_cast<size_t>(res);
    return parse_staged();
}

Status SessionCore::parse_staged() {
    while (inbox_.empty()) {
        const size_t avail = stage_hi_ - stage_lo_;
        if (!in_body_) {
            if (avail < sizeof(rx_header_)) return {};
            std::memcpy(&rx_header_, stage_.data() + stage_lo_, sizeof(rx_header_));
            stage_lo_ += sizeof(rx_header_);
            ++parsed_;
            CHAINIO_RETURN_IF_ERROR(begin_body());
            if (rx_header_.len == 0) CHAINIO_RETURN_IF_ERROR(end_body());
            continue;
        }
        if (!avail) return {};
        const size_t n = std::min(avail, size_t(rx_header_.len) - rx_got_);
        std::memcpy((rx_target_ ? rx_target_ : rx_body_.data()) + rx_got_,
                    stage_.data() + stage_lo_, n);
        stage_lo_ += n;
        rx_got_ += n;
        ++parsed_;
        if (rx_got_ < rx_header_.len) return {};
        CHAINIO_RETURN_IF_ERROR(end_body());
    }
    return {};
}

Status SessionCore::begin_body() {
    const auto type = static_cast<wire::Msg>(rx_header_.type);
    if (type != wire::Msg::kData && rx_header_.len > wire::kMaxControlBody)
        return Status(EPROTO, "control message of " + std::to_string(rx_header_.len) + " B");
    in_body_ = true;
    rx_got_ = 0;
    rx_target_ = nullptr;
    if (type == wire::Msg::kData) {
        rx_target_ = data_target(rx_header_);
        if (!rx_target_)
            return Status(EPROTO, "data message outside the current transfer (transfer/stream "
                                  "or offset out of range)");
    } else {
        rx_body_.assign(rx_header_.len, 0);
    }
    return {};
}

Status SessionCore::end_body() {
    in_body_ = false;
    rx_got_ = 0;
    if (static_cast<wire::Msg>(rx_header_.type) == wire::Msg::kData) return on_data(rx_header_);
    inbox_.push_back(Message{rx_header_, std::move(rx_body_)});
    rx_body_.clear();
    return {};
}

Status SessionCore::on_send(int res) {
    send_armed_ = false;
    if (res == -ECANCELED || res == -EINTR || res == -EAGAIN) return {};
    if (res < 0) {
        if (res == -EPIPE || res == -ECONNRESET)
            return Status(ECONNRESET, "the peer closed the connection");
        return Status(res, "control channel send");
    }
    if (count_sends_as_heard_) heard();
    // The bytes written cover whole messages from the front, then maybe part of one.
    size_t left = static_cast<size_t>(res);
    while (left && !out_.empty()) {
        Out& o = out_.front();
        const size_t total = sizeof(o.header) + o.body_len;
        const size_t take = std::min(left, total - o.sent);
        o.sent += take;
        left -= take;
        if (o.sent < total) break;
        out_bytes_ -= total;
        out_.pop_front();
    }
    return {};
}

Status SessionCore::pump(bool may_block, int64_t wake_at_ns) {
    // Bytes staged earlier, left while the caller had a message to take first. (Parsing only
    // moves stage_lo_, so a RECV into the staging buffer's tail may be in flight meanwhile.)
    const uint64_t parsed_before = parsed_;
    if (stage_lo_ != stage_hi_ && !(recv_armed_ && recv_direct_) && broken_.is_ok()) {
        if (Status st = parse_staged(); !st) return st;
    }
    const bool probe = probe_recv_ && !spin_over();
    arm_recv(probe);
    arm_send();
    if (may_block && parsed_ == parsed_before && !(recv_armed_ && recv_probe_)) {
        int64_t left = wake_at_ns - now_ns();
        if (left < 0) left = 0;
        __kernel_timespec ts{left / 1'000'000'000, left % 1'000'000'000};
        io_uring_cqe* cqe = nullptr;
        const int r = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
        ++stats_.ring_enters;
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
            return Status(r, "io_uring wait");
    } else if (io_uring_sq_ready(&ring_)) {
        io_uring_submit(&ring_);
        ++stats_.ring_enters;
    }
    Status st;
    unsigned head, seen = 0, progress = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        const uint64_t tag = io_uring_cqe_get_data64(cqe);
        const int res = cqe->res;
        const uint32_t flags = cqe->flags;
        if ((tag & 0xff) == kCtlRecv && res == -EAGAIN)
            ++stats_.recv_probes;  // a probe that found nothing: not progress
        else
            ++progress;
        if (tag != kCancel && !(flags & IORING_CQE_F_MORE)) --inflight_ops_;
        Status s;
        switch (tag & 0xff) {
        case kCtlRecv: s = on_recv(res); break;
        case kCtlSend: s = on_send(res); break;
        case kCancel: break;
        default: on_cqe(tag, res, flags); break;
        }
        if (!s.is_ok() && st.is_ok()) st = s;
    }
    io_uring_cq_advance(&ring_, seen);
    if (progress) restart_spin();
    return st;
}

Status SessionCore::check_silence(const char* waiting_for) const {
    const int64_t quiet = now_ns() - last_heard_ns_;
    if (quiet <= int64_t(options_.timeout_ms) * 1'000'000) return {};
    return Status(ETIMEDOUT, std::string("the peer sent nothing for ") +
                                 std::to_string(quiet / 1'000'000) + " ms while waiting for " +
                                 waiting_for + " (timeout_ms " +
                                 std::to_string(options_.timeout_ms) + ")");
}

Status SessionCore::usable() const {
    if (closed_) return closed_error();
    if (!broken_.is_ok())
        return Status(broken_.code(), "the session failed earlier: " + broken_.message());
    return {};
}

Status SessionCore::fail(Status st, bool tell_peer) {
    if (!broken_.is_ok()) return st;
    broken_ = st.is_ok() ? Status(ECANCELED, "session stopped") : st;
    // Tell the peer unless the channel is dead or a partly written message is on it.
    const bool clean = out_.empty() || out_.front().sent == 0;
    if (tell_peer && clean && st.code() != -ECONNRESET && st.code() != -EPIPE) {
        (void)send_message(fd_, wire::Msg::kError, 0, static_cast<uint64_t>(st.error_number()),
                           st.message(), 200);
    }
    ::shutdown(fd_, SHUT_RDWR);
    if (ring_ok_ && inflight_ops_) {
        io_uring_sqe* s = sqe();
        io_uring_prep_cancel64(s, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(s, kCancel);
        const int64_t give_up = now_ns() + 2'000'000'000;
        while (inflight_ops_ && now_ns() < give_up) {
            io_uring_submit(&ring_);
            unsigned head, seen = 0;
            io_uring_cqe* cqe;
            __kernel_timespec ts{0, 50'000'000};
            (void)io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
            io_uring_for_each_cqe(&ring_, head, cqe) {
                ++seen;
                if (io_uring_cqe_get_data64(cqe) != kCancel && !(cqe->flags & IORING_CQE_F_MORE))
                    --inflight_ops_;
            }
            io_uring_cq_advance(&ring_, seen);
        }
    }
    recv_armed_ = send_armed_ = false;
    out_.clear();
    out_bytes_ = 0;
    return st;
}

void SessionCore::abort() {
    // shutdown(2) on a descriptor that stays open until the destructor: safe from any thread.
    ::shutdown(fd_, SHUT_RDWR);
}

void SessionCore::close() {
    if (closed_) return;
    if (broken_.is_ok() && ring_ok_) {
        queue_message(wire::Msg::kClose, 0, 0, {});
        const int64_t give_up = now_ns() + 200'000'000;
        while (!out_.empty() && now_ns() < give_up && pump(true, now_ns() + 20'000'000).is_ok()) {
        }
    }
    if (broken_.is_ok()) (void)fail(closed_error(), /*tell_peer=*/false);
    closed_ = true;
}

}  // namespace chainio::net
