// The TCP transport: manifests, object bytes and confirmations all travel on the session's
// control connection, written with io_uring SENDMSG straight from the caller's memory and read
// with io_uring RECV straight into the destination (no staging copy in user space).

#include <nlohmann/json.hpp>

#include "net/session_core.h"
#include "net/transports.h"

namespace chainio::net {
namespace {

constexpr size_t kDataChunk = 1u << 20;       // bytes per DATA message
constexpr size_t kQueueLimit = 8u << 20;      // bytes queued on the socket ahead of the kernel

class TcpSession final : public SessionCore {
public:
    TcpSession(int fd, uint64_t token, const NetOptions& o, std::string fallback)
        : SessionCore(fd, token, o, std::move(fallback)) {
        count_sends_as_heard_ = true;
        probe_recv_ = true;
    }
    ~TcpSession() override { close(); }

    TransportKind kind() const override { return TransportKind::kTcp; }
    std::string describe() const override { return "TCP (io_uring SENDMSG/RECV)"; }

    Status send(std::span<const Span> objects) override {
        CHAINIO_RETURN_IF_ERROR(usable());
        const uint32_t transfer = next_transfer_++;
        nlohmann::json m = {{"transfer", transfer}, {"objects", nlohmann::json::array()}};
        for (const Span& o : objects) {
            m["objects"].push_back({o.size, wire::object_digest(o.data, o.size)});
        }
        queue_message(wire::Msg::kManifest, transfer, 0, m.dump());
        size_t obj = 0, off = 0;
        heard();
        for (;;) {
            // Keep the socket fed without queueing the whole object.
            while (obj < objects.size() && out_bytes() < kQueueLimit) {
                const Span& o = objects[obj];
                const size_t n = std::min(kDataChunk, o.size - off);
                if (n) {
                    queue_borrowed(wire::Msg::kData, uint64_t(transfer) << 32 | obj, off,
                                   static_cast<const uint8_t*>(o.data) + off, n);
                    ++stats_.frames_sent;
                    stats_.bytes_sent += n;
                }
                off += n;
                if (off == o.size) {
                    ++obj;
                    off = 0;
                }
            }
            Message msg;
            while (pop_message(&msg)) {
                const auto t = static_cast<wire::Msg>(msg.header.type);
                if (t == wire::Msg::kDone && msg.header.a == transfer) {
                    if (msg.header.b == 0) return {};
                    return Status(static_cast<int>(msg.header.b),
                                  "the peer rejected the transfer: " +
                                      std::string(msg.body.begin(), msg.body.end()));
                }
                if (t == wire::Msg::kError || t == wire::Msg::kClose)
                    return fail(peer_gone(msg), false);
                return fail(Status(EPROTO, "unexpected control message " +
                                               std::to_string(msg.header.type) + " while sending"));
            }
            if (Status s = check_silence("the peer to take the data and confirm it"); !s)
                return fail(s);
            if (Status s = pump(!options_.busy_poll, now_ns() + 50'000'000); !s) return fail(s);
        }
    }

