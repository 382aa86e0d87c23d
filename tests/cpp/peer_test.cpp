// Seeder and Fetcher in one process over TCP on loopback (so that ASan/UBSan see them): path
// confinement, the token, striping, failover to other seeders and to the local copy, stale
// files. tests/net runs the same across network namespaces, on AF_XDP too, and kills peers.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>
#include <string>
#include <vector>

#include "chainio/peer.h"
#include "peer/protocol.h"
#include "test_util.h"

namespace chainio::peer {
namespace {

using chainio::testing::pattern;
using chainio::testing::TempDir;
using chainio::testing::write_file;

SeederOptions seeder_options(const std::string& root, const std::string& token = "secret") {
    SeederOptions o;
    o.root = root;
    o.ip = "127.0.0.1";
    o.net.transport = net::TransportKind::kTcp;
    o.net.auth = token;
    o.net.timeout_ms = 2000;
    o.chunk_bytes = 256u << 10;
    o.max_sessions = 4;
    return o;
}

FetchOptions fetch_options(const std::string& token = "secret") {
    FetchOptions o;
    o.net.transport = net::TransportKind::kTcp;
    o.net.auth = token;
    o.net.timeout_ms = 2000;
    o.piece_bytes = 1u << 20;
    return o;
}

std::string addr(const Seeder& s) { return "127.0.0.1:" + std::to_string(s.port()); }

class PeerTest : public ::testing::Test {
protected:
    void SetUp() override {
        data_ = pattern(5 * (1u << 20) + 12345, 7);  // several pieces, an unaligned tail
        ASSERT_EQ(mkdir(dir_.file("root").c_str(), 0755), 0);
        ASSERT_EQ(mkdir(dir_.file("root/m").c_str(), 0755), 0);
        write_file(dir_.file("root/m/w.bin"), data_);
        write_file(dir_.file("outside.bin"), pattern(100, 1));
    }
    std::string root() const { return dir_.file("root"); }

    // Fetches [off, off+len) of m/w.bin; the report goes to report_.
    Status fetch(Fetcher& f, uint64_t off, uint64_t len, std::vector<uint8_t>* out,
                 const std::string& local = "") {
        out->assign(len, 0);
        auto info = f.stat("m/w.bin");
        if (!info) {
            Fetcher::FileInfo guess;
            guess.size = data_.size();
            return f.read("m/w.bin", guess, {{off, len, out->data()}}, local, &report_);
        }
        EXPECT_EQ(info.value().size, data_.size());
        return f.read("m/w.bin", info.value(), {{off, len, out->data()}}, local, &report_);
    }
    bool matches(const std::vector<uint8_t>& got, uint64_t off) const {
        return std::memcmp(got.data(), data_.data() + off, got.size()) == 0;
    }

    TempDir dir_;
    std::vector<uint8_t> data_;
    FetchReport report_;
};

TEST_F(PeerTest, ReadsWholeFileAndRanges) {
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s) << s.status().to_string();
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, data_.size(), &got).is_ok());
    EXPECT_TRUE(matches(got, 0));
    EXPECT_EQ(report_.bytes, data_.size());
    ASSERT_EQ(report_.sources.size(), 1u);
    EXPECT_EQ(report_.sources[0].transport, "tcp");
    // An odd range inside, then the last byte.
    ASSERT_TRUE(fetch(*f.value(), 4093, 3 * (1u << 20) + 17, &got).is_ok());
    EXPECT_TRUE(matches(got, 4093));
    ASSERT_TRUE(fetch(*f.value(), data_.size() - 1, 1, &got).is_ok());
    EXPECT_TRUE(matches(got, data_.size() - 1));
    // Past the end: refused before anything is sent.
    EXPECT_EQ(fetch(*f.value(), data_.size() - 1, 2, &got).code(), -EINVAL);
    auto listing = f.value()->list("m");
    ASSERT_TRUE(listing);
    ASSERT_EQ(listing.value().size(), 1u);
    EXPECT_EQ(listing.value()[0].first, "w.bin");
    EXPECT_EQ(listing.value()[0].second, data_.size());
    EXPECT_GE(s.value()->stats().bytes_served, data_.size());
}

