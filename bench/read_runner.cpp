// One read method, several runs, one pre-faulted destination: prints one JSON line per run.
// Driven by bench/read_bench.py, which adds fio, medians, the table and the plot.
//
//   read_runner METHOD FILE RUNS cold|hot [workers] [queue_depth] [io_bytes]
//   METHOD: chainio-auto | chainio-direct | chainio-buffered | pread | mmap
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "chainio/engine.h"

namespace {

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

void drop_caches() {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd < 0 || write(fd, "3", 1) != 1) {
        std::perror("drop_caches (needs root)");
        std::exit(2);
    }
    close(fd);
}

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "read_runner: %s\n", what.c_str());
    std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) die("usage: read_runner METHOD FILE RUNS cold|hot [workers] [qd] [io_bytes]");
    const std::string method = argv[1];
    const std::string path = argv[2];
    const int runs = std::atoi(argv[3]);
    const bool cold = std::strcmp(argv[4], "cold") == 0;
    chainio::EngineOptions opt;
    if (argc > 5) opt.workers = static_cast<unsigned>(std::atoi(argv[5]));
    if (argc > 6) opt.queue_depth = static_cast<unsigned>(std::atoi(argv[6]));
    if (argc > 7) opt.io_bytes = static_cast<size_t>(std::atoll(argv[7]));

    struct stat st {};
    if (stat(path.c_str(), &st) != 0) die("stat " + path + ": " + std::strerror(errno));
    const size_t size = static_cast<size_t>(st.st_size);

    // The destination is faulted in once, before any timing, and reused by every run.
    std::byte* dst = nullptr;
    if (method != "mmap") {
        size_t alloc = (size + (2u << 20) - 1) / (2u << 20) * (2u << 20);
        dst = static_cast<std::byte*>(std::aligned_alloc(2u << 20, alloc));
        if (dst == nullptr) die("out of memory");
        // THP by default; READ_RUNNER_SMALL_PAGES=1 measures 4 KiB pages (what fio's buffers get).
        madvise(dst, alloc, std::getenv("READ_RUNNER_SMALL_PAGES") ? MADV_NOHUGEPAGE : MADV_HUGEPAGE);
        std::memset(dst, 0, alloc);
    }

    std::unique_ptr<chainio::Engine> engine;
    chainio::IoMode mode = chainio::IoMode::kAuto;
    if (method.rfind("chainio-", 0) == 0) {
        auto e = chainio::Engine::create(opt);
        if (!e) die(e.status().to_string());
        engine = std::move(e).value();
        if (method == "chainio-direct") mode = chainio::IoMode::kDirect;
        if (method == "chainio-buffered") mode = chainio::IoMode::kBuffered;
    } else if (method != "pread" && method != "mmap") {
        die("unknown method " + method);
    }

    for (int run = 0; run < runs; ++run) {
        if (cold) drop_caches();
        chainio::EngineStats before = engine ? engine->stats() : chainio::EngineStats{};
        uint64_t syscalls = 0;
        uint64_t checksum = 0;
        double c0 = cpu_seconds();
        auto t0 = std::chrono::steady_clock::now();
        if (engine) {
            chainio::Status s = engine->read_sync({{path, -1, 0, size, dst}}, {mode});
            if (!s.is_ok()) die(s.to_string());
        } else if (method == "pread") {
            int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) die("open " + path);
            size_t off = 0;
            while (off < size) {
                ssize_t n = pread(fd, dst + off, std::min<size_t>(1u << 20, size - off),
                                  static_cast<off_t>(off));
                ++syscalls;
                if (n <= 0) die("pread failed");
                off += static_cast<size_t>(n);
            }
            close(fd);
        } else {  // mmap + touch one byte per page, no copy
            int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
            auto* p = static_cast<const volatile unsigned char*>(
                mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0));
            if (p == MAP_FAILED) die("mmap failed");
            for (size_t off = 0; off < size; off += 4096) checksum += p[off];
            munmap(const_cast<unsigned char*>(p), size);
            close(fd);
            syscalls = 3;
        }
        auto t1 = std::chrono::steady_clock::now();
        double c1 = cpu_seconds();
        double secs = std::chrono::duration<double>(t1 - t0).count();
        chainio::EngineStats after = engine ? engine->stats() : chainio::EngineStats{};
        uint64_t enters = after.enter_calls - before.enter_calls;
        if (engine) syscalls = enters;
        // Spot check that the destination really holds the file (not timed).
        if (dst != nullptr) {
            int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
            unsigned char probe[4096];
            for (size_t off : {size_t{0}, size / 2, size - std::min<size_t>(size, 4096)}) {
                size_t n = std::min<size_t>(4096, size - off);
                if (pread(fd, probe, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n) ||
                    std::memcmp(probe, dst + off, n) != 0) {
                    die("destination does not match the file at offset " + std::to_string(off));
                }
            }
            close(fd);
            std::memset(dst, 0, std::min<size_t>(size, 1u << 20));  // next run must rewrite it
        }
        std::printf(
            "{\"method\": \"%s\", \"cache\": \"%s\", \"run\": %d, \"bytes\": %zu, \"seconds\": %.6f, "
            "\"cpu_seconds\": %.6f, \"syscalls\": %llu, \"direct_ops\": %llu, \"bounce_ops\": %llu, "
            "\"buffered_ops\": %llu, \"checksum\": %llu}\n",
            method.c_str(), cold ? "cold" : "hot", run, size, secs, c1 - c0,
            static_cast<unsigned long long>(syscalls),
            static_cast<unsigned long long>(after.direct_ops - before.direct_ops),
            static_cast<unsigned long long>(after.bounce_ops - before.bounce_ops),
            static_cast<unsigned long long>(after.buffered_ops - before.buffered_ops),
            static_cast<unsigned long long>(checksum));
        std::fflush(stdout);
    }
    std::free(dst);
    return 0;
}
