#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "chainio/stats.h"
#include "chainio/status.h"

namespace chainio {

/// Which machinery executes reads.
enum class Backend {
    kAuto,     ///< io_uring when the kernel allows it, else kPread (overridden by CHAINIO_BACKEND)
    kIoUring,  ///< one io_uring per worker; fails creation if io_uring is unavailable
    kPread,    ///< a thread pool issuing pread(2); always available
};

/// How file bytes reach memory.
enum class IoMode {
    kAuto,      ///< per extent: page cache when most of it is resident (see hybrid_hot_reads),
                ///< else O_DIRECT
    kDirect,    ///< O_DIRECT, bouncing unaligned heads/tails through pool chunks
    kBuffered,  ///< through the page cache
};

const char* to_string(Backend backend);
const char* to_string(IoMode mode);

/// Engine construction options. Zero means "pick a default".
struct EngineOptions {
    unsigned workers = 0;         ///< worker threads, each owning one ring; 0 -> min(cores, 4)
    size_t pool_bytes = 64u << 20;  ///< BufferPool size shared by all workers
    size_t io_bytes = 1u << 20;     ///< largest single read (and pool chunk size); 4 KiB..64 MiB
    unsigned queue_depth = 32;      ///< reads in flight per worker
    Backend backend = Backend::kAuto;
    bool register_buffers = true;   ///< register the pool as io_uring fixed buffers when allowed
    /// In kAuto mode on data already in the page cache, let one worker read the aligned part
    /// with O_DIRECT while the others copy from the cache (needs workers >= 2). Page-cache copies
    /// are CPU-bound while the device sits idle: this adds the device's bandwidth and moves part
    /// of the bytes by DMA instead of a CPU copy. Disable with CHAINIO_HYBRID_HOT_READS=0.
    bool hybrid_hot_reads = true;
};

/// What the engine actually runs, and why (fallbacks are recorded in `notes`).
struct EngineInfo {
    Backend backend = Backend::kAuto;
    unsigned workers = 0;
    unsigned queue_depth = 0;
    size_t io_bytes = 0;
    size_t pool_bytes = 0;
    bool hugetlb_pool = false;
    bool registered_buffers = false;
    bool single_issuer = false;     ///< rings created with SINGLE_ISSUER|DEFER_TASKRUN
    bool hybrid_hot_reads = false;  ///< see EngineOptions::hybrid_hot_reads
    std::vector<std::string> notes;
};

/// One read: `length` bytes of a file at `offset` into `dst`. Give either an open `fd` (not
/// closed by the engine, must stay open until the read completes) or a `path`.
struct ReadExtent {
    std::string path;
    int fd = -1;
    uint64_t offset = 0;
    uint64_t length = 0;
    void* dst = nullptr;
};

/// Options of one read() call.
struct ReadOptions {
    IoMode mode = IoMode::kAuto;
    /// Fault the destination in before each copying read lands (MADV_POPULATE_WRITE, linked
    /// ahead of the read in the ring and run by io_uring's async workers). For fresh memory:
    /// the kernel's populate path is several times faster than the first-touch faults a copy
    /// takes. O_DIRECT reads skip it: pinning their pages already faults them in the kernel.
    bool populate = false;
};

namespace detail {
struct Request;
}

/// A submitted read. Copyable; all copies refer to the same request. Thread-safe.
/// The destination memory must stay valid until done() is true.
class ReadHandle {
public:
    ReadHandle() = default;
    explicit ReadHandle(std::shared_ptr<detail::Request> req) : req_(std::move(req)) {}

    /// Blocks until every extent completed or the request failed; returns the final Status.
    Status wait() const;
    /// Like wait() with a limit; -ETIMEDOUT if the request is still running at the deadline.
    Status wait_for(std::chrono::milliseconds timeout) const;
    bool done() const;
    /// Bytes delivered so far (all of bytes_total() on success).
    uint64_t bytes_done() const;
    uint64_t bytes_total() const;
    /// ok() while running or on success, else the first error.
    Status status() const;
    bool valid() const { return req_ != nullptr; }

private:
    std::shared_ptr<detail::Request> req_;
};

class Worker;
class BufferPool;

/// The storage half of ChainIO: W workers, each owning one io_uring (or a pread thread on the
/// fallback backend), sharing one BufferPool. Thread-safe: read() may be called from any thread.
class Engine {
public:
    /// Starts the workers. Falls back (and records why in info().notes, logging one line):
    /// io_uring unavailable -> pread threads; buffer registration refused -> unregistered.
    /// Errors: -EINVAL for bad options; -ENOSYS/-EPERM when kIoUring is forced but unavailable.
    static Result<std::unique_ptr<Engine>> create(const EngineOptions& options = {});
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Submits extents and returns at once. Files given by path are opened here (an open error
    /// is returned directly, e.g. -ENOENT, -EACCES); an extent past the end of its file gives
    /// -EINVAL naming the file. A file shrinking during the read fails the handle with -EIO.
    /// The workers are threads of the process that created the engine: in a child after
    /// fork() they do not exist, and read() returns -ECHILD (create a new engine there).
    Result<ReadHandle> read(const std::vector<ReadExtent>& extents, const ReadOptions& options = {});
    /// read() then wait().
    Status read_sync(const std::vector<ReadExtent>& extents, const ReadOptions& options = {});

    EngineStats stats() const;
    const EngineInfo& info() const { return info_; }

private:
    Engine() = default;
    EngineInfo info_;
    std::unique_ptr<BufferPool> pool_;
    std::vector<std::unique_ptr<Worker>> workers_;
    std::atomic<unsigned> next_worker_{0};
    std::atomic<uint64_t> requests_{0};
    int owner_pid_ = 0;            ///< getpid() at create()
    unsigned fork_generation_ = 0;  ///< forks seen by this process at create()
};

/// Fraction of the file at `path` in the page cache, as auto mode measures it (cachestat(2), or
/// preadv2(RWF_NOWAIT) probes without it). Errors: the open(2) errno; -EINVAL for an empty file.
Result<double> page_cache_fraction(const std::string& path);

}  // namespace chainio
