// Session set-up: the TCP connection, the hello (version, session token, each side's MAC/IP/UDP
// port/queue/MTU), and the choice of transport. AF_XDP needs both sides to have attached our XDP
// program and bound an AF_XDP socket; otherwise the session runs on TCP and says why.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "log.h"
#include "net/control.h"
#include "net/transports.h"
#include "net/xdp_port.h"

namespace chainio::net {

Result<TransportKind> parse_transport(const std::string& name) {
    if (name == "auto" || name.empty()) return TransportKind::kAuto;
    if (name == "xdp" || name == "af_xdp") return TransportKind::kXdp;
    if (name == "tcp") return TransportKind::kTcp;
    return Status(EINVAL, "unknown transport '" + name + "' (auto, xdp or tcp)");
}

const char* transport_name(TransportKind kind) {
    switch (kind) {
    case TransportKind::kAuto: return "auto";
    case TransportKind::kXdp: return "xdp";
    case TransportKind::kTcp: return "tcp";
    }
    return "?";
}

Session::~Session() = default;

namespace {

// The transport asked for, after CHAINIO_TRANSPORT; `why` says why TCP was forced.
TransportKind wanted(const NetOptions& o, std::string* why) {
    if (o.transport != TransportKind::kAuto) {
        if (o.transport == TransportKind::kTcp) *why = "TCP requested by the caller";
        return o.transport;
    }
    const char* env = std::getenv("CHAINIO_TRANSPORT");
    if (env && *env) {
        auto k = parse_transport(env);
        if (k && k.value() == TransportKind::kTcp) {
            *why = "CHAINIO_TRANSPORT=tcp";
            return TransportKind::kTcp;
        }
        if (k) return k.value();
        log::once(log::Level::kWarn, "bad-transport-env",
                  std::string("ignoring CHAINIO_TRANSPORT=") + env + ": " + k.status().message());
    }
    return TransportKind::kAuto;
}

struct Side {
    std::unique_ptr<XdpPort> port;
    LocalInterface itf;
    uint16_t udp_port = 0;
    std::string why;  // why not AF_XDP
};

// Tries to bring AF_XDP up on the interface holding the connection's local address.
Side prepare_xdp(int fd, const NetOptions& o, TransportKind kind) {
    Side side;
    if (kind == TransportKind::kTcp) return side;
    uint32_t lip = 0, pip = 0;
    uint16_t lport = 0, pport = 0;
    if (Status s = socket_addresses(fd, &lip, &lport, &pip, &pport); !s) {
        side.why = s.to_string();
        return side;
    }
    auto itf = find_interface(lip, o.ifname);
    if (!itf) {
        side.why = "AF_XDP: " + itf.status().to_string();
        return side;
    }
    side.itf = itf.value();
    side.udp_port = lport;
    const bool sg = xdp_needs_sg(side.itf.mtu);
    if (xdp_payload_for_mtu(side.itf.mtu, sg) < 64) {
        side.why = "AF_XDP: MTU " + std::to_string(side.itf.mtu) + " of " + side.itf.name +
                   " leaves no room for frames";
        return side;
    }
    auto port = XdpPort::open(side.itf, o.queue, lport, o.umem_bytes, sg, o.send_arena_bytes);
    if (!port) {
        side.why = "AF_XDP unavailable: " + port.status().to_string();
        return side;
    }
    side.port = std::move(port.value());
    return side;
}

nlohmann::json hello_of(const Side& s, const std::string& transport) {
    nlohmann::json j = {{"version", wire::kVersion}, {"transport", transport}, {"reason", s.why}};
    if (s.port) {
        j["mac"] = mac_to_string(s.itf.mac);
        j["ip"] = ip_to_string(s.itf.ip);
        j["udp_port"] = s.udp_port;
        j["mtu"] = s.itf.mtu;
        j["rx_frames"] = s.port->rx_frames();
        j["payload_max"] = xdp_payload_for_mtu(s.itf.mtu, s.port->sg());
    }
    return j;
}

Result<nlohmann::json> parse_hello(const Message& m) {
    if (static_cast<wire::Msg>(m.header.type) == wire::Msg::kError)
        return Status(m.header.b ? static_cast<int>(m.header.b) : EPROTO,
                      "the peer refused the session: " + std::string(m.body.begin(), m.body.end()));
    if (static_cast<wire::Msg>(m.header.type) != wire::Msg::kHello)
        return Status(EPROTO, "expected a ChainIO hello, got message type " +
                                  std::to_string(m.header.type));
    try {
        auto j = nlohmann::json::parse(m.body.begin(), m.body.end());
        if (j.at("version").get<uint32_t>() != wire::kVersion)
            return Status(EPROTO, "peer speaks protocol version " +
                                      std::to_string(j.at("version").get<uint32_t>()) +
                                      ", this build " + std::to_string(wire::kVersion));
        return j;
    } catch (const std::exception& e) {
        return Status(EPROTO, std::string("malformed hello: ") + e.what());
    }
}

Result<XdpPeering> peering_of(const Side& self, const nlohmann::json& peer) {
    XdpPeering p;
    std::memcpy(p.self.mac, self.itf.mac, 6);
    p.self.ip = self.itf.ip;
    p.self.port = self.udp_port;
    try {
        if (!mac_from_string(peer.at("mac").get<std::string>(), p.peer.mac))
            return Status(EPROTO, "bad MAC in the peer's hello");
        if (inet_pton(AF_INET, peer.at("ip").get<std::string>().c_str(), &p.peer.ip) != 1)
            return Status(EPROTO, "bad IP in the peer's hello");
        p.peer.port = peer.at("udp_port").get<uint16_t>();
        p.peer_rx_frames = peer.at("rx_frames").get<uint32_t>();
        p.payload = std::min(xdp_payload_for_mtu(self.itf.mtu, self.port->sg()),
                             peer.at("payload_max").get<uint32_t>());
    } catch (const std::exception& e) {
        return Status(EPROTO, std::string("malformed hello: ") + e.what());
    }
    return p;
}

// Compares without an early exit, so timing does not tell how much of a guess was right.
bool same_secret(const std::string& a, const std::string& b) {
    unsigned char diff = a.size() != b.size();
    for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % (b.size() ? b.size() : 1)];
    return b.size() && diff == 0;
}

void note_fallback(const std::string& why) {
    log::once(log::Level::kInfo, "net-fallback:" + why, "peer transfers use TCP: " + why);
}

}  // namespace