    Status recv(const std::function<void*(size_t, size_t)>& place) override {
        CHAINIO_RETURN_IF_ERROR(usable());
        heard();
        Message msg;
        for (;;) {
            if (pop_message(&msg)) {
                const auto t = static_cast<wire::Msg>(msg.header.type);
                if (t == wire::Msg::kManifest) break;
                if (t == wire::Msg::kError || t == wire::Msg::kClose)
                    return fail(peer_gone(msg), false);
                return fail(Status(EPROTO, "unexpected control message " +
                                               std::to_string(msg.header.type) + " before a manifest"));
            }
            if (Status s = check_silence("a transfer"); !s) return fail(s);
            if (Status s = pump(!options_.busy_poll, now_ns() + 50'000'000); !s) return fail(s);
        }
        const uint32_t transfer = static_cast<uint32_t>(msg.header.a);
        rx_streams_.clear();
        try {
            const auto m = nlohmann::json::parse(msg.body.begin(), msg.body.end());
            if (m.at("transfer").get<uint32_t>() != transfer) throw std::runtime_error("id");
            for (const auto& o : m.at("objects")) {
                Stream s;
                s.size = o.at(0).get<size_t>();
                s.digest = o.at(1).get<uint64_t>();
                rx_streams_.push_back(std::move(s));
            }
        } catch (const std::exception& e) {
            return fail(Status(EPROTO, std::string("malformed manifest: ") + e.what()));
        }
        for (size_t i = 0; i < rx_streams_.size(); ++i) {
            rx_streams_[i].data = static_cast<uint8_t*>(place(i, rx_streams_[i].size));
            if (!rx_streams_[i].data && rx_streams_[i].size) {
                // The refusal goes out at once, written on the socket here rather than pumped
                // through the ring: the transfer's DATA may already sit in the staging buffer
                // behind its manifest, and parsing it now would be a protocol error.
                const std::string why = "no destination for object " + std::to_string(i);
                if (out_idle()) {
                    (void)send_message(fd_, wire::Msg::kDone, transfer, ENOMEM, why,
                                       options_.timeout_ms);
                }
                return fail(Status(ENOMEM, why + " of " + std::to_string(rx_streams_[i].size) +
                                               " B"),
                            false);
            }
        }
        rx_transfer_ = transfer;
        receiving_ = true;
        done_ = 0;
        for (auto& s : rx_streams_) {
            if (s.size == 0) finish(s);
        }
        while (done_ < rx_streams_.size()) {
            if (pop_message(&msg)) {
                const auto t = static_cast<wire::Msg>(msg.header.type);
                receiving_ = false;
                if (t == wire::Msg::kError) return fail(peer_gone(msg), false);
                return fail(Status(EPROTO, "control message " + std::to_string(msg.header.type) +
                                               " in the middle of a transfer"));
            }
            if (Status s = check_silence("object bytes"); !s) {
                receiving_ = false;
                return fail(s);
            }
            if (Status s = pump(!options_.busy_poll, now_ns() + 50'000'000); !s) {
                receiving_ = false;
                return fail(s);
            }
        }
        receiving_ = false;
        if (!mismatch_.is_ok()) {
            Status bad = mismatch_;
            mismatch_ = Status();
            queue_message(wire::Msg::kDone, transfer, EBADMSG, bad.message());
            (void)flush();
            return bad;
        }
        queue_message(wire::Msg::kDone, transfer, 0, {});
        return flush();
    }

private:
    Status flush() {
        const int64_t give_up = now_ns() + int64_t(options_.timeout_ms) * 1'000'000;
        while (!out_idle()) {
            if (now_ns() > give_up) return fail(Status(ETIMEDOUT, "the peer stopped reading"));
            if (Status s = pump(!options_.busy_poll, now_ns() + 50'000'000); !s) return fail(s);
        }
        return {};
    }

    void finish(Stream& s) {
        ++done_;
        if (wire::object_digest(s.data, s.size) != s.digest && mismatch_.is_ok()) {
            mismatch_ = Status(EBADMSG, "object " + std::to_string(&s - rx_streams_.data()) +
                                            " arrived with another digest than its manifest's");
        }
    }

    uint8_t* data_target(const wire::MsgHeader& h) override {
        const uint32_t transfer = static_cast<uint32_t>(h.a >> 32);
        const uint64_t idx = h.a & 0xffffffffu;
        if (!receiving_ || transfer != rx_transfer_ || idx >= rx_streams_.size()) return nullptr;
        Stream& s = rx_streams_[idx];
        // One TCP stream keeps order: each object's bytes come in sequence.
        if (h.b != s.count_bytes || h.len == 0 || h.b + h.len > s.size) return nullptr;
        return s.data + h.b;
    }

    Status on_data(const wire::MsgHeader& h) override {
        Stream& s = rx_streams_[h.a & 0xffffffffu];
        s.count_bytes += h.len;
        ++stats_.frames_received;
        stats_.bytes_received += h.len;
        if (s.count_bytes == s.size) finish(s);
        return {};
    }

    void on_cqe(uint64_t, int, uint32_t) override {}

    uint32_t next_transfer_ = 1;
    std::vector<Stream> rx_streams_;
    uint32_t rx_transfer_ = 0;
    bool receiving_ = false;
    size_t done_ = 0;
    Status mismatch_;
};

}  // namespace

Result<std::unique_ptr<Session>> make_tcp_session(int fd, uint64_t token, const NetOptions& o,
                                                  std::string fallback) {
    auto s = std::make_unique<TcpSession>(fd, token, o, std::move(fallback));
    CHAINIO_RETURN_IF_ERROR(s->start());
    return std::unique_ptr<Session>(std::move(s));
}

}  // namespace chainio::net
