// Sessions end to end inside one test process, so that ASan/UBSan see the transports' memory
// handling: TCP on loopback, and AF_XDP between two network namespaces (one thread in each).
// The Python suite tests/net covers impairments, failures and the process-level behaviour.
#include <gtest/gtest.h>
#include <sched.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "chainio/net.h"

namespace chainio::net {
namespace {

std::vector<std::vector<uint8_t>> make_objects(const std::vector<size_t>& sizes, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<std::vector<uint8_t>> out;
    for (size_t n : sizes) {
        std::vector<uint8_t> v(n);
        for (auto& b : v) b = static_cast<uint8_t>(rng());
        out.push_back(std::move(v));
    }
    return out;
}

// Runs one send() from `client` and one recv() on `server`; returns what arrived.
struct Exchange {
    Status sent, received;
    std::vector<std::vector<uint8_t>> got;
};

Exchange exchange(Session& client, Session& server, const std::vector<std::vector<uint8_t>>& objs) {
    Exchange ex;
    std::thread rx([&] {
        ex.received = server.recv([&](size_t, size_t size) -> void* {
            ex.got.emplace_back(size);
            return ex.got.back().data();
        });
    });
    std::vector<Span> spans;
    for (const auto& o : objs) spans.push_back({const_cast<uint8_t*>(o.data()), o.size()});
    ex.sent = client.send(spans);
    rx.join();
    return ex;
}

// A connected pair of sessions on 127.0.0.1 with options `o`.
void loopback_pair(const NetOptions& o, std::unique_ptr<Session>* client,
                   std::unique_ptr<Session>* server) {
    auto l = Listener::create("127.0.0.1", 0, o);
    ASSERT_TRUE(l) << l.status().to_string();
    Result<std::unique_ptr<Session>> accepted = Status(EINVAL, "unset");
    std::thread acc([&] { accepted = l.value()->accept(5000); });
    auto connected = Session::connect("127.0.0.1", l.value()->port(), o);
    acc.join();
    ASSERT_TRUE(connected) << connected.status().to_string();
    ASSERT_TRUE(accepted) << accepted.status().to_string();
    *client = std::move(connected.value());
    *server = std::move(accepted.value());
}

TEST(NetSessionTcp, ObjectsArriveIntactOnLoopback) {
    NetOptions o;
    o.transport = TransportKind::kTcp;
    o.timeout_ms = 5000;
    std::unique_ptr<Session> client, server;
    ASSERT_NO_FATAL_FAILURE(loopback_pair(o, &client, &server));
    EXPECT_EQ(client->kind(), TransportKind::kTcp);
    EXPECT_NE(client->fallback_reason().find("TCP requested"), std::string::npos);
    const auto objs = make_objects({0, 1, 4095, 3u << 20, 77}, 1);
    for (int round = 0; round < 2; ++round) {
        auto ex = exchange(*client, *server, objs);
        ASSERT_TRUE(ex.sent) << ex.sent.to_string();
        ASSERT_TRUE(ex.received) << ex.received.to_string();
        ASSERT_EQ(ex.got, objs);
    }
    EXPECT_EQ(client->stats().bytes_sent, 2 * (1 + 4095 + (3u << 20) + 77));
}

TEST(NetSessionTcp, RefusedDestinationFailsBothSides) {
    NetOptions o;
    o.transport = TransportKind::kTcp;
    o.timeout_ms = 3000;
    std::unique_ptr<Session> client, server;
    ASSERT_NO_FATAL_FAILURE(loopback_pair(o, &client, &server));
    const auto objs = make_objects({1000}, 2);
    Status received;
    std::thread rx([&] { received = server->recv([](size_t, size_t) { return nullptr; }); });
    const Span span{const_cast<uint8_t*>(objs[0].data()), objs[0].size()};
    const Status sent = client->send(std::span<const Span>(&span, 1));
    rx.join();
    EXPECT_EQ(received.code(), -ENOMEM) << received.to_string();
    EXPECT_EQ(sent.code(), -ENOMEM) << sent.to_string();
}

TEST(NetSessionTcp, ClosedPeerIsAnErrorNotAHang) {
    NetOptions o;
    o.transport = TransportKind::kTcp;
    o.timeout_ms = 3000;
    std::unique_ptr<Session> client, server;
    ASSERT_NO_FATAL_FAILURE(loopback_pair(o, &client, &server));
    client.reset();  // gone without a word
    const Status st = server->recv([](size_t, size_t) -> void* { return nullptr; });
    EXPECT_EQ(st.code(), -ECONNRESET) << st.to_string();
}

// ---- AF_XDP between two namespaces

int sh(const std::string& cmd) {
    const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class NetSessionXdp : public ::testing::TestWithParam<int> {
protected:
    void SetUp() override {
        if (geteuid() != 0) GTEST_SKIP() << "AF_XDP and namespaces need root";
        if (sh("command -v ip") != 0) GTEST_SKIP() << "iproute2 missing";
        const std::string id = std::to_string(getpid());
        a_ = "chio-ut-" + id + "-a";
        b_ = "chio-ut-" + id + "-b";
        const std::string mtu = std::to_string(GetParam());
        ASSERT_EQ(sh("ip netns add " + a_), 0);
        ASSERT_EQ(sh("ip netns add " + b_), 0);
        ASSERT_EQ(sh("ip link add chu0 netns " + a_ + " type veth peer name chu1 netns " + b_), 0);
        ASSERT_EQ(sh("ip -n " + a_ + " addr add 10.79.0.1/24 dev chu0"), 0);
        ASSERT_EQ(sh("ip -n " + b_ + " addr add 10.79.0.2/24 dev chu1"), 0);
        ASSERT_EQ(sh("ip -n " + a_ + " link set chu0 mtu " + mtu + " up"), 0);
        ASSERT_EQ(sh("ip -n " + b_ + " link set chu1 mtu " + mtu + " up"), 0);
    }
    void TearDown() override {
        if (!a_.empty()) sh("ip netns del " + a_);
        if (!b_.empty()) sh("ip netns del " + b_);
    }
    // Moves the calling thread into namespace `name`.
    static bool enter(const std::string& name) {
        const int fd = open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return false;
        const bool ok = setns(fd, CLONE_NEWNET) == 0;
        close(fd);
        return ok;
    }
    std::string a_, b_;
};

TEST_P(NetSessionXdp, ObjectsArriveIntactOverAfXdp) {
    NetOptions o;
    o.transport = TransportKind::kXdp;
    o.timeout_ms = 5000;
    o.send_arena_bytes = 4u << 20;
    const auto objs = make_objects({0, 1, 3839, 3840, 4096, 1u << 20, 12345}, 3);
    size_t arena_bytes = 0;
    uint64_t zero_copy_frames = 0;
    Status sent, received, setup;
    std::vector<std::vector<uint8_t>> got;
    std::string kind;
    std::thread server([&] {
        if (!enter(a_)) {
            setup = Status(errno, "setns a");
            return;
        }
        auto l = Listener::create("10.79.0.1", 7400, o);
        if (!l) {
            setup = l.status();
            return;
        }
        auto s = l.value()->accept(10000);
        if (!s) {
            setup = s.status();
            return;
        }
        for (int round = 0; round < 2 && received.is_ok(); ++round) {
            got.clear();
            received = s.value()->recv([&](size_t, size_t n) -> void* {
                got.emplace_back(n);
                return got.back().data();
            });
        }
    });
    std::thread client([&] {
        if (!enter(b_)) {
            sent = Status(errno, "setns b");
            return;
        }
        Result<std::unique_ptr<Session>> c = Status(EINVAL, "unset");
        for (int i = 0; i < 50; ++i) {  // until the listener is up
            c = Session::connect("10.79.0.1", 7400, o);
            if (c || c.status().code() != -ECONNREFUSED) break;
            usleep(20000);
        }
        if (!c) {
            sent = c.status();
            return;
        }
        kind = transport_name(c.value()->kind());
        std::vector<Span> spans;
        for (const auto& v : objs) spans.push_back({const_cast<uint8_t*>(v.data()), v.size()});
        sent = c.value()->send(spans);
        // Round 2 from the send arena when the session has one (MTU 9000: SG frames), each
        // object at an odd offset so that payload descriptors split at chunk boundaries.
        arena_bytes = c.value()->send_arena().size();
        if (arena_bytes && sent.is_ok()) {
            std::byte* at = c.value()->send_arena().data() + 77;
            for (size_t i = 0; i < objs.size(); ++i) {
                if (!objs[i].empty()) std::memcpy(at, objs[i].data(), objs[i].size());
                spans[i].data = at;
                at += objs[i].size() + 1001;
            }
        }
        if (sent.is_ok()) sent = c.value()->send(spans);
        zero_copy_frames = c.value()->stats().frames_zero_copy;
    });
    client.join();
    server.join();
    ASSERT_TRUE(setup) << setup.to_string();
    ASSERT_TRUE(sent) << sent.to_string();
    ASSERT_TRUE(received) << received.to_string();
    EXPECT_EQ(kind, "xdp");
    EXPECT_EQ(got, objs);
    if (GetParam() > 3800) {  // multi-buffer frames: payloads go out from the arena as they are
        EXPECT_EQ(arena_bytes, 4u << 20);
        EXPECT_GE(zero_copy_frames, (1u << 20) / 8928);
    } else {  // one chunk per frame: headers and payload must be contiguous, so no arena
        EXPECT_EQ(arena_bytes, 0u);
        EXPECT_EQ(zero_copy_frames, 0u);
    }
}

INSTANTIATE_TEST_SUITE_P(Mtu, NetSessionXdp, ::testing::Values(1500, 9000),
                         [](const auto& info) { return "mtu" + std::to_string(info.param); });

}  // namespace
}  // namespace chainio::net
