// The fetcher: one session per seeder, opened on first use and kept. A read() cuts its extents
// into pieces on a shared queue; one thread per live seeder takes the next piece, requests it
// and receives its chunks straight into the destination. A seeder that fails or stalls puts
// the unreceived rest of its piece back on the queue and drops out; when no seeder is left the
// rest comes from the local file, if there is one.

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <thread>

#include "chainio/engine.h"
#include "chainio/peer.h"
#include "log.h"
#include "net/control.h"
#include "peer/protocol.h"

namespace chainio::peer {

namespace {

using nlohmann::json;

struct Piece {
    uint64_t offset;
    uint64_t length;
    uint8_t* dst;
};

// Cuts extents at multiples of `piece` in file offsets, so that every piece but the first and
// last of an extent starts 4 KiB-aligned on the seeder's disk.
std::deque<Piece> cut(const std::vector<FetchExtent>& extents, uint64_t piece) {
    std::deque<Piece> out;
    for (const auto& e : extents) {
        uint64_t off = e.offset;
        const uint64_t end = e.offset + e.length;
        while (off < end) {
            const uint64_t stop = std::min(end, (off / piece + 1) * piece);
            out.push_back({off, stop - off, static_cast<uint8_t*>(e.dst) + (off - e.offset)});
            off = stop;
        }
    }
    return out;
}

}  // namespace

struct Fetcher::State {
    struct Peer {
        std::string ip;
        uint16_t port = 0;
        std::string name;
        std::unique_ptr<net::Session> session;
        int64_t last_used_ns = 0;
        std::string transport;  // of the last session ("" = never connected)
        std::string error;  // set once the seeder is dropped for good
        int code = 0;       // its errno
        bool dead() const { return !error.empty(); }
    };
    std::vector<Peer> peers;
    FetchOptions o;
    std::unique_ptr<Engine> own_engine;
    // cancel() aborts the sessions from another thread: every change of a Peer::session is
    // made under this lock.
    std::mutex sessions_mu;
    std::atomic<bool> cancelled{false};

    void set_session(Peer& p, std::unique_ptr<net::Session> s) {
        std::unique_ptr<net::Session> old;
        {
            std::lock_guard<std::mutex> lock(sessions_mu);
            old = std::move(p.session);
            p.session = std::move(s);
            if (p.session && cancelled) p.session->abort();
        }
        if (old) old->close();
    }