Result<std::unique_ptr<Session>> Session::connect(const std::string& ip, uint16_t port,
                                                  const NetOptions& o) {
    std::string forced;
    const TransportKind kind = wanted(o, &forced);
    auto fd = tcp_connect(ip, port, o.timeout_ms);
    if (!fd) return fd.status();
    const int cfd = fd.value();
    Side side = prepare_xdp(cfd, o, kind);
    if (kind == TransportKind::kTcp) side.why = forced;
    if (kind == TransportKind::kXdp && !side.port) {
        ::close(cfd);
        return Status(EOPNOTSUPP, side.why);
    }
    auto fail = [&](Status s) -> Result<std::unique_ptr<Session>> {
        ::close(cfd);
        return s;
    };
    auto hello = hello_of(side, side.port ? "xdp" : "tcp");
    if (!o.auth.empty()) hello["auth"] = o.auth;
    if (Status s = send_message(cfd, wire::Msg::kHello, 0, 0, hello.dump(), o.timeout_ms); !s)
        return fail(s);
    auto reply = recv_message(cfd, o.timeout_ms);
    if (!reply) return fail(reply.status());
    auto j = parse_hello(reply.value());
    if (!j) return fail(j.status());
    uint64_t token = 0;
    std::string transport;
    try {
        token = j.value().at("token").get<uint64_t>();
        transport = j.value().at("transport").get<std::string>();
    } catch (const std::exception& e) {
        return fail(Status(EPROTO, std::string("malformed hello: ") + e.what()));
    }
    if (transport == "xdp" && side.port) {
        auto peering = peering_of(side, j.value());
        if (!peering) return fail(peering.status());
        return make_xdp_session(cfd, token, o, std::move(side.port), peering.value());
    }
    std::string why = side.port ? "the peer cannot run AF_XDP: " +
                                      j.value().value("reason", std::string("(no reason given)"))
                                : side.why;
    if (kind == TransportKind::kXdp) return fail(Status(EOPNOTSUPP, why));
    side.port.reset();
    note_fallback(why);
    return make_tcp_session(cfd, token, o, why);
}

