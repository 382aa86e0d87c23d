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
    bool direct_role = false;  // runs flexible (hot, aligned) ops as O_DIRECT instead of copies
};

/// What a worker found when it started.
struct WorkerInitInfo {
    bool registered_buffers = false;
    int register_error = 0;  // errno of a refused registration
    bool single_issuer = false;
};

/// Executes ops on its own thread(s). Requests are offered to several workers at once; each
/// worker claims ops from a request's shared cursor as it has room, so fast workers take more
/// and all finish together. enqueue() is thread-safe; everything else belongs to the worker's
/// threads. Destroying a worker cancels unclaimed ops (-ECANCELED) and waits for those in flight.
class Worker {
public:
    virtual ~Worker() = default;
    /// Offers a request's ops to this worker; requests are served in order of arrival.
    void enqueue(std::shared_ptr<detail::Request> req);
    /// Adds this worker's counters to `stats`.
    void add_to(EngineStats& stats) const;

protected:
    virtual void wake() = 0;
    /// Moves requests enqueued so far to the list claim() serves from.
    void take_inbox();
    /// The same with inbox_mu_ already held.
    void take_inbox_locked();
    /// Claims the next op of the oldest request with ops left, already resolved for this
    /// worker's role; ends (uncounted) the ops of failed requests on the way. False when none
    /// is left. Callers serialize calls (the ring thread, or under inbox_mu_).
    bool claim(Op& out);
    /// Cancels every unclaimed op of every request this worker was offered.
    void cancel_unclaimed();
    /// Accounts an op that ended and releases its request reference.
    void finish_op(Op& op, bool ok, bool fixed);
    /// Registers the calling thread for busy/idle accounting.
    void register_thread();
    /// Fails a queued op because the worker is shutting down.
    void cancel_op(Op& op);

    std::mutex inbox_mu_;
    std::vector<std::shared_ptr<detail::Request>> inbox_;
    std::vector<std::shared_ptr<detail::Request>> jobs_;  // claimable, oldest first
    size_t jobs_head_ = 0;
    bool direct_role_ = false;
    std::atomic<bool> stop_{false};

    struct Counters {
        std::atomic<uint64_t> bytes{0}, ops{0}, direct{0}, bounce{0}, buffered{0}, fixed{0},
            retries{0}, enters{0}, populates{0};
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