TEST_F(PeerTest, RefusesPathsOutsideTheRootAndSpecialFiles) {
    ASSERT_EQ(symlink(dir_.file("outside.bin").c_str(), dir_.file("root/m/out").c_str()), 0);
    ASSERT_EQ(symlink("w.bin", dir_.file("root/m/in").c_str()), 0);  // stays inside: allowed
    ASSERT_EQ(mkfifo(dir_.file("root/m/fifo").c_str(), 0644), 0);
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s);
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    for (const char* bad : {"../outside.bin", "m/../../outside.bin", "m/out"}) {
        auto r = f.value()->stat(bad);
        ASSERT_FALSE(r) << bad;
        EXPECT_EQ(r.status().code(), -EXDEV) << bad;
        EXPECT_NE(r.status().message().find("leaves the served directory"), std::string::npos);
    }
    auto abs = f.value()->stat(dir_.file("outside.bin"));
    EXPECT_EQ(abs.status().code(), -EXDEV);
    // A FIFO must not block the seeder (no writer ever comes) and is refused.
    EXPECT_EQ(f.value()->stat("m/fifo").status().code(), -EINVAL);
    EXPECT_EQ(f.value()->stat("m").status().code(), -EINVAL);  // a directory is not a file
    EXPECT_EQ(f.value()->stat("m/none").status().code(), -ENOENT);
    auto in = f.value()->stat("m/in");
    ASSERT_TRUE(in);
    EXPECT_EQ(in.value().size, data_.size());
    // The session survived every refusal.
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, 4096, &got).is_ok());
    EXPECT_EQ(s.value()->stats().requests_failed, 7u);  // every refusal above
}

TEST_F(PeerTest, TokenIsRequiredAndChecked) {
    EXPECT_EQ(Seeder::start(seeder_options(root(), "")).status().code(), -EINVAL);
    EXPECT_EQ(Seeder::start(seeder_options(root(), std::string(proto::kMaxToken + 1, 't')))
                  .status().code(), -EINVAL);
    EXPECT_EQ(Fetcher::create({"127.0.0.1:1"}, fetch_options(std::string(proto::kMaxToken + 1, 't')))
                  .status().code(), -EINVAL);
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s);
    for (const char* token : {"wrong", "secre", "secrett", ""}) {
        auto f = Fetcher::create({addr(*s.value())}, fetch_options(token));
        ASSERT_TRUE(f);
        auto r = f.value()->stat("m/w.bin");
        ASSERT_FALSE(r) << token;
        EXPECT_EQ(r.status().code(), -EACCES) << token << ": " << r.status().to_string();
    }
    // The seeder counts a refusal after it has answered: wait (bounded) for the last one.
    for (int i = 0; i < 200 && s.value()->stats().refused < 4; ++i) usleep(5000);
    EXPECT_EQ(s.value()->stats().refused, 4u);
    EXPECT_EQ(s.value()->stats().sessions, 0u);
}

TEST_F(PeerTest, StripesAcrossSeeders) {
    auto a = Seeder::start(seeder_options(root()));
    auto b = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(a && b);
    auto f = Fetcher::create({addr(*a.value()), addr(*b.value())}, fetch_options());
    ASSERT_TRUE(f);
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, data_.size(), &got).is_ok());
    EXPECT_TRUE(matches(got, 0));
    ASSERT_EQ(report_.sources.size(), 2u);
    EXPECT_EQ(report_.sources[0].bytes + report_.sources[1].bytes, data_.size());
    // Six pieces for two seeders each taking the next free one: both get work.
    EXPECT_GT(a.value()->stats().bytes_served, 0u);
    EXPECT_GT(b.value()->stats().bytes_served, 0u);
}

TEST_F(PeerTest, FailsOverToOtherSeedersThenToTheLocalCopy) {
    auto good = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(good);
    // A seeder whose root lacks the file sits the call out; a dead address is dropped.
    TempDir empty;
    auto lacking = Seeder::start(seeder_options(empty.path()));
    ASSERT_TRUE(lacking);
    auto f = Fetcher::create({"127.0.0.1:1", addr(*lacking.value()), addr(*good.value())},
                             fetch_options());
    ASSERT_TRUE(f);
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, data_.size(), &got).is_ok());
    EXPECT_TRUE(matches(got, 0));
    ASSERT_EQ(report_.sources.size(), 3u);
    EXPECT_NE(report_.sources[0].error, "");  // connection refused
    EXPECT_EQ(report_.sources[2].bytes, data_.size());

    // The good seeder goes away between calls: the local copy serves everything.
    good.value()->stop();
    ASSERT_TRUE(fetch(*f.value(), 0, data_.size(), &got, dir_.file("root/m/w.bin")).is_ok());
    EXPECT_TRUE(matches(got, 0));
    ASSERT_EQ(report_.sources.size(), 4u);
    EXPECT_EQ(report_.sources.back().name, "local:" + dir_.file("root/m/w.bin"));
    EXPECT_EQ(report_.sources.back().bytes, data_.size());

    // No seeder and no local copy: an error naming every seeder, nothing half-reported.
    Status st = fetch(*f.value(), 0, data_.size(), &got);
    EXPECT_EQ(st.code(), -EHOSTUNREACH);
    EXPECT_NE(st.message().find("127.0.0.1:1"), std::string::npos) << st.message();
}

TEST_F(PeerTest, StaleSizeIsRefused) {
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s);
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    Fetcher::FileInfo wrong;
    wrong.size = data_.size() + 1;
    std::vector<uint8_t> got(4096);
    Status st = f.value()->read("m/w.bin", wrong, {{0, 4096, got.data()}});
    EXPECT_EQ(st.code(), -ESTALE);  // every seeder refused the same way
    EXPECT_NE(st.message().find("bytes here, the fetcher expects"), std::string::npos)
        << st.message();
}