    Status connect(Peer& p);
    // One request and its JSON reply. A session that sat idle may have been closed by the
    // seeder (SeederOptions::idle_ms): one reconnect is allowed then.
    Result<json> request(Peer& p, const json& req);
    void drop(Peer& p, const Status& why);
    Status unreachable(const std::string& what) const;
};

Fetcher::Fetcher(std::unique_ptr<State> state) : state_(std::move(state)) {}
Fetcher::~Fetcher() {
    for (auto& p : state_->peers)
        if (p.session) p.session->close();
}

Result<std::unique_ptr<Fetcher>> Fetcher::create(const std::vector<std::string>& peers,
                                                 const FetchOptions& options) {
    if (peers.empty()) return Status(EINVAL, "no seeders given");
    if (options.net.timeout_ms == 0) return Status(EINVAL, "timeout_ms must be > 0");
    if (options.net.auth.size() > proto::kMaxToken)
        return Status(EINVAL, "the token is longer than " + std::to_string(proto::kMaxToken) +
                                  " bytes");
    if (options.piece_bytes < (1u << 20) || options.piece_bytes % 4096)
        return Status(EINVAL, "piece_bytes must be a multiple of 4096 of at least 1 MiB");
    auto st = std::make_unique<State>();
    st->o = options;
    for (const auto& spec : peers) {
        const auto colon = spec.rfind(':');
        State::Peer p;
        p.name = spec;
        if (colon == std::string::npos || colon == 0)
            return Status(EINVAL, "seeder '" + spec + "' is not ip:port");
        p.ip = spec.substr(0, colon);
        char* end = nullptr;
        const unsigned long port = std::strtoul(spec.c_str() + colon + 1, &end, 10);
        if (*end || port == 0 || port > 65535)
            return Status(EINVAL, "seeder '" + spec + "' is not host:port");
        in_addr a;
        if (inet_pton(AF_INET, p.ip.c_str(), &a) != 1) {  // a host name: its IPv4 address
            addrinfo hints{};
            hints.ai_family = AF_INET;
            hints.ai_socktype = SOCK_STREAM;
            addrinfo* res = nullptr;
            const int rc = getaddrinfo(p.ip.c_str(), nullptr, &hints, &res);
            if (rc != 0 || !res)
                return Status(EINVAL, "seeder '" + spec + "': cannot resolve '" + p.ip +
                                          "' to an IPv4 address (" + gai_strerror(rc) + ")");
            char buf[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr, buf,
                      sizeof(buf));
            freeaddrinfo(res);
            p.ip = buf;
        }
        p.port = static_cast<uint16_t>(port);
        st->peers.push_back(std::move(p));
    }
    return std::unique_ptr<Fetcher>(new Fetcher(std::move(st)));
}

Status Fetcher::State::connect(Peer& p) {
    set_session(p, nullptr);
    auto s = net::Session::connect(p.ip, p.port, o.net);
    if (!s) return Status(s.status().code(), "seeder " + p.name + ": " + s.status().message());
    set_session(p, std::move(s.value()));
    p.transport = net::transport_name(p.session->kind());
    p.last_used_ns = net::now_ns();
    return {};
}

void Fetcher::State::drop(Peer& p, const Status& why) {
    p.error = why.to_string();
    p.code = why.error_number();
    log::write(log::Level::kWarn, "fetch: dropping seeder " + p.name + ": " + p.error);
    set_session(p, nullptr);
}

Result<json> Fetcher::State::request(Peer& p, const json& req) {
    const std::string body = req.dump();
    for (int attempt = 0;; ++attempt) {
        const bool fresh = !p.session;
        if (fresh) CHAINIO_RETURN_IF_ERROR(connect(p));
        const bool was_idle = net::now_ns() - p.last_used_ns > 1'000'000'000;
        const net::Span span{const_cast<char*>(body.data()), body.size()};
        std::vector<uint8_t> reply;
        Status st = p.session->send({&span, 1});
        if (st) {
            st = p.session->recv([&](size_t i, size_t n) -> void* {
                if (i != 0 || n == 0 || n > proto::kMaxMessage) return nullptr;
                reply.resize(n);
                return reply.data();
            });
        }
        if (st) {
            p.last_used_ns = net::now_ns();
            return proto::parse(reply, "seeder " + p.name);
        }
        if (fresh || !was_idle || attempt > 0)
            return Status(st.code(), "seeder " + p.name + ": " + st.message());
        set_session(p, nullptr);  // reconnect once: the seeder may have closed the idle session
    }
}

Status Fetcher::State::unreachable(const std::string& what) const {
    // When every seeder failed the same way (all refused the token, say), that is the error.
    int code = peers.front().code;
    std::string msg = "no seeder could " + what + ":";
    for (const auto& p : peers) {
        msg += " [" + p.name + ": " + p.error + "]";
        if (p.code != code) code = EHOSTUNREACH;
    }
    return Status(code ? code : EHOSTUNREACH, msg);
}

// Asks the live seeders in turn until one answers `req` with "ok" and `take` accepts the reply.
// A seeder's refusal of the file is kept (the first is returned if nobody says yes); a seeder
// that fails, or whose reply `take` rejects, is dropped.
template <class T, class Take>
Result<T> ask_first(Fetcher::State& s, const nlohmann::json& req, const std::string& what,
                    Take take) {
    Status first_answer;  // a seeder's own error for this file (ENOENT, EXDEV, ...)
    for (auto& p : s.peers) {
        if (p.dead()) continue;
        auto r = s.request(p, req);
        if (!r) {
            s.drop(p, r.status());
            continue;
        }
        Status st = proto::reply_status(r.value(), "seeder " + p.name);
        if (!st) {
            if (first_answer.is_ok()) first_answer = st;
            continue;
        }
        Result<T> got = take(r.value());
        if (got) return got;
        s.drop(p, got.status());
    }
    if (!first_answer.is_ok()) return first_answer;
    return s.unreachable(what);
}

Result<Fetcher::FileInfo> Fetcher::stat(const std::string& path) {
    return ask_first<FileInfo>(*state_, {{"op", "stat"}, {"path", path}}, "stat '" + path + "'",
                               [](const json& j) -> Result<FileInfo> {
                                   FileInfo info;
                                   info.size = j.value("size", uint64_t(0));
                                   info.mtime_ns = j.value("mtime_ns", int64_t(0));
                                   return info;
                               });
}

Result<std::vector<std::pair<std::string, uint64_t>>> Fetcher::list(const std::string& path) {
    using Files = std::vector<std::pair<std::string, uint64_t>>;
    return ask_first<Files>(*state_, {{"op", "list"}, {"path", path}}, "list '" + path + "'",
                            [](const json& j) -> Result<Files> {
                                try {
                                    return j.at("files").get<Files>();
                                } catch (const std::exception& e) {
                                    return Status(EPROTO, std::string("malformed list reply: ") +
                                                              e.what());
                                }
                            });
}

Status Fetcher::read(const std::string& path, const FileInfo& info,
                     const std::vector<FetchExtent>& extents, const std::string& local_path,
                     FetchReport* report) {
    State& s = *state_;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& e : extents)
        if (e.offset > info.size || e.length > info.size - e.offset || (e.length && !e.dst))
            return Status(EINVAL, "'" + path + "': extent [" + std::to_string(e.offset) + ", +" +
                                      std::to_string(e.length) + ") is outside the file");
    // Pieces small enough that every live seeder gets several (striping and failover need
    // more pieces than seeders), large enough that a request's round trip stays negligible.
    uint64_t total = 0;
    for (const auto& e : extents) total += e.length;
    size_t live_now = 0;
    for (const auto& p : s.peers) live_now += !p.dead();
    const uint64_t kMinPiece = 1u << 20;
    uint64_t piece = total / (4 * std::max<size_t>(live_now, 1));
    piece = std::clamp<uint64_t>((piece + kMinPiece - 1) / kMinPiece * kMinPiece, kMinPiece,
                                 s.o.piece_bytes);
    std::deque<Piece> queue = cut(extents, piece);
    std::mutex mu;
    std::vector<uint64_t> delivered(s.peers.size(), 0);
    std::vector<std::string> refused(s.peers.size());  // file-level refusals, this call only
    std::vector<int> refused_code(s.peers.size(), 0);

