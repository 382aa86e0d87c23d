// Tests for bpf/xdp_steer.bpf.c: the verdict and counter of every parse path, through
// BPF_PROG_TEST_RUN on crafted frames, for both the linear and the multi-buffer program; then
// attach/detach through a bpf_link and live steering into an AF_XDP socket, on a veth pair in
// a private network namespace (nothing outside it is touched).
#include "xdp_steer.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "xdp_steer.skel.h"

namespace {

constexpr uint16_t kPort = 47000;
constexpr uint32_t kSrcAddr = 0x0ac70001;  // 10.199.0.1
constexpr uint32_t kDstAddr = 0x0ac70002;  // 10.199.0.2
constexpr size_t kEthLen = 14;
constexpr size_t kUdpLen = 8;
constexpr uint16_t kEthIpv4 = 0x0800;
constexpr uint16_t kEthIpv6 = 0x86dd;
constexpr uint16_t kEthArp = 0x0806;
constexpr uint16_t kEthVlan = 0x8100;
constexpr uint16_t kEthQinQ = 0x88a8;
constexpr uint16_t kIpMf = 0x2000;
constexpr int kNrCounters = CHAINIO_XDP_NR_COUNTERS;
// UAPI 6.1 predates AF_XDP multi-buffer (6.6).
constexpr uint16_t kXdpUseSg = 1 << 4;
constexpr uint32_t kXdpPktContd = 1 << 0;

using Counters = std::array<uint64_t, kNrCounters>;

void put16(std::vector<uint8_t>& b, size_t off, uint16_t v) {
    b[off] = static_cast<uint8_t>(v >> 8);
    b[off + 1] = static_cast<uint8_t>(v);
}

void put32(std::vector<uint8_t>& b, size_t off, uint32_t v) {
    put16(b, off, static_cast<uint16_t>(v >> 16));
    put16(b, off + 2, static_cast<uint16_t>(v));
}

uint16_t ip_checksum(const uint8_t* p, size_t len) {
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t{p[i]} << 8) | p[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return static_cast<uint16_t>(~sum);
}

// Everything is host order here; the builder writes network order.
struct FrameSpec {
    std::array<uint8_t, 6> dst_mac{0x02, 0, 0, 0, 0, 0x02};
    std::array<uint8_t, 6> src_mac{0x02, 0, 0, 0, 0, 0x01};
    uint16_t eth_proto = kEthIpv4;
    uint8_t version = 4;
    uint8_t ihl = 5;  // written as is; the layout uses max(ihl, 5) words
    uint8_t ip_proto = IPPROTO_UDP;
    uint16_t frag_off = 0;  // flags | fragment offset
    uint32_t daddr = kDstAddr;
    uint16_t dst_port = kPort;
    uint16_t src_port = 40000;
    size_t payload = 32;
    int tot_len_delta = 0;  // added to the true IPv4 total length
    int udp_len_delta = 0;  // added to the true UDP length
    size_t pad_to = 0;      // Ethernet padding after the IP packet
};

std::vector<uint8_t> build_frame(const FrameSpec& s) {
    const size_t ip_hlen = (s.ihl < 5 ? 5 : s.ihl) * 4u;
    const size_t l4_len = kUdpLen + s.payload;
    std::vector<uint8_t> b(kEthLen + ip_hlen + l4_len);
    std::memcpy(&b[0], s.dst_mac.data(), 6);
    std::memcpy(&b[6], s.src_mac.data(), 6);
    put16(b, 12, s.eth_proto);
    uint8_t* ip = &b[kEthLen];
    ip[0] = static_cast<uint8_t>(s.version << 4 | (s.ihl & 0xf));
    put16(b, kEthLen + 2, static_cast<uint16_t>(ip_hlen + l4_len + s.tot_len_delta));
    put16(b, kEthLen + 4, 0x1234);
    put16(b, kEthLen + 6, s.frag_off);
    ip[8] = 64;
    ip[9] = s.ip_proto;
    put32(b, kEthLen + 12, kSrcAddr);
    put32(b, kEthLen + 16, s.daddr);
    std::memset(ip + 20, 1, ip_hlen - 20);  // IPOPT_NOOP
    put16(b, kEthLen + 10, ip_checksum(ip, ip_hlen));
    const size_t l4 = kEthLen + ip_hlen;
    put16(b, l4, s.src_port);
    put16(b, l4 + 2, s.dst_port);
    put16(b, l4 + 4, static_cast<uint16_t>(l4_len + s.udp_len_delta));
    for (size_t i = 0; i < s.payload; ++i) b[l4 + kUdpLen + i] = static_cast<uint8_t>(i * 7);
    if (b.size() < s.pad_to) b.resize(s.pad_to, 0);
    return b;
}

// 802.1Q / 802.1ad tag inserted in front of an otherwise valid IPv4/UDP frame to our port.
std::vector<uint8_t> build_vlan_frame(uint16_t tpid) {
    std::vector<uint8_t> b = build_frame({});
    const uint8_t tag[4] = {static_cast<uint8_t>(tpid >> 8), static_cast<uint8_t>(tpid), 0, 42};
    b.insert(b.begin() + 12, tag, tag + 4);
    return b;
}

std::vector<uint8_t> build_ipv6_udp_frame() {
    std::vector<uint8_t> b(kEthLen + 40 + kUdpLen + 16, 0);
    put16(b, 12, kEthIpv6);
    b[kEthLen] = 0x60;
    put16(b, kEthLen + 4, kUdpLen + 16);
    b[kEthLen + 6] = IPPROTO_UDP;
    b[kEthLen + 7] = 64;
    put16(b, kEthLen + 40 + 2, kPort);
    put16(b, kEthLen + 40 + 4, kUdpLen + 16);
    return b;
}

struct Knobs {
    uint16_t port = kPort;  // host order
    uint32_t daddr = 0;     // host order, 0 = any
    bool count_only = false;
};

struct RunResult {
    int err = 0;
    uint32_t action = 0;
    std::vector<uint8_t> out;
};

class SteerFixture : public ::testing::Test {
  protected:
    void SetUp() override {
        if (geteuid() != 0) GTEST_SKIP() << "loading XDP programs needs root (CAP_BPF+NET_ADMIN)";
        ASSERT_NO_FATAL_FAILURE(load({}));
    }

