// The fallback backend: a few threads issuing pread(2), for when io_uring is unavailable.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <thread>

#include "worker.h"

namespace chainio {

namespace {

class PreadWorker final : public Worker {
public:
    explicit PreadWorker(const WorkerConfig& config) {
        direct_role_ = config.direct_role;
        size_t threads = std::min<size_t>({size_t{config.queue_depth}, size_t{4}, config.chunk_count});
        if (threads == 0) threads = 1;
        for (size_t i = 0; i < threads; ++i) {
            // Each thread owns one chunk for bounces; the slice always has at least one.
            std::byte* chunk = config.pool->chunk(config.first_chunk + i % config.chunk_count);
            threads_.emplace_back([this, chunk] { run(chunk); });
        }
    }

    ~PreadWorker() override {
        stop_.store(true, std::memory_order_release);
        wake();
        for (auto& t : threads_) t.join();
    }

protected:
    void wake() override {
        { std::lock_guard lock(inbox_mu_); }  // pairs with the predicate check in run()
        cv_.notify_all();
    }

private:
    void run(std::byte* chunk) {
        register_thread();
        for (;;) {
            Op op;
            {
                std::unique_lock lock(inbox_mu_);
                for (;;) {
                    take_inbox_locked();
                    if (stop_.load()) {
                        cancel_unclaimed();
                        return;
                    }
                    if (claim(op)) break;
                    cv_.wait(lock, [this] { return stop_.load() || !inbox_.empty(); });
                }
            }
            execute(op, chunk);
        }
    }

    void execute(Op& op, std::byte* chunk) {
        if (stop_.load(std::memory_order_acquire)) return cancel_op(op);
        if (op.kind == OpKind::kBounce) op.chunk = chunk;
        if (op.populate && op.payload > 0 && op.kind != OpKind::kDirect) {
            auto [addr, len] = populate_span(op);
            if (madvise(addr, len, MADV_POPULATE_WRITE) == 0) {
                counters_.populates.fetch_add(1, std::memory_order_relaxed);
            }  // advisory: the read faults the pages in anyway
        }
        for (;;) {
            if (op.req->failed.load(std::memory_order_acquire)) return finish_op(op, false, false);
            long r;
            switch (op.kind) {
                case OpKind::kDirect:
                    r = pread(op.file->direct_fd, op.dst, op.len, static_cast<off_t>(op.file_off));
                    break;
                case OpKind::kBounce:
                    r = pread(op.file->direct_fd, op.chunk + op.filled, op.len,
                              static_cast<off_t>(op.file_off));
                    break;
                default:
                    r = pread(op.file->fd, op.dst, op.len, static_cast<off_t>(op.file_off));
                    break;
            }
            if (r < 0) r = -errno;
            bool retried = false;
            OpStep step = advance_op(op, r, retried);
            if (step == OpStep::kAgain) {
                counters_.retries.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            op.chunk = nullptr;
            return finish_op(op, step == OpStep::kDone, false);
        }
    }

    std::condition_variable cv_;
    std::vector<std::thread> threads_;
};

}  // namespace

std::unique_ptr<Worker> make_pread_worker(const WorkerConfig& config) {
    return std::make_unique<PreadWorker>(config);
}

}  // namespace chainio
