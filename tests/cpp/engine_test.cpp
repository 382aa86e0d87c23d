#include "chainio/engine.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <random>
#include <thread>

#include "test_util.h"

namespace chainio {
namespace {

using testing::pattern;
using testing::pread_ref;
using testing::run_in_child;
using testing::TempDir;
using testing::write_file;

constexpr size_t kGuard = 4096;

/// Destination memory with a canary before and after, at a chosen misalignment from 4096.
class Dest {
public:
    Dest(size_t len, size_t misalign) : len_(len) {
        size_t total = kGuard + misalign + len + kGuard;
        mem_.reset(static_cast<uint8_t*>(std::aligned_alloc(4096, (total + 4095) / 4096 * 4096)));
        std::memset(mem_.get(), 0xA5, total);
        data_ = mem_.get() + kGuard + misalign;
    }
    uint8_t* data() { return data_; }
    bool guards_intact() const {
        for (size_t i = 1; i <= 512; ++i) {
            if (data_[-static_cast<ptrdiff_t>(i)] != 0xA5 || data_[len_ + i - 1] != 0xA5) return false;
        }
        return true;
    }

private:
    struct Free {
        void operator()(uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> mem_;
    uint8_t* data_;
    size_t len_;
};

struct Config {
    const char* name;
    Backend backend;
    IoMode mode;
    bool register_buffers;
};

class EngineTest : public ::testing::TestWithParam<Config> {
protected:
    void SetUp() override {
        EngineOptions opt;
        opt.workers = 2;
        opt.backend = GetParam().backend;
        opt.register_buffers = GetParam().register_buffers;
        opt.io_bytes = 256 << 10;  // small I/Os: many ops per file, more boundaries tested
        opt.pool_bytes = 8 << 20;
        auto e = Engine::create(opt);
        ASSERT_TRUE(e.is_ok()) << e.status().to_string();
        engine_ = std::move(e).value();
        ASSERT_EQ(engine_->info().backend, GetParam().backend);
    }

    Status read_one(const std::string& path, uint64_t off, uint64_t len, void* dst) {
        return engine_->read_sync({{path, -1, off, len, dst}}, {GetParam().mode});
    }