    void TearDown() override { xdp_steer_bpf__destroy(skel_); }

    void load(const Knobs& k) {
        xdp_steer_bpf__destroy(skel_);
        skel_ = xdp_steer_bpf__open();
        ASSERT_NE(skel_, nullptr) << "open: " << std::strerror(errno);
        skel_->rodata->dst_port = htons(k.port);
        skel_->rodata->dst_ip = htonl(k.daddr);
        skel_->rodata->count_only = k.count_only ? 1 : 0;
        const int err = xdp_steer_bpf__load(skel_);
        ASSERT_EQ(err, 0) << "load: " << std::strerror(-err);
    }

    Counters counters() const {
        const int ncpu = libbpf_num_possible_cpus();
        EXPECT_GT(ncpu, 0);
        std::vector<uint64_t> per_cpu(ncpu > 0 ? ncpu : 1);
        Counters total{};
        for (uint32_t i = 0; i < kNrCounters; ++i) {
            const int err =
                bpf_map__lookup_elem(skel_->maps.steer_stats, &i, sizeof(i), per_cpu.data(),
                                     per_cpu.size() * sizeof(uint64_t), 0);
            EXPECT_EQ(err, 0) << "lookup counter " << i;
            for (uint64_t v : per_cpu) total[i] += v;
        }
        return total;
    }

    static RunResult run(bpf_program* prog, std::span<const uint8_t> frame, xdp_md* ctx = nullptr) {
        RunResult r;
        r.out.resize(frame.size() + 512);
        bpf_test_run_opts opts{};
        opts.sz = sizeof(opts);
        opts.data_in = frame.data();
        opts.data_size_in = static_cast<uint32_t>(frame.size());
        opts.data_out = r.out.data();
        opts.data_size_out = static_cast<uint32_t>(r.out.size());
        opts.ctx_in = ctx;
        opts.ctx_size_in = ctx ? sizeof(*ctx) : 0;
        opts.repeat = 1;
        r.err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts) == 0 ? 0 : -errno;
        r.action = opts.retval;
        r.out.resize(opts.data_size_out);
        return r;
    }

    xdp_steer_bpf* skel_ = nullptr;
};

class SteerProgTest : public SteerFixture, public ::testing::WithParamInterface<bool> {
  protected:
    bpf_program* prog() const {
        return GetParam() ? skel_->progs.chainio_xdp_mb : skel_->progs.chainio_xdp;
    }

    // Runs one frame; expects `action`, the frame unmodified, and exactly one verdict counter
    // (`counter`) to move by one.
    void expect_verdict(const std::vector<uint8_t>& frame, uint32_t action, int counter) {
        const Counters before = counters();
        const RunResult r = run(prog(), frame);
        ASSERT_EQ(r.err, 0) << "BPF_PROG_TEST_RUN: " << std::strerror(-r.err);
        EXPECT_EQ(r.action, action);
        EXPECT_EQ(r.out, frame) << "program modified the frame";
        const Counters after = counters();
        for (int i = 0; i < kNrCounters; ++i) {
            const uint64_t want = before[i] + (i == counter ? 1 : 0);
            EXPECT_EQ(after[i], want)
                << "counter " << i << " (expected only " << counter << " to move)";
        }
    }
};