    s.cancelled = false;
    auto work = [&](size_t idx) {
        State::Peer& p = s.peers[idx];
        for (;;) {
            Piece piece;
            {
                std::lock_guard<std::mutex> lock(mu);
                if (queue.empty() || s.cancelled) return;
                piece = queue.front();
                queue.pop_front();
            }
            uint64_t got = 0;
            Status st;
            json req = {{"op", "read"},
                        {"path", path},
                        {"size", info.size},
                        {"extents", {{piece.offset, piece.length}}}};
            // The version the caller stat'ed: a seeder holding another one refuses (ESTALE).
            if (info.mtime_ns != 0) req["mtime_ns"] = info.mtime_ns;
            auto r = s.request(p, req);
            bool session_error = !r;
            if (r) st = proto::reply_status(r.value(), "seeder " + p.name);
            else st = r.status();
            if (st) {
                const uint64_t chunk = r.value().value("chunk", uint64_t(0));
                if (chunk == 0) {
                    st = Status(EPROTO, "seeder " + p.name + ": read reply without a chunk size");
                    session_error = true;
                }
                for (const auto& [off, len] : proto::chunks({{piece.offset, piece.length}},
                                                            chunk ? chunk : 1)) {
                    if (!st) break;
                    uint8_t* dst = piece.dst + (off - piece.offset);
                    st = p.session->recv([&, len = len](size_t i, size_t n) -> void* {
                        return i == 0 && n == len ? dst : nullptr;
                    });
                    if (st) {
                        got += len;
                        std::lock_guard<std::mutex> lock(mu);
                        delivered[idx] += len;
                    } else {
                        st = Status(st.code(), "seeder " + p.name + ": " + st.message());
                        session_error = true;
                    }
                }
                p.last_used_ns = net::now_ns();
            }
            if (st) continue;
            std::lock_guard<std::mutex> lock(mu);
            queue.push_front({piece.offset + got, piece.length - got, piece.dst + got});
            if (s.cancelled) return;  // not the seeder's fault: it stays
            if (session_error) s.drop(p, st);
            else {
                refused[idx] = st.to_string();
                refused_code[idx] = st.error_number();
            }
            return;
        }
    };

