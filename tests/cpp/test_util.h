#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace chainio::testing {

/// Grows the hugetlb pool (vm.nr_hugepages) by `pages` 2 MiB pages for its lifetime (root
/// only), then shrinks it by what it added, not back to a remembered value: tests that grow
/// the pool at the same time (ctest -j) must not undo each other's pages or leave them behind.
class HugetlbPoolGrowth {
public:
    explicit HugetlbPoolGrowth(long pages) {
        const long before = read();
        if (before < 0) return;
        std::ofstream(kSysctl) << before + pages;
        const long after = read();
        added_ = after > before ? after - before : 0;
    }
    ~HugetlbPoolGrowth() {
        if (added_ == 0) return;
        const long now = read();
        if (now >= added_) std::ofstream(kSysctl) << now - added_;
    }
    HugetlbPoolGrowth(const HugetlbPoolGrowth&) = delete;
    HugetlbPoolGrowth& operator=(const HugetlbPoolGrowth&) = delete;
    /// Pages actually added (the kernel may grant fewer than asked, or none without root).
    long added() const { return added_; }

private:
    static constexpr const char* kSysctl = "/proc/sys/vm/nr_hugepages";
    static long read() {
        std::ifstream in(kSysctl);
        long v = -1;
        return in >> v ? v : -1;
    }
    long added_ = 0;
};

/// A directory under $TMPDIR (default /var/tmp: a real disk, not tmpfs) removed at destruction.
class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("CHAINIO_TEST_DIR");
        std::string tmpl = std::string(base ? base : "/var/tmp") + "/chainio-test-XXXXXX";
        std::vector<char> buf(tmpl.begin(), tmpl.end());
        buf.push_back('\0');
        if (mkdtemp(buf.data()) == nullptr) std::abort();
        path_ = buf.data();
    }
    ~TempDir() { (void)!std::system(("rm -rf '" + path_ + "'").c_str()); }
    const std::string& path() const { return path_; }
    std::string file(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

/// Deterministic pseudo-random bytes: byte i of a file depends on (seed, i) only.
inline std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937_64 rng(seed);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = rng();
        std::memcpy(v.data() + i, &x, 8);
    }
    for (; i < n; ++i) v[i] = static_cast<uint8_t>(rng());
    return v;
}

inline void write_file(const std::string& path, const std::vector<uint8_t>& data, mode_t mode = 0644) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ASSERT_GE(fd, 0) << path;
    size_t off = 0;
    while (off < data.size()) {
        ssize_t n = write(fd, data.data() + off, data.size() - off);
        ASSERT_GT(n, 0);
        off += static_cast<size_t>(n);
    }
    ASSERT_EQ(fsync(fd), 0);
    close(fd);
}

/// Reference bytes through plain pread(2).
inline std::vector<uint8_t> pread_ref(const std::string& path, uint64_t off, size_t len) {
    std::vector<uint8_t> v(len);
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    while (fd >= 0 && got < len) {
        ssize_t n = pread(fd, v.data() + got, len - got, static_cast<off_t>(off + got));
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    if (fd >= 0) close(fd);
    v.resize(got);
    return v;
}

/// Runs `body` in a forked child and returns its exit status (for tests that must change
/// process-wide state: seccomp filters, credentials, rlimits). gtest assertions don't cross the
/// fork: the body returns an exit code, 0 meaning success, and prints what went wrong.
/// Call it with no other thread running: a lock another thread holds at the fork (the ASan
/// allocator's, for one, taken by threads that are still starting) stays held in the child
/// forever, and the child hangs.
inline int run_in_child(const std::function<int()>& body) {
    fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) _exit(body());
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace chainio::testing