TEST_P(SteerProgTest, OurPortWithoutSocketPassesAndCountsNoSocket) {
    expect_verdict(build_frame({}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
    expect_verdict(build_frame({.payload = 0}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
    expect_verdict(build_frame({.payload = 1400}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
}

TEST_P(SteerProgTest, OtherUdpPortPasses) {
    expect_verdict(build_frame({.dst_port = kPort + 1}), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_frame({.dst_port = 53}), XDP_PASS, CHAINIO_XDP_PASSED);
    // Source port == our port does not make a frame ours.
    expect_verdict(build_frame({.dst_port = kPort + 1, .src_port = kPort}), XDP_PASS,
                   CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, NonUdpPasses) {
    expect_verdict(build_frame({.ip_proto = IPPROTO_TCP}), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_frame({.ip_proto = IPPROTO_ICMP}), XDP_PASS, CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, Ipv6Passes) {
    expect_verdict(build_ipv6_udp_frame(), XDP_PASS, CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, VlanTaggedPasses) {
    expect_verdict(build_vlan_frame(kEthVlan), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_vlan_frame(kEthQinQ), XDP_PASS, CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, ArpPasses) {
    std::vector<uint8_t> frame = build_frame({.eth_proto = kEthArp});
    frame.resize(42);
    expect_verdict(frame, XDP_PASS, CHAINIO_XDP_PASSED);
}

// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header, so a truncated
// Ethernet header cannot reach the program through it; the shortest accepted frame is a bare
// header announcing IPv4, which is a truncated IPv4 packet.
TEST_P(SteerProgTest, TruncatedEthernetIsRefusedByTestRun) {
    const std::vector<uint8_t> frame = build_frame({});
    for (size_t len : {0, 1, 6, 13}) {
        const RunResult r = run(prog(), std::span(frame).first(len));
        EXPECT_EQ(r.err, -EINVAL) << "len " << len;
    }
    expect_verdict(std::vector<uint8_t>(frame.begin(), frame.begin() + kEthLen), XDP_PASS,
                   CHAINIO_XDP_MALFORMED);
}

TEST_P(SteerProgTest, TruncatedIpv4IsMalformed) {
    const std::vector<uint8_t> frame = build_frame({});
    for (size_t len : {kEthLen + 1, kEthLen + 10, kEthLen + 19}) {
        SCOPED_TRACE(len);
        expect_verdict(std::vector<uint8_t>(frame.begin(), frame.begin() + len), XDP_PASS,
                       CHAINIO_XDP_MALFORMED);
    }
}

TEST_P(SteerProgTest, TruncatedUdpIsMalformed) {
    const std::vector<uint8_t> frame = build_frame({});
    for (size_t len : {kEthLen + 20, kEthLen + 20 + 4, kEthLen + 20 + 7}) {
        SCOPED_TRACE(len);
        expect_verdict(std::vector<uint8_t>(frame.begin(), frame.begin() + len), XDP_PASS,
                       CHAINIO_XDP_MALFORMED);
    }
}

TEST_P(SteerProgTest, Ipv4OptionsAreSkipped) {
    for (uint8_t ihl = 6; ihl <= 15; ++ihl) {
        SCOPED_TRACE(static_cast<int>(ihl));
        expect_verdict(build_frame({.ihl = ihl}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
        expect_verdict(build_frame({.ihl = ihl, .dst_port = kPort + 1}), XDP_PASS,
                       CHAINIO_XDP_PASSED);
    }
}

TEST_P(SteerProgTest, OptionsRunningPastTheFrameAreMalformed) {
    // ihl = 15 announces 60 header bytes; the frame holds 20 + the 8-byte UDP header.
    std::vector<uint8_t> frame = build_frame({.payload = 0});
    frame[kEthLen] = 0x4f;
    expect_verdict(frame, XDP_PASS, CHAINIO_XDP_MALFORMED);
}

TEST_P(SteerProgTest, IhlBelowFiveIsMalformed) {
    for (uint8_t ihl = 0; ihl < 5; ++ihl) {
        SCOPED_TRACE(static_cast<int>(ihl));
        expect_verdict(build_frame({.ihl = ihl}), XDP_PASS, CHAINIO_XDP_MALFORMED);
    }
}

TEST_P(SteerProgTest, WrongIpVersionIsMalformed) {
    expect_verdict(build_frame({.version = 6}), XDP_PASS, CHAINIO_XDP_MALFORMED);
    expect_verdict(build_frame({.version = 0}), XDP_PASS, CHAINIO_XDP_MALFORMED);
}

TEST_P(SteerProgTest, FragmentsPass) {
    expect_verdict(build_frame({.frag_off = kIpMf}), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_frame({.frag_off = 185}), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_frame({.frag_off = kIpMf | 1}), XDP_PASS, CHAINIO_XDP_PASSED);
    expect_verdict(build_frame({.ihl = 7, .frag_off = 0x1fff}), XDP_PASS, CHAINIO_XDP_PASSED);
    // DF alone is not a fragment.
    expect_verdict(build_frame({.frag_off = 0x4000}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
}

TEST_P(SteerProgTest, InconsistentLengthsAreMalformed) {
    // IPv4 total length beyond the frame (truncated payload).
    expect_verdict(build_frame({.tot_len_delta = 1}), XDP_PASS, CHAINIO_XDP_MALFORMED);
    // IPv4 total length shorter than its own header.
    expect_verdict(build_frame({.payload = 0, .tot_len_delta = -9}), XDP_PASS,
                   CHAINIO_XDP_MALFORMED);
    // UDP length below the header size, and beyond the IPv4 payload.
    expect_verdict(build_frame({.payload = 0, .udp_len_delta = -1}), XDP_PASS,
                   CHAINIO_XDP_MALFORMED);
    expect_verdict(build_frame({.udp_len_delta = 1}), XDP_PASS, CHAINIO_XDP_MALFORMED);
    // The same defects on a frame that is not ours are not inspected.
    expect_verdict(build_frame({.dst_port = kPort + 1, .udp_len_delta = 1}), XDP_PASS,
                   CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, EthernetPaddingIsAccepted) {
    // 14 + 20 + 8 + 2 = 44 bytes padded to the 60-byte minimum: IPv4 length < frame length.
    expect_verdict(build_frame({.payload = 2, .pad_to = 60}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
    // UDP length shorter than the IPv4 payload is legal too (trailing bytes are ignored).
    expect_verdict(build_frame({.udp_len_delta = -4}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
}

TEST_P(SteerProgTest, DestinationAddressFilter) {
    ASSERT_NO_FATAL_FAILURE(load({.daddr = kDstAddr}));
    expect_verdict(build_frame({}), XDP_PASS, CHAINIO_XDP_NO_SOCKET);
    expect_verdict(build_frame({.daddr = kDstAddr + 1}), XDP_PASS, CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, CountOnlyNeverRedirects) {
    ASSERT_NO_FATAL_FAILURE(load({.count_only = true}));
    expect_verdict(build_frame({}), XDP_PASS, CHAINIO_XDP_MATCHED);
    expect_verdict(build_frame({.dst_port = kPort + 1}), XDP_PASS, CHAINIO_XDP_PASSED);
}

TEST_P(SteerProgTest, PortZeroMatchesNothing) {
    ASSERT_NO_FATAL_FAILURE(load({.port = 0}));
    expect_verdict(build_frame({.dst_port = 0}), XDP_PASS, CHAINIO_XDP_PASSED);
}

INSTANTIATE_TEST_SUITE_P(Programs, SteerProgTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                             return std::string(info.param ? "MultiBuffer" : "Linear");
                         });

using SteerMultiBufferTest = SteerFixture;

TEST_F(SteerMultiBufferTest, JumboFrameIsParsedFromFragments) {
    // Above one page the test run spreads the frame over fragments; only the frags-aware
    // program accepts it.
    const std::vector<uint8_t> frame = build_frame({.payload = 9000 - 14 - 20 - 8});
    const Counters before = counters();
    const RunResult mb = run(skel_->progs.chainio_xdp_mb, frame);
    ASSERT_EQ(mb.err, 0) << std::strerror(-mb.err);
    EXPECT_EQ(mb.action, XDP_PASS);
    EXPECT_EQ(mb.out, frame);
    const Counters after = counters();
    EXPECT_EQ(after[CHAINIO_XDP_NO_SOCKET], before[CHAINIO_XDP_NO_SOCKET] + 1);
    EXPECT_EQ(after[CHAINIO_XDP_MALFORMED], before[CHAINIO_XDP_MALFORMED]);

    // The test run hands the same frame to the plain program, which sees only the linear
    // part: the IPv4 length then runs past the frame. Attaching refuses that pairing (see
    // OnlyTheFragsProgramAttachesAtJumboMtu), so this only documents the behaviour.
    const RunResult linear = run(skel_->progs.chainio_xdp, frame);
    ASSERT_EQ(linear.err, 0) << std::strerror(-linear.err);
    EXPECT_EQ(linear.action, XDP_PASS);
    EXPECT_EQ(counters()[CHAINIO_XDP_MALFORMED], before[CHAINIO_XDP_MALFORMED] + 1);
}

// Recent kernels (6.18 here) let ctx_in->data_end choose the linear size of a test-run frame:
// headers that straddle (or lie wholly past) the linear part must then be read through
// bpf_xdp_load_bytes.
TEST_F(SteerMultiBufferTest, HeadersSplitAcrossFragmentsAreParsed) {
    const std::vector<uint8_t> ours = build_frame({.ihl = 15, .payload = 8000});
    const std::vector<uint8_t> other = build_frame({.dst_port = kPort + 1, .payload = 8000});
    // Eth ends at 14, IPv4 (ihl 15) at 74, UDP at 82.
    for (uint32_t linear : {1u, 10u, 13u, 14u, 20u, 33u, 34u, 60u, 73u, 74u, 80u, 81u, 82u, 200u}) {
        SCOPED_TRACE(linear);
        xdp_md ctx{};
        ctx.data_end = linear;
        const Counters before = counters();
        const RunResult r = run(skel_->progs.chainio_xdp_mb, ours, &ctx);
        if (r.err == -EINVAL && linear == 1u) {
            GTEST_SKIP() << "kernel cannot set the linear size of a test run (needs 6.18)";
        }
        ASSERT_EQ(r.err, 0) << std::strerror(-r.err);
        EXPECT_EQ(r.action, XDP_PASS);
        EXPECT_EQ(r.out, ours);
        const RunResult o = run(skel_->progs.chainio_xdp_mb, other, &ctx);
        ASSERT_EQ(o.err, 0) << std::strerror(-o.err);
        const Counters after = counters();
        EXPECT_EQ(after[CHAINIO_XDP_NO_SOCKET], before[CHAINIO_XDP_NO_SOCKET] + 1);
        EXPECT_EQ(after[CHAINIO_XDP_PASSED], before[CHAINIO_XDP_PASSED] + 1);
        EXPECT_EQ(after[CHAINIO_XDP_MALFORMED], before[CHAINIO_XDP_MALFORMED]);

        // Control: the plain program, limited to direct access, cannot see past the linear part.
        const RunResult plain = run(skel_->progs.chainio_xdp, ours, &ctx);
        ASSERT_EQ(plain.err, 0) << std::strerror(-plain.err);
        EXPECT_EQ(counters()[CHAINIO_XDP_MALFORMED], after[CHAINIO_XDP_MALFORMED] + 1);
    }
}

TEST_F(SteerMultiBufferTest, JumboFrameWithBadLengthIsMalformed) {
    const std::vector<uint8_t> frame =
        build_frame({.payload = 9000 - 14 - 20 - 8, .tot_len_delta = 1});
    const Counters before = counters();
    const RunResult r = run(skel_->progs.chainio_xdp_mb, frame);
    ASSERT_EQ(r.err, 0) << std::strerror(-r.err);
    EXPECT_EQ(r.action, XDP_PASS);
    EXPECT_EQ(counters()[CHAINIO_XDP_MALFORMED], before[CHAINIO_XDP_MALFORMED] + 1);
}

// ---- live tests on a veth pair inside a private network namespace ----

// Runs a shell command; returns its exit status.
int sh(const std::string& cmd) {
    const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string sh_output(const std::string& cmd) {
    std::string out;
    FILE* f = popen(cmd.c_str(), "r");
    if (!f) return out;
    char buf[512];
    while (size_t n = fread(buf, 1, sizeof(buf), f)) out.append(buf, n);
    pclose(f);
    return out;
}

// A minimal copy-mode AF_XDP socket: UMEM + fill/completion/RX rings, no TX.
class XskSocket {
  public:
    static constexpr uint32_t kFrames = 16;
    static constexpr uint32_t kFrameSize = 4096;

    XskSocket() = default;
    XskSocket(const XskSocket&) = delete;
    XskSocket& operator=(const XskSocket&) = delete;
    ~XskSocket() {
        if (rx_map_ != MAP_FAILED) munmap(rx_map_, rx_map_len_);
        if (fill_map_ != MAP_FAILED) munmap(fill_map_, fill_map_len_);
        if (fd_ >= 0) close(fd_);
        if (umem_ != MAP_FAILED) munmap(umem_, kFrames * kFrameSize);
    }

    // Returns 0 or -errno.
    int open(unsigned ifindex, uint32_t queue, uint16_t bind_flags = XDP_COPY) {
        umem_ = mmap(nullptr, kFrames * kFrameSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (umem_ == MAP_FAILED) return -errno;
        fd_ = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
        if (fd_ < 0) return -errno;
        xdp_umem_reg reg{};
        reg.addr = reinterpret_cast<uint64_t>(umem_);
        reg.len = kFrames * kFrameSize;
        reg.chunk_size = kFrameSize;
        if (setsockopt(fd_, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) != 0) return -errno;
        const int n = kFrames;
        for (int opt : {XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING}) {
            if (setsockopt(fd_, SOL_XDP, opt, &n, sizeof(n)) != 0) return -errno;
        }
        xdp_mmap_offsets off{};
        socklen_t off_len = sizeof(off);
        if (getsockopt(fd_, SOL_XDP, XDP_MMAP_OFFSETS, &off, &off_len) != 0) return -errno;
        fill_map_len_ = off.fr.desc + kFrames * sizeof(uint64_t);
        fill_map_ = mmap(nullptr, fill_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         fd_, XDP_UMEM_PGOFF_FILL_RING);
        if (fill_map_ == MAP_FAILED) return -errno;
        rx_map_len_ = off.rx.desc + kFrames * sizeof(xdp_desc);
        rx_map_ = mmap(nullptr, rx_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                       XDP_PGOFF_RX_RING);
        if (rx_map_ == MAP_FAILED) return -errno;
        auto* base = static_cast<uint8_t*>(fill_map_);
        fill_prod_ = reinterpret_cast<uint32_t*>(base + off.fr.producer);
        fill_desc_ = reinterpret_cast<uint64_t*>(base + off.fr.desc);
        base = static_cast<uint8_t*>(rx_map_);
        rx_prod_ = reinterpret_cast<uint32_t*>(base + off.rx.producer);
        rx_cons_ = reinterpret_cast<uint32_t*>(base + off.rx.consumer);
        rx_desc_ = reinterpret_cast<xdp_desc*>(base + off.rx.desc);

        // Hand every frame to the kernel before binding (copy mode fills from this ring).
        for (uint32_t i = 0; i < kFrames; ++i) fill_desc_[i] = uint64_t{i} * kFrameSize;
        std::atomic_ref<uint32_t>(*fill_prod_).store(kFrames, std::memory_order_release);

        sockaddr_xdp sxdp{};
        sxdp.sxdp_family = AF_XDP;
        sxdp.sxdp_flags = bind_flags;
        sxdp.sxdp_ifindex = ifindex;
        sxdp.sxdp_queue_id = queue;
        if (bind(fd_, reinterpret_cast<sockaddr*>(&sxdp), sizeof(sxdp)) != 0) return -errno;
        return 0;
    }

    int fd() const { return fd_; }

    // Next received frame (its descriptors joined), or empty after timeout_ms. Consumed
    // chunks are not recycled: a socket receives at most kFrames chunks in its life.
    std::vector<uint8_t> receive(int timeout_ms, int* descs = nullptr) {
        std::vector<uint8_t> frame;
        int n = 0;
        for (;;) {
            const uint32_t cons = *rx_cons_;
            if (std::atomic_ref<uint32_t>(*rx_prod_).load(std::memory_order_acquire) == cons) {
                pollfd pfd{fd_, POLLIN, 0};
                if (poll(&pfd, 1, timeout_ms) <= 0 || !(pfd.revents & POLLIN)) return {};
                continue;
            }
            const xdp_desc d = rx_desc_[cons & (kFrames - 1)];
            const auto* p = static_cast<const uint8_t*>(umem_) + d.addr;
            frame.insert(frame.end(), p, p + d.len);
            ++n;
            std::atomic_ref<uint32_t>(*rx_cons_).store(cons + 1, std::memory_order_release);
            if (!(d.options & kXdpPktContd)) break;
        }
        if (descs) *descs = n;
        return frame;
    }

  private:
    void* umem_ = MAP_FAILED;
    int fd_ = -1;
    void* fill_map_ = MAP_FAILED;
    size_t fill_map_len_ = 0;
    void* rx_map_ = MAP_FAILED;
    size_t rx_map_len_ = 0;
    uint32_t* fill_prod_ = nullptr;
    uint64_t* fill_desc_ = nullptr;
    uint32_t* rx_prod_ = nullptr;
    uint32_t* rx_cons_ = nullptr;
    xdp_desc* rx_desc_ = nullptr;
};

void send_raw(unsigned ifindex, const std::vector<uint8_t>& frame) {
    const int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = static_cast<int>(ifindex);
    sll.sll_halen = 6;
    std::memcpy(sll.sll_addr, frame.data(), 6);
    const ssize_t n = sendto(fd, frame.data(), frame.size(), 0,
                             reinterpret_cast<const sockaddr*>(&sll), sizeof(sll));
    const int saved = errno;
    close(fd);
    ASSERT_EQ(n, static_cast<ssize_t>(frame.size())) << std::strerror(saved);
}

constexpr const char* kVethA = "chio0";  // sender
constexpr const char* kVethB = "chio1";  // XDP program + AF_XDP socket

// The calling thread moves into a fresh network namespace in SetUp and back in TearDown; the
// namespace (and the veth pair in it) disappears with its last reference.
class SteerNetnsTest : public SteerFixture {
  protected:
    void SetUp() override {
        SteerFixture::SetUp();
        if (IsSkipped() || HasFatalFailure()) return;
        if (sh("command -v ip") != 0) GTEST_SKIP() << "iproute2 'ip' not installed";
        orig_netns_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        ASSERT_GE(orig_netns_, 0) << std::strerror(errno);
        ASSERT_EQ(unshare(CLONE_NEWNET), 0) << "unshare(CLONE_NEWNET): " << std::strerror(errno);
        in_netns_ = true;
        ASSERT_EQ(sh(std::string("ip link add ") + kVethA + " type veth peer name " + kVethB), 0);
        ASSERT_EQ(sh(std::string("ip link set ") + kVethA + " up"), 0);
        ASSERT_EQ(sh(std::string("ip link set ") + kVethB + " up"), 0);
        ifindex_a_ = if_nametoindex(kVethA);
        ifindex_b_ = if_nametoindex(kVethB);
        ASSERT_NE(ifindex_a_, 0u);
        ASSERT_NE(ifindex_b_, 0u);
    }

    void TearDown() override {
        bpf_link__destroy(link_);
        link_ = nullptr;
        if (in_netns_) {
            // Leave the namespace before anything else can fail: the rest of the suite must
            // run where it started.
            EXPECT_EQ(setns(orig_netns_, CLONE_NEWNET), 0) << std::strerror(errno);
        }
        if (orig_netns_ >= 0) close(orig_netns_);
        SteerFixture::TearDown();
    }

    static uint32_t prog_id(bpf_program* prog) {
        bpf_prog_info info{};
        uint32_t len = sizeof(info);
        if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) != 0) return 0;
        return info.id;
    }

    static bpf_xdp_query_opts query(unsigned ifindex) {
        bpf_xdp_query_opts q{};
        q.sz = sizeof(q);
        EXPECT_EQ(bpf_xdp_query(static_cast<int>(ifindex), 0, &q), 0);
        return q;
    }

    // Binds xsk to queue 0 of veth B and stores it at xsks_map[0].
    void add_socket(XskSocket& xsk, uint16_t bind_flags = XDP_COPY) {
        const int err = xsk.open(ifindex_b_, 0, bind_flags);
        ASSERT_EQ(err, 0) << "AF_XDP socket: " << std::strerror(-err);
        const uint32_t key = 0;
        const int fd = xsk.fd();
        ASSERT_EQ(
            bpf_map__update_elem(skel_->maps.xsks_map, &key, sizeof(key), &fd, sizeof(fd), BPF_ANY),
            0)
            << std::strerror(errno);
    }

    void attach(bpf_program* prog, unsigned ifindex) {
        link_ = bpf_program__attach_xdp(prog, static_cast<int>(ifindex));
        ASSERT_NE(link_, nullptr) << "attach_xdp: " << std::strerror(errno);
    }

    std::array<uint8_t, 6> mac_of(const char* ifname) {
        std::array<uint8_t, 6> mac{};
        const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        EXPECT_GE(fd, 0);
        ifreq ifr{};
        std::snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
        EXPECT_EQ(ioctl(fd, SIOCGIFHWADDR, &ifr), 0) << std::strerror(errno);
        std::memcpy(mac.data(), ifr.ifr_hwaddr.sa_data, mac.size());
        close(fd);
        return mac;
    }

    int orig_netns_ = -1;
    bool in_netns_ = false;
    unsigned ifindex_a_ = 0;
    unsigned ifindex_b_ = 0;
    bpf_link* link_ = nullptr;
};

TEST_F(SteerNetnsTest, AttachThroughLinkAndDetach) {
    for (bpf_program* prog : {skel_->progs.chainio_xdp, skel_->progs.chainio_xdp_mb}) {
        SCOPED_TRACE(bpf_program__name(prog));
        const uint32_t id = prog_id(prog);
        ASSERT_NE(id, 0u);
        ASSERT_NO_FATAL_FAILURE(attach(prog, ifindex_b_));

        const bpf_xdp_query_opts q = query(ifindex_b_);
        EXPECT_EQ(q.attach_mode, XDP_ATTACHED_DRV);
        EXPECT_EQ(q.prog_id, id);
        EXPECT_EQ(q.drv_prog_id, id);
        EXPECT_EQ(query(ifindex_a_).attach_mode, XDP_ATTACHED_NONE);
        const std::string shown = sh_output(std::string("ip link show dev ") + kVethB);
        EXPECT_NE(shown.find("prog/xdp id " + std::to_string(id)), std::string::npos) << shown;

        bpf_link__destroy(link_);
        link_ = nullptr;
        const bpf_xdp_query_opts gone = query(ifindex_b_);
        EXPECT_EQ(gone.attach_mode, XDP_ATTACHED_NONE);
        EXPECT_EQ(gone.prog_id, 0u);
        EXPECT_EQ(sh_output(std::string("ip link show dev ") + kVethB).find("prog/xdp"),
                  std::string::npos);
    }
}

TEST_F(SteerNetnsTest, OnlyTheFragsProgramAttachesAtJumboMtu) {
    ASSERT_EQ(sh(std::string("ip link set ") + kVethA + " mtu 9000"), 0);
    ASSERT_EQ(sh(std::string("ip link set ") + kVethB + " mtu 9000"), 0);
    // veth refuses a program without BPF_F_XDP_HAS_FRAGS above ~3.5 KB MTU with ERANGE.
    const libbpf_print_fn_t print = libbpf_set_print(nullptr);  // the failure is expected
    bpf_link* plain = bpf_program__attach_xdp(skel_->progs.chainio_xdp, ifindex_b_);
    const int err = errno;
    libbpf_set_print(print);
    EXPECT_EQ(plain, nullptr) << "a non-frags program attached at MTU 9000";
    EXPECT_EQ(err, ERANGE) << std::strerror(err);
    bpf_link__destroy(plain);
    ASSERT_NO_FATAL_FAILURE(attach(skel_->progs.chainio_xdp_mb, ifindex_b_));
    EXPECT_EQ(query(ifindex_b_).prog_id, prog_id(skel_->progs.chainio_xdp_mb));
}

TEST_F(SteerNetnsTest, SocketInMapMakesTestRunRedirect) {
    XskSocket xsk;
    ASSERT_NO_FATAL_FAILURE(add_socket(xsk));
    // Without BPF_F_TEST_XDP_LIVE_FRAMES the redirect is only decided, not performed.
    const std::vector<uint8_t> frame = build_frame({});
    for (bpf_program* prog : {skel_->progs.chainio_xdp, skel_->progs.chainio_xdp_mb}) {
        SCOPED_TRACE(bpf_program__name(prog));
        const Counters before = counters();
        const RunResult r = run(prog, frame);
        ASSERT_EQ(r.err, 0) << std::strerror(-r.err);
        EXPECT_EQ(r.action, XDP_REDIRECT);
        const Counters after = counters();
        EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED], before[CHAINIO_XDP_REDIRECTED] + 1);
        EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED_BYTES],
                  before[CHAINIO_XDP_REDIRECTED_BYTES] + frame.size());
        EXPECT_EQ(after[CHAINIO_XDP_NO_SOCKET], before[CHAINIO_XDP_NO_SOCKET]);
    }
    // Frames not ours still pass with a socket present.
    const RunResult other = run(skel_->progs.chainio_xdp, build_frame({.dst_port = kPort + 1}));
    EXPECT_EQ(other.action, XDP_PASS);
}

TEST_F(SteerNetnsTest, SteersOurPortIntoTheSocketAndPassesTheRest) {
    XskSocket xsk;
    ASSERT_NO_FATAL_FAILURE(add_socket(xsk));
    ASSERT_NO_FATAL_FAILURE(attach(skel_->progs.chainio_xdp, ifindex_b_));

    FrameSpec spec{.payload = 1000};
    spec.dst_mac = mac_of(kVethB);
    spec.src_mac = mac_of(kVethA);
    const std::vector<uint8_t> ours = build_frame(spec);
    spec.dst_port = kPort + 1;
    const std::vector<uint8_t> other = build_frame(spec);

    const Counters before = counters();
    ASSERT_NO_FATAL_FAILURE(send_raw(ifindex_a_, other));
    ASSERT_NO_FATAL_FAILURE(send_raw(ifindex_a_, ours));
    const std::vector<uint8_t> got = xsk.receive(2000);
    EXPECT_EQ(got, ours);
    EXPECT_TRUE(xsk.receive(50).empty()) << "a frame not ours reached the socket";
    const Counters after = counters();
    EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED], before[CHAINIO_XDP_REDIRECTED] + 1);
    EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED_BYTES],
              before[CHAINIO_XDP_REDIRECTED_BYTES] + ours.size());
    // The frame for another port went to the stack (IPv6 router solicitations and the like
    // may add more PASSED frames: at least one).
    EXPECT_GE(after[CHAINIO_XDP_PASSED], before[CHAINIO_XDP_PASSED] + 1);
    EXPECT_EQ(after[CHAINIO_XDP_NO_SOCKET], before[CHAINIO_XDP_NO_SOCKET]);
    EXPECT_EQ(after[CHAINIO_XDP_MALFORMED], before[CHAINIO_XDP_MALFORMED]);
}

TEST_F(SteerNetnsTest, SteersJumboFramesIntoAnSgSocket) {
    ASSERT_EQ(sh(std::string("ip link set ") + kVethA + " mtu 9000"), 0);
    ASSERT_EQ(sh(std::string("ip link set ") + kVethB + " mtu 9000"), 0);
    XskSocket xsk;
    ASSERT_NO_FATAL_FAILURE(add_socket(xsk, XDP_COPY | kXdpUseSg));
    ASSERT_NO_FATAL_FAILURE(attach(skel_->progs.chainio_xdp_mb, ifindex_b_));

    FrameSpec spec{.payload = 9000 - 20 - kUdpLen};
    spec.dst_mac = mac_of(kVethB);
    spec.src_mac = mac_of(kVethA);
    const std::vector<uint8_t> ours = build_frame(spec);
    ASSERT_EQ(ours.size(), 9014u);

    const Counters before = counters();
    ASSERT_NO_FATAL_FAILURE(send_raw(ifindex_a_, ours));
    int descs = 0;
    const std::vector<uint8_t> got = xsk.receive(2000, &descs);
    EXPECT_EQ(got, ours);
    EXPECT_GE(descs, 3) << "a 9014-byte frame cannot fit fewer 4 KiB chunks";
    const Counters after = counters();
    EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED], before[CHAINIO_XDP_REDIRECTED] + 1);
    EXPECT_EQ(after[CHAINIO_XDP_REDIRECTED_BYTES],
              before[CHAINIO_XDP_REDIRECTED_BYTES] + ours.size());
}

}  // namespace
