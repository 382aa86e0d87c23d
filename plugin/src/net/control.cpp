#include "net/control.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <ctime>

namespace chainio::net {

int64_t now_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

namespace {

// Waits for `events` on fd until `deadline_ns`; 0, -ETIMEDOUT or -errno.
int wait_fd(int fd, short events, int64_t deadline_ns) {
    for (;;) {
        const int64_t left = deadline_ns - now_ns();
        if (left <= 0) return -ETIMEDOUT;
        pollfd p{fd, events, 0};
        const int r = poll(&p, 1, static_cast<int>((left + 999'999) / 1'000'000));
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -errno;
    }
}

Status write_all(int fd, const void* data, size_t n, int64_t deadline_ns) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n) {
        const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= size_t(w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return Status::from_errno("control channel send");
        if (const int r = wait_fd(fd, POLLOUT, deadline_ns); r < 0)
            return Status(r, "control channel send: peer not reading");
    }
    return {};
}

Status read_all(int fd, void* data, size_t n, int64_t deadline_ns) {
    auto* p = static_cast<uint8_t*>(data);
    while (n) {
        const ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= size_t(r);
            continue;
        }
        if (r == 0) return Status(ECONNRESET, "control channel: peer closed the connection");
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return Status::from_errno("control channel recv");
        if (const int w = wait_fd(fd, POLLIN, deadline_ns); w < 0)
            return Status(w, "control channel: no answer from the peer");
    }
    return {};
}

}  // namespace

Result<int> tcp_socket(const std::string& ip, uint16_t port, sockaddr_in* sa) {
    *sa = {};
    sa->sin_family = AF_INET;
    sa->sin_port = htons(port);
    if (inet_pton(AF_INET, ip.c_str(), &sa->sin_addr) != 1)
        return Status(EINVAL, "not an IPv4 address: '" + ip + "'");
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return Status::from_errno("socket");
    return fd;
}

Result<int> tcp_connect(const std::string& ip, uint16_t port, uint32_t timeout_ms) {
    sockaddr_in sa;
    auto sock = tcp_socket(ip, port, &sa);
    if (!sock) return sock.status();
    const int fd = sock.value();
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 && errno != EINPROGRESS) {
        Status st = Status::from_errno("connect to " + ip + ":" + std::to_string(port));
        ::close(fd);
        return st;
    }
    if (const int r = wait_fd(fd, POLLOUT, now_ns() + int64_t(timeout_ms) * 1'000'000); r < 0) {
        ::close(fd);
        return Status(r, "connect to " + ip + ":" + std::to_string(port));
    }
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        ::close(fd);
        return Status(err, "connect to " + ip + ":" + std::to_string(port));
    }
    return fd;
}

Status send_message(int fd, wire::Msg type, uint64_t a, uint64_t b, const std::string& body,
                    uint32_t timeout_ms) {
    const int64_t deadline = now_ns() + int64_t(timeout_ms) * 1'000'000;
    wire::MsgHeader h{static_cast<uint32_t>(type), static_cast<uint32_t>(body.size()), a, b};
    CHAINIO_RETURN_IF_ERROR(write_all(fd, &h, sizeof(h), deadline));
    return write_all(fd, body.data(), body.size(), deadline);
}

Result<Message> recv_message(int fd, uint32_t timeout_ms) {
    const int64_t deadline = now_ns() + int64_t(timeout_ms) * 1'000'000;
    Message m;
    CHAINIO_RETURN_IF_ERROR(read_all(fd, &m.header, sizeof(m.header), deadline));
    if (m.header.len > wire::kMaxControlBody)
        return Status(EPROTO, "control message of " + std::to_string(m.header.len) +
                                  " bytes (limit " + std::to_string(wire::kMaxControlBody) + ")");
    m.body.resize(m.header.len);
    CHAINIO_RETURN_IF_ERROR(read_all(fd, m.body.data(), m.body.size(), deadline));
    return m;
}

Result<LocalInterface> find_interface(uint32_t ip, const std::string& ifname) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) return Status::from_errno("getifaddrs");
    LocalInterface out;
    for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        const uint32_t a = reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr;
        if (ifname.empty() ? a == ip : ifname == i->ifa_name) {
            out.name = i->ifa_name;
            out.ip = a;
            break;
        }
    }
    freeifaddrs(list);
    if (out.name.empty()) {
        return Status(ENODEV, ifname.empty() ? "no interface holds " + ip_to_string(ip)
                                             : "interface '" + ifname + "' has no IPv4 address");
    }
    out.ifindex = if_nametoindex(out.name.c_str());
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::from_errno("socket");
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", out.name.c_str());
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0) std::memcpy(out.mac, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(fd, SIOCGIFMTU, &ifr) == 0) out.mtu = ifr.ifr_mtu;
    ::close(fd);
    return out;
}

std::string mac_to_string(const uint8_t mac[6]) {
    char b[18];
    std::snprintf(b, sizeof(b), "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
                  mac[4], mac[5]);
    return b;
}

bool mac_from_string(const std::string& s, uint8_t mac[6]) {
    unsigned v[6];
    if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        return false;
    for (int i = 0; i < 6; ++i) {
        if (v[i] > 255) return false;
        mac[i] = static_cast<uint8_t>(v[i]);
    }
    return true;
}

Status socket_addresses(int fd, uint32_t* local_ip, uint16_t* local_port, uint32_t* peer_ip,
                        uint16_t* peer_port) {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        return Status::from_errno("getsockname");
    *local_ip = a.sin_addr.s_addr;
    *local_port = ntohs(a.sin_port);
    len = sizeof(a);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        return Status::from_errno("getpeername");
    *peer_ip = a.sin_addr.s_addr;
    *peer_port = ntohs(a.sin_port);
    return {};
}

std::string ip_to_string(uint32_t ip) {
    char b[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &ip, b, sizeof(b));
    return b;
}

uint64_t random_token() {
    uint64_t t = 0;
    while (getrandom(&t, sizeof(t), 0) != sizeof(t)) {
    }
    return t | 1;  // never 0
}

}  // namespace chainio::net