TEST_F(PeerTest, AnotherVersionOfTheSameSizeIsRefused) {
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s);
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    auto info = f.value()->stat("m/w.bin");
    ASSERT_TRUE(info);
    ASSERT_NE(info.value().mtime_ns, 0);
    std::vector<uint8_t> got(4096);
    ASSERT_TRUE(f.value()->read("m/w.bin", info.value(), {{0, 4096, got.data()}}).is_ok());
    Fetcher::FileInfo other = info.value();
    other.mtime_ns += 1;  // what a file rewritten in place with the same size looks like
    Status st = f.value()->read("m/w.bin", other, {{0, 4096, got.data()}});
    EXPECT_EQ(st.code(), -ESTALE);
    EXPECT_NE(st.message().find("the fetcher expects the version of"), std::string::npos)
        << st.message();
    other.mtime_ns = 0;  // no version asked: any file of this size
    EXPECT_TRUE(f.value()->read("m/w.bin", other, {{0, 4096, got.data()}}).is_ok());
}

// A connection that never says hello must hold up neither other fetchers nor stop().
TEST_F(PeerTest, SilentConnectionsBlockNobody) {
    SeederOptions so = seeder_options(root());
    so.net.timeout_ms = 5000;
    auto s = Seeder::start(so);
    ASSERT_TRUE(s);
    std::vector<int> silent;
    for (int i = 0; i < 3; ++i) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_GE(fd, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(s.value()->port());
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
        silent.push_back(fd);
    }
    usleep(200'000);  // the seeder has accepted them and waits for their hellos
    const auto t0 = std::chrono::steady_clock::now();
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, 4096, &got).is_ok());
    EXPECT_TRUE(matches(got, 0));
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(waited, std::chrono::milliseconds(2500)) << "served after the silent peers' timeout";
    f.value().reset();
    const auto t1 = std::chrono::steady_clock::now();
    s.value()->stop();  // the silent hellos end now, not after their 5 s
    EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::milliseconds(2000));
    for (int fd : silent) close(fd);
}

// cancel() ends a read that waits on a stalled seeder well before the peer timeout, and the
// next read connects again. The seeder runs in a child process that is stopped (SIGSTOP).
TEST_F(PeerTest, CancelEndsAReadWaitingOnAStalledSeeder) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t child = fork();  // this process has no threads yet
    ASSERT_GE(child, 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(fds[0]);
        auto s = Seeder::start(seeder_options(root()));
        const uint16_t port = s ? s.value()->port() : 0;
        if (write(fds[1], &port, sizeof(port)) != sizeof(port)) _exit(1);
        for (;;) pause();
    }
    struct Reap {  // whatever fails below, the child goes (it holds the test's stdout)
        pid_t pid;
        ~Reap() {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    } reap{child};
    close(fds[1]);
    uint16_t port = 0;
    ASSERT_EQ(read(fds[0], &port, sizeof(port)), ssize_t(sizeof(port)));
    close(fds[0]);
    ASSERT_NE(port, 0);
    FetchOptions fo = fetch_options();
    fo.net.timeout_ms = 10000;
    auto f = Fetcher::create({"127.0.0.1:" + std::to_string(port)}, fo);
    ASSERT_TRUE(f);
    auto info = f.value()->stat("m/w.bin");  // connected
    ASSERT_TRUE(info) << info.status().to_string();
    ASSERT_EQ(kill(child, SIGSTOP), 0);
    std::vector<uint8_t> got(data_.size());
    Status st;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread reader([&] { st = f.value()->read("m/w.bin", info.value(), {{0, got.size(), got.data()}}); });
    usleep(300'000);
    f.value()->cancel();
    reader.join();
    const auto took = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(st.code(), -ECANCELED) << st.to_string();
    EXPECT_LT(took, std::chrono::milliseconds(3000)) << "waited for the peer timeout";
    ASSERT_EQ(kill(child, SIGCONT), 0);
    st = f.value()->read("m/w.bin", info.value(), {{0, got.size(), got.data()}});
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    EXPECT_TRUE(matches(got, 0));
}

TEST_F(PeerTest, StopEndsLiveSessions) {
    auto s = Seeder::start(seeder_options(root()));
    ASSERT_TRUE(s);
    auto f = Fetcher::create({addr(*s.value())}, fetch_options());
    ASSERT_TRUE(f);
    std::vector<uint8_t> got;
    ASSERT_TRUE(fetch(*f.value(), 0, 4096, &got).is_ok());
    EXPECT_EQ(s.value()->stats().active, 1u);
    s.value()->stop();  // must not wait for the idle session's timeout
    EXPECT_EQ(s.value()->stats().active, 0u);
}

}  // namespace
}  // namespace chainio::peer