    // Rounds: every live seeder works until the queue is empty or it drops out. A seeder that
    // drops out late may leave a piece after the others finished, hence another round.
    for (;;) {
        std::vector<size_t> live;
        for (size_t i = 0; i < s.peers.size(); ++i)
            if (!s.peers[i].dead() && refused[i].empty()) live.push_back(i);
        if (queue.empty() || live.empty() || s.cancelled) break;
        if (live.size() == 1) {
            work(live[0]);
        } else {
            std::vector<std::thread> threads;
            for (size_t i : live) threads.emplace_back(work, i);
            for (auto& t : threads) t.join();
        }
    }

    uint64_t local_bytes = 0;
    Status result;
    if (s.cancelled) {
        for (auto& p : s.peers) s.set_session(p, nullptr);  // aborted: the next read reconnects
        result = Status(ECANCELED, "'" + path + "': fetch cancelled");
    } else if (!queue.empty()) {
        std::string why;
        for (size_t i = 0; i < s.peers.size(); ++i)
            why += " [" + s.peers[i].name + ": " +
                   (s.peers[i].dead() ? s.peers[i].error : refused[i]) + "]";
        if (local_path.empty()) {
            // Every seeder said no the same way (ENOENT, EXDEV, ESTALE...): that is the error.
            int code = refused_code.front();
            for (int c : refused_code) code = c == code ? code : 0;
            result = Status(code ? code : EHOSTUNREACH,
                            "'" + path + "': every seeder failed and there is no local copy:" + why);
        } else {
            log::write(log::Level::kWarn, "fetch: reading the rest of '" + path + "' from " +
                                              local_path + ":" + why);
            Engine* engine = s.o.engine;
            if (!engine) {
                if (!s.own_engine) {
                    auto e = Engine::create();
                    if (!e) return e.status();
                    s.own_engine = std::move(e.value());
                }
                engine = s.own_engine.get();
            }
            std::vector<ReadExtent> local;
            for (const auto& pc : queue) {
                ReadExtent e;
                e.path = local_path;
                e.offset = pc.offset;
                e.length = pc.length;
                e.dst = pc.dst;
                local.push_back(e);
                local_bytes += pc.length;
            }
            result = engine->read_sync(local);
            if (!result)
                result = Status(result.code(), "every seeder failed (" + why.substr(1) +
                                                   ") and the local copy too: " + result.message());
        }
    }
    if (report) {
        report->sources.clear();
        report->bytes = 0;
        for (size_t i = 0; i < s.peers.size(); ++i) {
            FetchReport::Source src;
            src.name = s.peers[i].name;
            src.transport = s.peers[i].transport;
            src.bytes = delivered[i];
            src.error = s.peers[i].dead() ? s.peers[i].error : refused[i];
            report->bytes += src.bytes;
            report->sources.push_back(std::move(src));
        }
        if (local_bytes) {
            report->sources.push_back({"local:" + local_path, "local",
                                       result ? local_bytes : 0, result ? "" : result.message()});
            if (result) report->bytes += local_bytes;
        }
        report->seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return result;
}

void Fetcher::cancel() {
    State& s = *state_;
    std::lock_guard<std::mutex> lock(s.sessions_mu);
    s.cancelled = true;
    for (auto& p : s.peers)
        if (p.session) p.session->abort();
}

}  // namespace chainio::peer
