#pragma once

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "chainio/buffer_pool.h"
#include "chainio/stats.h"
#include "request.h"

namespace chainio {

/// What a worker gets from the engine: its slice of the pool and its limits.
struct WorkerConfig {
    unsigned index = 0;
    const BufferPool* pool = nullptr;
    size_t first_chunk = 0;   // the worker's slice [first_chunk, first_chunk + chunk_count)
    size_t chunk_count = 0;
    unsigned queue_depth = 32;
    bool register_buffers = true;
};

/// What a worker found when it started.
struct WorkerInitInfo {
    bool registered_buffers = false;
    int register_error = 0;  // errno of a refused registration
    bool single_issuer = false;
};

/// Executes ops on its own thread(s). enqueue() is thread-safe; everything else belongs to the
/// worker's threads. Destroying a worker cancels queued ops (-ECANCELED) and waits for those in
/// flight.
class Worker {
public:
    virtual ~Worker() = default;
    /// Hands ops to the worker; they run in order of arrival, up to queue_depth at once.
    void enqueue(std::vector<Op>&& ops);
    /// Adds this worker's counters to `stats`.
    void add_to(EngineStats& stats) const;

protected:
    virtual void wake() = 0;
    /// Moves everything enqueued so far into `out`.
    void take_inbox(std::vector<Op>& out);
    /// Accounts an op that ended and releases its request reference.
    void finish_op(Op& op, bool ok, bool fixed);
    /// Registers the calling thread for busy/idle accounting.
    void register_thread();
    /// Fails a queued op because the worker is shutting down.
    void cancel_op(Op& op);

    std::mutex inbox_mu_;
    std::vector<Op> inbox_;
    std::atomic<bool> stop_{false};

    struct Counters {
        std::atomic<uint64_t> bytes{0}, ops{0}, direct{0}, bounce{0}, buffered{0}, fixed{0},
            retries{0}, enters{0};
    } counters_;

private:
    mutable std::mutex threads_mu_;
    std::vector<clockid_t> cpu_clocks_;
    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

/// 0 when io_uring rings can be created here, else -errno (ENOSYS, EPERM from
/// kernel.io_uring_disabled or seccomp).
int probe_io_uring();

/// Starts a worker owning one io_uring. Blocks until its ring exists (so errors are returned).
Result<std::unique_ptr<Worker>> make_uring_worker(const WorkerConfig& config, WorkerInitInfo& info);

/// Starts a worker of min(queue_depth, 4) threads issuing pread(2).
std::unique_ptr<Worker> make_pread_worker(const WorkerConfig& config);

}  // namespace chainio