Result<std::unique_ptr<Listener>> Listener::create(const std::string& ip, uint16_t port,
                                                   const NetOptions& options) {
    sockaddr_in sa;
    auto sock = tcp_socket(ip, port, &sa);
    if (!sock) return sock.status();
    const int fd = sock.value();
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(fd, 64) != 0) {
        Status s = Status::from_errno("listen on " + ip + ":" + std::to_string(port));
        ::close(fd);
        return s;
    }
    socklen_t len = sizeof(sa);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    return std::unique_ptr<Listener>(new Listener(fd, ntohs(sa.sin_port), options));
}

Listener::~Listener() {
    if (fd_ >= 0) ::close(fd_);
}

Result<std::unique_ptr<Session>> Listener::accept(uint32_t timeout_ms) {
    auto c = accept_connection(timeout_ms);
    if (!c) return c.status();
    return handshake(c.value());
}

Result<int> Listener::accept_connection(uint32_t timeout_ms) {
    const int64_t deadline = now_ns() + int64_t(timeout_ms) * 1'000'000;
    int cfd = -1;
    for (;;) {
        cfd = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (cfd >= 0) break;
        if (errno != EAGAIN && errno != EINTR) return Status::from_errno("accept");
        const int64_t left = deadline - now_ns();
        if (left <= 0)
            return Status(ETIMEDOUT, "no peer connected to port " + std::to_string(port_) +
                                         " within " + std::to_string(timeout_ms) + " ms");
        pollfd p{fd_, POLLIN, 0};
        poll(&p, 1, static_cast<int>(std::min<int64_t>((left + 999'999) / 1'000'000, 100)));
    }
    const int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return cfd;
}

Result<std::unique_ptr<Session>> Listener::handshake(int cfd) {
    auto fail = [&](Status s) -> Result<std::unique_ptr<Session>> {
        ::close(cfd);
        return s;
    };
    auto hello = recv_message(cfd, options_.timeout_ms);
    if (!hello) return fail(hello.status());
    auto j = parse_hello(hello.value());
    if (!j) {
        (void)send_message(cfd, wire::Msg::kError, 0, EPROTO, j.status().message(), 200);
        return fail(j.status());
    }
    const auto auth = j.value().find("auth");
    const std::string presented =
        auth != j.value().end() && auth->is_string() ? auth->get<std::string>() : std::string();
    if (!options_.auth.empty() && !same_secret(presented, options_.auth)) {
        const std::string why = j.value().contains("auth") ? "wrong token" : "no token";
        (void)send_message(cfd, wire::Msg::kError, 0, EACCES,
                           why + " in the hello: this peer requires the shared token", 200);
        return fail(Status(EACCES, "refused a peer: " + why + " in its hello"));
    }
    // An authenticated peer: its transport is set up one at a time (ports, XDP programs).
    std::lock_guard<std::mutex> setup(setup_mu_);
    std::string forced;
    const TransportKind kind = wanted(options_, &forced);
    const bool peer_xdp = j.value().value("transport", std::string()) == "xdp";
    Side side;
    if (peer_xdp) side = prepare_xdp(cfd, options_, kind);
    if (kind == TransportKind::kTcp) side.why = forced;
    if (!peer_xdp) {
        side.why = "the peer cannot run AF_XDP: " +
                   j.value().value("reason", std::string("(no reason given)"));
    }
    if (kind == TransportKind::kXdp && !side.port) {
        (void)send_message(cfd, wire::Msg::kError, 0, EOPNOTSUPP,
                           "this side requires AF_XDP: " + side.why, 200);
        return fail(Status(EOPNOTSUPP, side.why));
    }
    const uint64_t token = random_token();
    auto reply = hello_of(side, side.port ? "xdp" : "tcp");
    reply["token"] = token;
    if (Status s = send_message(cfd, wire::Msg::kHello, 0, 0, reply.dump(), options_.timeout_ms); !s)
        return fail(s);
    if (side.port) {
        auto peering = peering_of(side, j.value());
        if (!peering) return fail(peering.status());
        return make_xdp_session(cfd, token, options_, std::move(side.port), peering.value());
    }
    note_fallback(side.why);
    return make_tcp_session(cfd, token, options_, side.why);
}

}  // namespace chainio::net
