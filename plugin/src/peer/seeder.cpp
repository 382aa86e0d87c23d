// The seeder: an accept thread plus one thread per fetcher session. A session answers requests
// one at a time; a read streams its chunks with storage and network overlapped (the engine reads
// chunk k+1 into the session's second pool chunk while chunk k is sent).

#include <fcntl.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <dirent.h>
#include <list>
#include <mutex>
#include <thread>

#include "chainio/buffer_pool.h"
#include "chainio/engine.h"
#include "chainio/peer.h"
#include "log.h"
#include "peer/protocol.h"

namespace chainio::peer {

namespace {

using nlohmann::json;

// `rel` opened beneath `root_fd`: no absolute paths, no `..` above the root, no symlink leaving
// it, no /proc magic links. The kernel enforces it at each step of the walk (openat2).
Result<int> open_beneath(int root_fd, const std::string& rel, int flags) {
    if (rel.empty() || rel.find('\0') != std::string::npos)
        return Status(EINVAL, "empty or malformed path");
    open_how how{};
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    const long fd = syscall(SYS_openat2, root_fd, rel.c_str(), &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    const int e = errno;
    if (e == EXDEV || (rel[0] == '/' && e == EINVAL))
        return Status(EXDEV, "'" + rel + "' leaves the served directory (refused)");
    if (e == ELOOP) return Status(ELOOP, "'" + rel + "': too many or forbidden symlinks");
    return Status::from_code(e, "'" + rel + "'");
}

struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

int64_t mtime_ns(const struct stat& st) {
    return int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

}  // namespace

struct Seeder::State {
    SeederOptions o;
    int root_fd = -1;
    std::unique_ptr<net::Listener> listener;  // closed by stop(): new fetchers are refused
    uint16_t port = 0;
    std::unique_ptr<Engine> engine;
    std::unique_ptr<BufferPool> pool;  // 2 chunks per session slot

    std::mutex mu;
    std::condition_variable cv;
    std::vector<unsigned> free_slots;
    struct Running {
        std::thread thread;
        int hello_fd = -1;  ///< a dup of the connection while its hello runs (stop() shuts it)
        net::Session* session = nullptr;
        bool finished = false;
    };
    std::list<Running> running;
    std::atomic<bool> stopping{false};
    std::thread acceptor;

    std::atomic<uint64_t> sessions{0}, active{0}, refused{0}, requests{0}, requests_failed{0},
        bytes_served{0}, bytes_zero_copy{0}, xdp_sessions{0};

    ~State() {
        if (root_fd >= 0) ::close(root_fd);
    }

    void accept_loop();
    void serve(net::Session& s, unsigned slot, const std::string& who);
    // Answers one request; a returned error is the session's (the network), not the request's.
    Status handle(net::Session& s, unsigned slot, const std::vector<uint8_t>& bytes,
                  const std::string& who);
    Status reply(net::Session& s, const json& j);
    Status stream(net::Session& s, unsigned slot, int fd, const proto::Ranges& ranges,
                  uint64_t chunk);
};

Result<std::unique_ptr<Seeder>> Seeder::start(const SeederOptions& options) {
    auto st = std::make_shared<State>();
    st->o = options;
    auto& o = st->o;
    if (o.net.auth.empty())
        return Status(EINVAL, "a seeder needs a token (fetchers must present it in the hello)");
    if (o.net.auth.size() > proto::kMaxToken)
        return Status(EINVAL, "the token is longer than " + std::to_string(proto::kMaxToken) +
                                  " bytes");
    if (o.net.timeout_ms == 0 || o.idle_ms == 0)
        return Status(EINVAL, "timeout_ms and idle_ms must be > 0");
    if (!o.net.ifname.empty() && if_nametoindex(o.net.ifname.c_str()) == 0)
        return Status(ENODEV, "seeder interface '" + o.net.ifname + "'");
    if (o.max_sessions == 0 || o.max_sessions > 1024)
        return Status(EINVAL, "max_sessions must be 1..1024");
    if (o.chunk_bytes < 4096 || o.chunk_bytes % 4096 || o.chunk_bytes > (256u << 20))
        return Status(EINVAL, "chunk_bytes must be a multiple of 4096 up to 256 MiB");
    st->root_fd = ::open(o.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->root_fd < 0) return Status::from_errno("seeder root " + o.root);

    BufferPoolOptions po;
    po.chunk_bytes = o.chunk_bytes;
    po.bytes = size_t(2) * o.max_sessions * o.chunk_bytes;
    auto pool = BufferPool::create(po);
    if (!pool) return pool.status();
    st->pool = std::move(pool.value());
    for (unsigned i = o.max_sessions; i-- > 0;) st->free_slots.push_back(i);

    EngineOptions eo;
    eo.workers = 2;
    eo.io_bytes = std::min<size_t>(o.chunk_bytes, 1u << 20);
    auto engine = Engine::create(eo);
    if (!engine) return engine.status();
    st->engine = std::move(engine.value());

    // AF_XDP sessions get two chunks of UMEM: reads land there and frames point at them.
    net::NetOptions listen = o.net;
    listen.send_arena_bytes = 2 * o.chunk_bytes;
    auto l = net::Listener::create(o.ip, o.port, listen);
    if (!l) return l.status();
    st->listener = std::move(l.value());
    st->port = st->listener->port();
    st->acceptor = std::thread([raw = st.get()] { raw->accept_loop(); });
    log::write(log::Level::kInfo, "seeder: serving " + o.root + " on " + o.ip + ":" +
                                      std::to_string(st->port));
    return std::unique_ptr<Seeder>(new Seeder(std::move(st)));
}

Seeder::~Seeder() { stop(); }

uint16_t Seeder::port() const { return state_->port; }

SeederStats Seeder::stats() const {
    const State& s = *state_;
    SeederStats r;
    r.sessions = s.sessions;
    r.active = s.active;
    r.refused = s.refused;
    r.requests = s.requests;
    r.requests_failed = s.requests_failed;
    r.bytes_served = s.bytes_served;
    r.bytes_zero_copy = s.bytes_zero_copy;
    r.xdp_sessions = s.xdp_sessions;
    return r;
}

void Seeder::stop() {
    State& s = *state_;
    if (s.stopping.exchange(true)) return;
    s.cv.notify_all();
    if (s.acceptor.joinable()) s.acceptor.join();
    std::list<State::Running> done;
    {
        std::lock_guard<std::mutex> lock(s.mu);
        for (auto& r : s.running) {
            if (r.session) r.session->abort();
            if (r.hello_fd >= 0) ::shutdown(r.hello_fd, SHUT_RDWR);  // ends a waiting hello
        }
        done.splice(done.end(), s.running);
    }
    for (auto& r : done)
        if (r.thread.joinable()) r.thread.join();
    s.listener.reset();  // after the threads: their hellos run on it
}

void Seeder::State::accept_loop() {
    while (!stopping) {
        unsigned slot = 0;
        {
            std::unique_lock<std::mutex> lock(mu);
            // Reap finished session threads, then wait for a free slot.
            for (auto it = running.begin(); it != running.end();) {
                if (it->finished) {
                    it->thread.join();
                    it = running.erase(it);
                } else {
                    ++it;
                }
            }
            if (free_slots.empty()) {
                cv.wait_for(lock, std::chrono::milliseconds(100));
                continue;
            }
            slot = free_slots.back();
        }
        auto c = listener->accept_connection(100);
        if (!c) {
            if (c.status().code() != -ETIMEDOUT)
                log::write(log::Level::kWarn, "seeder: " + c.status().to_string());
            continue;
        }
        const int cfd = c.value();
        std::lock_guard<std::mutex> lock(mu);
        // Not pop_back(): a session that ended during accept() may have pushed its slot since.
        free_slots.erase(std::find(free_slots.begin(), free_slots.end(), slot));
        running.emplace_back();
        Running* me = &running.back();
        me->hello_fd = ::dup(cfd);
        // The hello runs on the session's own thread: a connection that never says hello
        // holds its slot for the peer timeout, and no one else.
        me->thread = std::thread([this, me, slot, cfd]() mutable {
            auto r = listener->handshake(cfd);
            std::unique_ptr<net::Session> s;
            {
                std::lock_guard<std::mutex> lock(mu);
                if (me->hello_fd >= 0) ::close(me->hello_fd);
                me->hello_fd = -1;
                if (r && !stopping) {
                    s = std::move(r.value());
                    me->session = s.get();
                }
            }
            if (!r) {
                ++refused;
                if (!stopping) log::write(log::Level::kWarn, "seeder: " + r.status().to_string());
            }
            if (s) {
                ++sessions;
                if (s->kind() == net::TransportKind::kXdp) ++xdp_sessions;
                ++active;
                serve(*s, slot, "session " + std::to_string(slot));
                {
                    // Unregister before closing, so stop() never aborts a destroyed session.
                    std::lock_guard<std::mutex> lock(mu);
                    me->session = nullptr;
                }
                s->close();
                s.reset();
                --active;
            }
            std::lock_guard<std::mutex> lock(mu);
            free_slots.push_back(slot);
            me->finished = true;
            cv.notify_all();
        });
    }
}

void Seeder::State::serve(net::Session& s, unsigned slot, const std::string& who) {
    std::vector<uint8_t> req;
    while (!stopping) {
        s.set_timeout_ms(o.idle_ms);
        Status st = s.recv([&](size_t i, size_t n) -> void* {
            if (i != 0 || n == 0 || n > proto::kMaxMessage) return nullptr;
            req.resize(n);
            return req.data();
        });
        if (!st) {
            if (st.code() != -ECONNRESET && st.code() != -ENOTCONN && !stopping)
                log::write(log::Level::kInfo, "seeder " + who + " ends: " + st.to_string());
            return;
        }
        s.set_timeout_ms(o.net.timeout_ms);
        ++requests;
        if (Status h = handle(s, slot, req, who); !h) {
            if (!stopping) log::write(log::Level::kInfo, "seeder " + who + " ends: " + h.to_string());
            return;
        }
    }
}

Status Seeder::State::reply(net::Session& s, const json& j) {
    const std::string body = j.dump();
    const net::Span span{const_cast<char*>(body.data()), body.size()};
    return s.send({&span, 1});
}

Status Seeder::State::handle(net::Session& s, unsigned slot, const std::vector<uint8_t>& bytes,
                             const std::string& who) {
    auto refuse = [&](const Status& why) {
        ++requests_failed;
        log::write(log::Level::kInfo, "seeder " + who + ": refused: " + why.to_string());
        return reply(s, proto::error_reply(why));
    };
    auto parsed = proto::parse(bytes, "request");
    if (!parsed) return refuse(parsed.status());
    const json& j = parsed.value();
    const auto op_it = j.find("op");
    const auto path_it = j.find("path");
    if (op_it == j.end() || !op_it->is_string() || path_it == j.end() || !path_it->is_string())
        return refuse(Status(EPROTO, "a request needs \"op\" and \"path\" strings"));
    const std::string op = op_it->get<std::string>();
    const std::string path = path_it->get<std::string>();

    if (op == "list") {
        auto fd = open_beneath(root_fd, path, O_RDONLY | O_DIRECTORY);
        if (!fd) return refuse(fd.status());
        DIR* dir = fdopendir(fd.value());
        if (!dir) {
            ::close(fd.value());
            return refuse(Status::from_errno("'" + path + "'"));
        }
        std::vector<std::pair<std::string, uint64_t>> files;
        while (dirent* e = readdir(dir)) {
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            // What a read of this name would open: symlinks that stay inside the root count
            // (a Hugging Face cache snapshot is all symlinks into ../../blobs), others do not.
            auto entry = open_beneath(root_fd, path + "/" + e->d_name,
                                      O_RDONLY | O_NONBLOCK | O_NOCTTY);
            if (!entry) continue;
            struct stat sb;
            if (fstat(entry.value(), &sb) == 0 && S_ISREG(sb.st_mode))
                files.emplace_back(e->d_name, uint64_t(sb.st_size));
            ::close(entry.value());
        }
        closedir(dir);
        std::sort(files.begin(), files.end());
        return reply(s, {{"ok", true}, {"files", files}});
    }
    if (op != "stat" && op != "read") return refuse(Status(EPROTO, "unknown op '" + op + "'"));

    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    auto opened = open_beneath(root_fd, path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (!opened) return refuse(opened.status());
    Fd file(opened.value());
    struct stat sb;
    if (fstat(file.fd, &sb) != 0) return refuse(Status::from_errno("fstat '" + path + "'"));
    if (!S_ISREG(sb.st_mode)) return refuse(Status(EINVAL, "'" + path + "' is not a regular file"));
    (void)fcntl(file.fd, F_SETFL, fcntl(file.fd, F_GETFL) & ~O_NONBLOCK);
    const uint64_t size = uint64_t(sb.st_size);
    if (op == "stat")
        return reply(s, {{"ok", true}, {"size", size}, {"mtime_ns", mtime_ns(sb)}});

    proto::Ranges extents;
    try {
        if (j.at("size").get<uint64_t>() != size)
            return refuse(Status(ESTALE, "'" + path + "' is " + std::to_string(size) +
                                             " bytes here, the fetcher expects " +
                                             std::to_string(j.at("size").get<uint64_t>())));
        // Same size is not same version: a fetcher that names the mtime it stat'ed (on this
        // seeder or another) gets no bytes of a different one.
        if (j.contains("mtime_ns") && j.at("mtime_ns").get<int64_t>() != mtime_ns(sb))
            return refuse(Status(ESTALE, "'" + path + "' here was modified at mtime_ns " +
                                             std::to_string(mtime_ns(sb)) +
                                             ", the fetcher expects the version of " +
                                             std::to_string(j.at("mtime_ns").get<int64_t>())));
        for (const auto& e : j.at("extents")) {
            const uint64_t off = e.at(0).get<uint64_t>(), len = e.at(1).get<uint64_t>();
            if (len == 0 || off > size || len > size - off)
                return refuse(Status(EINVAL, "'" + path + "': extent [" + std::to_string(off) +
                                                 ", +" + std::to_string(len) +
                                                 ") is outside the file (" +
                                                 std::to_string(size) + " bytes)"));
            extents.emplace_back(off, len);
        }
    } catch (const std::exception& e) {
        return refuse(Status(EPROTO, std::string("malformed read request: ") + e.what()));
    }
    if (extents.empty() || extents.size() > proto::kMaxExtents)
        return refuse(Status(EINVAL, "a read needs 1.." + std::to_string(proto::kMaxExtents) +
                                         " extents"));
    const uint64_t chunk = o.chunk_bytes;
    CHAINIO_RETURN_IF_ERROR(reply(s, {{"ok", true}, {"chunk", chunk}}));
    return stream(s, slot, file.fd, proto::chunks(extents, chunk), chunk);
}

Status Seeder::State::stream(net::Session& s, unsigned slot, int fd, const proto::Ranges& ranges,
                             uint64_t chunk) {
    // On AF_XDP with multi-buffer frames the chunks are UMEM (the session's send arena): the
    // O_DIRECT read is the only time the bytes are written before they reach the wire.
    std::byte* buf[2] = {pool->chunk(2 * size_t(slot)), pool->chunk(2 * size_t(slot) + 1)};
    bool zero_copy = false;
    if (auto arena = s.send_arena(); arena.size() >= 2 * chunk) {
        buf[0] = arena.data();
        buf[1] = arena.data() + chunk;
        zero_copy = true;
    }
    auto submit = [&](size_t k) -> Result<ReadHandle> {
        ReadExtent e;
        e.fd = fd;
        e.offset = ranges[k].first;
        e.length = ranges[k].second;
        e.dst = buf[k % 2];
        return engine->read({e});
    };
    auto next = submit(0);
    for (size_t k = 0; k < ranges.size(); ++k) {
        if (!next) return next.status();
        ReadHandle cur = next.value();
        if (Status st = cur.wait(); !st) return st;  // ends the session: the fetcher fails over
        if (k + 1 < ranges.size()) next = submit(k + 1);
        const net::Span span{buf[k % 2], ranges[k].second};
        Status st = s.send({&span, 1});
        if (!st) {
            if (k + 1 < ranges.size() && next) (void)next.value().wait();  // before the buffer goes
            return st;
        }
        bytes_served += ranges[k].second;
        if (zero_copy) bytes_zero_copy += ranges[k].second;
    }
    return {};
}

}  // namespace chainio::peer