    TempDir dir_;
    std::unique_ptr<Engine> engine_;
};

TEST_P(EngineTest, WholeFilesOfEdgeSizesAtEveryAlignment) {
    const std::vector<size_t> sizes = {0, 1, 511, 512, 4096, 4097, (64u << 20) + 3};
    for (size_t size : sizes) {
        auto data = pattern(size, size);
        std::string path = dir_.file("f" + std::to_string(size));
        write_file(path, data);
        for (size_t misalign : {0, 1, 511, 512, 4095}) {
            if (size > (1u << 20) && misalign != 0 && misalign != 1) continue;  // keep it quick
            Dest dst(size, misalign);
            Status st = read_one(path, 0, size, dst.data());
            ASSERT_TRUE(st.is_ok()) << st.to_string() << " size " << size;
            ASSERT_TRUE(size == 0 || std::memcmp(dst.data(), data.data(), size) == 0)
                << "size " << size << " misalign " << misalign;
            ASSERT_TRUE(dst.guards_intact()) << "size " << size << " misalign " << misalign;
        }
    }
}

TEST_P(EngineTest, RandomExtentsMatchPread) {
    const size_t size = (8u << 20) + 777;
    auto data = pattern(size, 42);
    std::string path = dir_.file("random");
    write_file(path, data);
    std::mt19937_64 rng(7);
    for (int round = 0; round < 20; ++round) {
        std::vector<ReadExtent> extents;
        std::vector<std::unique_ptr<Dest>> dests;
        std::vector<std::pair<uint64_t, uint64_t>> ranges;
        for (int i = 0; i < 12; ++i) {
            uint64_t len = (rng() % 4 == 0) ? rng() % (3u << 20) : rng() % 9000;
            uint64_t off = rng() % (size - len + 1);
            if (rng() % 3 == 0) off = off / 512 * 512;
            size_t misalign = (rng() % 2 == 0) ? (off % 4096) : rng() % 4096;
            dests.push_back(std::make_unique<Dest>(len, misalign));
            extents.push_back({path, -1, off, len, dests.back()->data()});
            ranges.emplace_back(off, len);
        }
        Status st = engine_->read_sync(extents, {GetParam().mode});
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        for (size_t i = 0; i < extents.size(); ++i) {
            auto [off, len] = ranges[i];
            ASSERT_EQ(0, std::memcmp(dests[i]->data(), data.data() + off, len))
                << "round " << round << " extent " << i << " off " << off << " len " << len;
            ASSERT_TRUE(dests[i]->guards_intact());
            ASSERT_EQ(pread_ref(path, off, len).size(), len);
        }
    }
}

TEST_P(EngineTest, ExtentsGivenByFd) {
    auto data = pattern(100000, 3);
    std::string path = dir_.file("byfd");
    write_file(path, data);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> out(data.size());
    Status st = engine_->read_sync({{"", fd, 0, 60000, out.data()}, {"", fd, 60000, 40000, out.data() + 60000}},
                                   {GetParam().mode});
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    EXPECT_EQ(out, data);
    EXPECT_EQ(fcntl(fd, F_GETFL) & O_DIRECT, 0) << "the caller's descriptor must not change";
    close(fd);
}

TEST_P(EngineTest, PastEndOfFileIsInvalid) {
    std::string path = dir_.file("short");
    write_file(path, pattern(1000, 1));
    std::vector<uint8_t> out(2000);
    auto h = engine_->read({{path, -1, 500, 501, out.data()}}, {GetParam().mode});
    ASSERT_FALSE(h.is_ok());
    EXPECT_EQ(h.status().code(), -EINVAL);
    EXPECT_NE(h.status().message().find(path), std::string::npos) << h.status().message();
    EXPECT_NE(h.status().message().find("past the end"), std::string::npos);
    // Exactly up to the end is fine, and so is an empty read at the end.
    EXPECT_TRUE(read_one(path, 500, 500, out.data()).is_ok());
    EXPECT_TRUE(read_one(path, 1000, 0, out.data()).is_ok());
}

TEST_P(EngineTest, MissingFileIsEnoent) {
    std::vector<uint8_t> out(10);
    Status st = read_one(dir_.file("nope"), 0, 10, out.data());
    EXPECT_EQ(st.code(), -ENOENT);
    EXPECT_NE(st.message().find("nope"), std::string::npos);
}

TEST_P(EngineTest, BadArgumentsAreInvalid) {
    std::string path = dir_.file("args");
    write_file(path, pattern(100, 1));
    EXPECT_EQ(engine_->read_sync({{path, -1, 0, 10, nullptr}}).code(), -EINVAL);
    EXPECT_EQ(engine_->read_sync({{"", -1, 0, 10, nullptr}}).code(), -EINVAL);
    std::vector<uint8_t> out(10);
    EXPECT_EQ(engine_->read_sync({{dir_.path(), -1, 0, 10, out.data()}}).code(), -EINVAL)
        << "a directory is not a regular file";
}

TEST_P(EngineTest, WriteOnlyFdIsNotReadableInAnyMode) {
    // O_DIRECT reopens a caller's fd through /proc: that must not make a write-only fd readable.
    std::string path = dir_.file("wo");
    write_file(path, pattern(8192, 3));
    const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::vector<uint8_t> out(4096);
    for (IoMode mode : {IoMode::kAuto, IoMode::kDirect, IoMode::kBuffered}) {
        Status st = engine_->read_sync({{"", fd, 0, 4096, out.data()}}, {mode});
        EXPECT_EQ(st.code(), -EBADF) << st.to_string();
    }
    close(fd);
}

TEST(EngineOptions, PoolLargerThanAnyMachineIsEnomemNotAWrap) {
    for (size_t bytes : {size_t(1) << 50, ~size_t(0) - (1u << 20), ~size_t(0)}) {
        auto e = Engine::create({.pool_bytes = bytes});
        EXPECT_EQ(e.status().code(), -ENOMEM) << bytes;
    }
}

TEST_P(EngineTest, FifoIsRefusedWithoutBlocking) {
    // open(O_RDONLY) of a FIFO waits for a writer: the engine must refuse the path at once (the
    // alarm ends the test binary if it blocks).
    const std::string path = dir_.file("fifo");
    ASSERT_EQ(mkfifo(path.c_str(), 0644), 0);
    std::vector<uint8_t> out(10);
    alarm(10);
    Status st = engine_->read_sync({{path, -1, 0, 10, out.data()}});
    alarm(0);
    EXPECT_EQ(st.code(), -EINVAL) << st.message();
    EXPECT_NE(st.message().find("not a regular file"), std::string::npos) << st.message();
}

TEST_P(EngineTest, PermissionDeniedIsEacces) {
    std::string path = dir_.file("secret");
    write_file(path, pattern(100, 1), 0600);
    ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
    passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr) GTEST_SKIP() << "no 'nobody' user to drop privileges to";
    EngineOptions opt;
    opt.workers = 1;
    opt.backend = GetParam().backend;
    opt.pool_bytes = 1 << 20;
    // No thread may run at the fork (see run_in_child): the fixture's engine has 2-8 of them,
    // and under ASan one still starting held the allocator's lock into the child (a hang).
    engine_.reset();
    int rc = run_in_child([&] {
        if (setresgid(nobody->pw_gid, nobody->pw_gid, nobody->pw_gid) != 0 ||
            setresuid(nobody->pw_uid, nobody->pw_uid, nobody->pw_uid) != 0) {
            return 90;
        }
        auto e = Engine::create(opt);
        if (!e) return 91;
        std::vector<uint8_t> out(100);
        Status st = e.value()->read_sync({{path, -1, 0, 100, out.data()}});
        return st.code() == -EACCES ? 0 : 92;
    });
    EXPECT_EQ(rc, 0);
}

TEST_P(EngineTest, FileShrinkingDuringReadFailsWithEio) {
    const size_t size = 64u << 20;
    std::string path = dir_.file("shrinks");
    write_file(path, pattern(size, 9));
    EngineOptions opt;
    opt.workers = 1;
    opt.queue_depth = 1;
    opt.io_bytes = 64 << 10;  // 1024 ops at queue depth 1: the truncate lands long before the end
    opt.backend = GetParam().backend;
    opt.register_buffers = GetParam().register_buffers;
    auto e = Engine::create(opt);
    ASSERT_TRUE(e.is_ok());
    Dest dst(size, 0);
    auto h = e.value()->read({{path, -1, 0, size, dst.data()}}, {GetParam().mode});
    ASSERT_TRUE(h.is_ok());
    ASSERT_EQ(truncate(path.c_str(), 4097), 0);
    Status st = h->wait();
    EXPECT_EQ(st.code(), -EIO) << st.to_string();
    EXPECT_NE(st.message().find("end of file"), std::string::npos) << st.message();
    EXPECT_LT(h->bytes_done(), size);
    EXPECT_TRUE(dst.guards_intact());
}

TEST_P(EngineTest, PopulateFaultsFreshMemoryAndKeepsBytesIdentical) {
    const size_t size = (6u << 20) + 333;
    auto data = pattern(size, 31);
    std::string path = dir_.file("populate");
    write_file(path, data);
    for (size_t misalign : {size_t{0}, size_t{1}}) {
        // Fresh, never-touched anonymous memory: what a loader's new tensors are.
        size_t len = size + 4096;
        auto* mem = static_cast<std::byte*>(
            mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        ASSERT_NE(mem, MAP_FAILED);
        EngineStats before = engine_->stats();
        Status st = engine_->read_sync({{path, -1, 0, size, mem + misalign}},
                                       {GetParam().mode, /*populate=*/true});
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        EXPECT_EQ(0, std::memcmp(mem + misalign, data.data(), size));
        EngineStats s = engine_->stats();
        uint64_t copying_ops = (s.bounce_ops - before.bounce_ops) + (s.buffered_ops - before.buffered_ops);
        EXPECT_EQ(s.populate_ops - before.populate_ops, copying_ops)
            << "one populate per copying op, none for O_DIRECT";
        munmap(mem, len);
    }
}

TEST_P(EngineTest, ManyConcurrentHandles) {
    const size_t size = (4u << 20) + 123;
    auto data = pattern(size, 11);
    std::string path = dir_.file("concurrent");
    write_file(path, data);
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937_64 rng(t);
            std::vector<std::unique_ptr<Dest>> dests;
            std::vector<ReadHandle> handles;
            std::vector<std::pair<uint64_t, uint64_t>> ranges;
            for (int i = 0; i < 16; ++i) {
                uint64_t len = rng() % (1u << 20);
                uint64_t off = rng() % (size - len + 1);
                dests.push_back(std::make_unique<Dest>(len, rng() % 4096));
                auto h = engine_->read({{path, -1, off, len, dests.back()->data()}}, {GetParam().mode});
                if (!h) {
                    ++failures;
                    continue;
                }
                handles.push_back(*h);
                ranges.emplace_back(off, len);
            }
            for (size_t i = 0; i < handles.size(); ++i) {
                if (!handles[i].wait().is_ok() || !handles[i].done() ||
                    handles[i].bytes_done() != ranges[i].second ||
                    std::memcmp(dests[i]->data(), data.data() + ranges[i].first, ranges[i].second) != 0 ||
                    !dests[i]->guards_intact()) {
                    ++failures;
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(failures.load(), 0);
}

TEST_P(EngineTest, StatsCountWhatWasRead) {
    const size_t size = (3u << 20) + 5;
    std::string path = dir_.file("stats");
    write_file(path, pattern(size, 5));
    Dest dst(size, 0);
    ASSERT_TRUE(read_one(path, 0, size, dst.data()).is_ok());
    EngineStats s = engine_->stats();
    EXPECT_EQ(s.bytes_read, size);
    EXPECT_EQ(s.requests, 1u);
    EXPECT_EQ(s.ops, s.direct_ops + s.bounce_ops + s.buffered_ops);
    EXPECT_GE(s.ops, size / (256 << 10));
    if (GetParam().backend == Backend::kIoUring) {
        EXPECT_GT(s.enter_calls, 0u);
        EXPECT_EQ(s.syscalls_avoided, s.ops > s.enter_calls ? s.ops - s.enter_calls : 0);
    } else {
        EXPECT_EQ(s.enter_calls, 0u);
    }
    if (GetParam().mode == IoMode::kDirect) {
        EXPECT_GT(s.direct_ops, 0u);
        EXPECT_EQ(s.bounce_ops, 1u) << "only the 5-byte tail bounces";
        EXPECT_EQ(s.buffered_ops, 0u);
        EXPECT_EQ(s.fixed_ops, engine_->info().registered_buffers ? 1u : 0u);
    }
    if (GetParam().mode == IoMode::kBuffered) {
        EXPECT_EQ(s.buffered_ops, s.ops);
    }
    EXPECT_GT(s.busy_ns + s.idle_ns, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Backends, EngineTest,
    ::testing::Values(Config{"uring_auto", Backend::kIoUring, IoMode::kAuto, true},
                      Config{"uring_direct", Backend::kIoUring, IoMode::kDirect, true},
                      Config{"uring_direct_unregistered", Backend::kIoUring, IoMode::kDirect, false},
                      Config{"uring_buffered", Backend::kIoUring, IoMode::kBuffered, true},
                      Config{"pread_direct", Backend::kPread, IoMode::kDirect, true},
                      Config{"pread_buffered", Backend::kPread, IoMode::kBuffered, true}),
    [](const ::testing::TestParamInfo<Config>& info) { return std::string(info.param.name); });

TEST(EngineAuto, AutoModeFollowsThePageCache) {
    TempDir dir;
    auto e = Engine::create({.workers = 2, .hybrid_hot_reads = false});
    ASSERT_TRUE(e.is_ok());
    auto& engine = *e.value();
    EXPECT_FALSE(engine.info().hybrid_hot_reads);
    const size_t size = 8u << 20;
    std::string path = dir.file("auto");
    auto data = pattern(size, 8);
    write_file(path, data);
    Dest dst(size, 0);
    // Just written: in the page cache -> buffered.
    ASSERT_TRUE(engine.read_sync({{path, -1, 0, size, dst.data()}}).is_ok());
    EngineStats hot = engine.stats();
    EXPECT_EQ(hot.buffered_ops, hot.ops);
    // Evicted -> O_DIRECT.
    int fd = open(path.c_str(), O_RDONLY);
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
    std::memset(dst.data(), 0, size);
    ASSERT_TRUE(engine.read_sync({{path, -1, 0, size, dst.data()}}).is_ok());
    EngineStats cold = engine.stats();
    EXPECT_EQ(cold.buffered_ops, hot.buffered_ops);
    EXPECT_GT(cold.direct_ops, hot.direct_ops);
    EXPECT_EQ(0, std::memcmp(dst.data(), data.data(), size));
}

TEST(EngineAuto, HybridHotReadsSplitBetweenPageCacheAndDirect) {
    TempDir dir;
    // Queue depth 1: each worker holds one op at a time, so both keep claiming until the end.
    auto e = Engine::create({.workers = 2, .queue_depth = 1});
    ASSERT_TRUE(e.is_ok());
    auto& engine = *e.value();
    ASSERT_TRUE(engine.info().hybrid_hot_reads);
    const size_t size = (64u << 20) + 1000;
    std::string path = dir.file("hybrid");
    auto data = pattern(size, 12);
    write_file(path, data);
    for (size_t misalign : {700, 100}) {
        Dest dst(size - 700, misalign);
        EngineStats before = engine.stats();
        ASSERT_TRUE(engine.read_sync({{path, -1, 700, size - 700, dst.data()}}).is_ok());
        EngineStats s = engine.stats();
        ASSERT_EQ(0, std::memcmp(dst.data(), data.data() + 700, size - 700)) << misalign;
        ASSERT_TRUE(dst.guards_intact());
        EXPECT_EQ(s.bounce_ops, before.bounce_ops) << "hot edges are copied from the page cache";
        EXPECT_GT(s.buffered_ops, before.buffered_ops);
        if (misalign == 700) {
            // File offset and address are both 188 mod 512: the aligned body may go O_DIRECT.
            EXPECT_GT(s.direct_ops, before.direct_ops) << "the direct-role worker took part";
        } else {
            EXPECT_EQ(s.direct_ops, before.direct_ops) << "misaligned: page cache only";
        }
    }
}

// ---- fallbacks chosen at run time --------------------------------------------------------

// Makes io_uring_setup fail with ENOSYS, the way a container's seccomp profile does.
bool block_io_uring_with_seccomp() {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(std::size(filter)), filter};
    return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0;
}

TEST(EngineFallback, NoIoUringFallsBackToPread) {
    TempDir dir;
    auto data = pattern((1u << 20) + 17, 21);
    std::string path = dir.file("f");
    write_file(path, data);
    int rc = run_in_child([&] {
        if (!block_io_uring_with_seccomp()) return 90;
        auto forced = Engine::create({.backend = Backend::kIoUring});
        if (forced.is_ok() || forced.status().code() != -ENOSYS) return 91;
        auto e = Engine::create({.workers = 2});
        if (!e) return 92;
        const EngineInfo& info = e.value()->info();
        if (info.backend != Backend::kPread || info.notes.empty() ||
            info.notes[0].find("io_uring unavailable") == std::string::npos) {
            return 93;
        }
        std::vector<uint8_t> out(data.size());
        if (!e.value()->read_sync({{path, -1, 0, out.size(), out.data()}}, {IoMode::kDirect}).is_ok()) return 94;
        return out == data ? 0 : 95;
    });
    EXPECT_EQ(rc, 0);
}

TEST(EngineFallback, BackendFromEnvironment) {
    int rc = run_in_child([] {
        setenv("CHAINIO_BACKEND", "pread", 1);
        auto e = Engine::create({.workers = 1});
        return e.is_ok() && e.value()->info().backend == Backend::kPread ? 0 : 1;
    });
    EXPECT_EQ(rc, 0);
}

TEST(EngineFallback, LowMemlockLimitFallsBackToUnregisteredBuffers) {
    TempDir dir;
    ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
    auto data = pattern((2u << 20) + 3, 22);
    std::string path = dir.file("f");
    write_file(path, data);
    passwd* nobody = getpwnam("nobody");
    if (nobody == nullptr) GTEST_SKIP() << "no 'nobody' user to drop privileges to";
    int rc = run_in_child([&] {
        // What a non-root user gets here: RLIMIT_MEMLOCK 8 MiB and no CAP_IPC_LOCK.
        rlimit lim{8u << 20, 8u << 20};
        if (setrlimit(RLIMIT_MEMLOCK, &lim) != 0) return 89;
        if (setresgid(nobody->pw_gid, nobody->pw_gid, nobody->pw_gid) != 0 ||
            setresuid(nobody->pw_uid, nobody->pw_uid, nobody->pw_uid) != 0) {
            return 90;
        }
        auto e = Engine::create({.workers = 2, .pool_bytes = 64u << 20});
        if (!e) return 91;
        const EngineInfo& info = e.value()->info();
        if (info.backend != Backend::kIoUring) return 92;
        if (info.registered_buffers) return 93;
        bool noted = false;
        for (auto& n : info.notes) noted = noted || n.find("unregistered") != std::string::npos;
        if (!noted) return 94;
        std::vector<uint8_t> out(data.size());
        // Misaligned destination: everything bounces through the (unregistered) pool.
        std::vector<uint8_t> big(data.size() + 1);
        if (!e.value()->read_sync({{path, -1, 0, out.size(), big.data() + 1}}, {IoMode::kDirect}).is_ok()) return 95;
        if (std::memcmp(big.data() + 1, data.data(), data.size()) != 0) return 96;
        EngineStats s = e.value()->stats();
        return s.fixed_ops == 0 && s.bounce_ops > 0 ? 0 : 97;
    });
    EXPECT_EQ(rc, 0);
}

TEST(EngineFallback, DirectRefusedByFileSystemFallsBackToBuffered) {
    TempDir dir;
    std::string mnt = dir.file("ramfs");
    ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
    if (mount("ramfs", mnt.c_str(), "ramfs", 0, nullptr) != 0) {
        GTEST_SKIP() << "cannot mount ramfs: " << std::strerror(errno);
    }
    // Unmounted before TempDir removes the directory, whatever the assertions below do (a
    // mount left behind outlives the test and keeps its directory in /var/tmp).
    struct Unmount {
        std::string path;
        ~Unmount() {
            if (umount(path.c_str()) != 0) umount2(path.c_str(), MNT_DETACH);
        }
    } unmount{mnt};
    auto data = pattern(300000, 23);
    std::string path = mnt + "/f";
    write_file(path, data);
    std::vector<uint8_t> out(data.size());
    Status st;
    EngineStats s;
    {
        auto e = Engine::create({.workers = 2});
        ASSERT_TRUE(e.is_ok());
        st = e.value()->read_sync({{path, -1, 0, out.size(), out.data()}}, {IoMode::kDirect});
        s = e.value()->stats();
    }  // the engine and its open files are gone before the unmount
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    EXPECT_EQ(out, data);
    EXPECT_EQ(s.buffered_ops, s.ops);
    EXPECT_EQ(s.direct_ops + s.bounce_ops, 0u);
}

TEST(EngineOptionsTest, InvalidOptionsAreRejected) {
    EXPECT_EQ(Engine::create({.io_bytes = 1000}).status().code(), -EINVAL);
    EXPECT_EQ(Engine::create({.io_bytes = 128u << 20}).status().code(), -EINVAL);
    EXPECT_EQ(Engine::create({.queue_depth = 0}).status().code(), -EINVAL);
    EXPECT_EQ(Engine::create({.workers = 1000}).status().code(), -EINVAL);
}

TEST(EngineOptionsTest, DefaultsAndInfo) {
    auto e = Engine::create();
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    const EngineInfo& info = e.value()->info();
    EXPECT_EQ(info.workers, std::min(4u, std::max(1u, std::thread::hardware_concurrency())));
    EXPECT_EQ(info.backend, Backend::kIoUring) << "CI runs as root on 6.18: io_uring must be there";
    EXPECT_TRUE(info.registered_buffers);
    EXPECT_TRUE(info.single_issuer);
    EXPECT_LE(info.pool_bytes, 256u << 20);
}

TEST(EngineLifetime, DestroyingEngineWithQueuedReadsCancelsThem) {
    TempDir dir;
    const size_t size = 32u << 20;
    std::string path = dir.file("f");
    write_file(path, pattern(size, 1));
    std::vector<uint8_t> out(size);
    ReadHandle h;
    {
        auto e = Engine::create({.workers = 1, .io_bytes = 4096, .queue_depth = 1});
        ASSERT_TRUE(e.is_ok());
        auto r = e.value()->read({{path, -1, 0, size, out.data()}}, {IoMode::kBuffered});
        ASSERT_TRUE(r.is_ok());
        h = *r;
    }
    ASSERT_TRUE(h.done()) << "the engine's destructor must end every request";
    Status st = h.wait();
    if (h.bytes_done() < size) {
        EXPECT_EQ(st.code(), -ECANCELED);
    }
}

}  // namespace
}  // namespace chainio
