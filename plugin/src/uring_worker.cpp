// The only file that includes liburing: one ring per worker thread.
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <future>
#include <optional>
#include <thread>

#include "log.h"
#include "worker.h"

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

namespace chainio {

namespace {

constexpr uint64_t kWakeTag = ~0ull;
constexpr uint64_t kPopulateTag = 1ull << 62;  // user_data of a MADVISE linked before slot's read

unsigned round_pow2(unsigned v) {
    unsigned p = 1;
    while (p < v) p <<= 1;
    return p;
}

class UringWorker final : public Worker {
public:
    explicit UringWorker(const WorkerConfig& config) : config_(config) {
        direct_role_ = config.direct_role;
    }

    ~UringWorker() override {
        if (thread_.joinable()) {
            stop_.store(true, std::memory_order_release);
            wake();
            thread_.join();
        }
        if (efd_ >= 0) close(efd_);
    }

    Status start(WorkerInitInfo& info) {
        efd_ = eventfd(0, EFD_CLOEXEC);
        if (efd_ < 0) return Status::from_errno("eventfd");
        std::promise<Status> ready;
        auto fut = ready.get_future();
        thread_ = std::thread([this, &ready, &info] { run(ready, info); });
        Status st = fut.get();
        if (!st.is_ok()) thread_.join();
        return st;
    }

protected:
    void wake() override {
        uint64_t one = 1;
        // Only fails if the counter would overflow, which means a wake-up is pending anyway.
        (void)!::write(efd_, &one, sizeof(one));
    }

private:
    // The ring is created on the worker thread: SINGLE_ISSUER binds it to its creator.
    Status init(WorkerInitInfo& info) {
        // Each op may take two SQEs (populate + read) and the wake-up read one more.
        const unsigned entries = round_pow2(2 * config_.queue_depth + 1);
        io_uring_params params{};
        params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
        int r = io_uring_queue_init_params(entries, &ring_, &params);
        if (r == -EINVAL) {  // kernels before 6.1
            params = {};
            r = io_uring_queue_init_params(entries, &ring_, &params);
        } else if (r == 0) {
            info.single_issuer = true;
        }
        if (r < 0) return Status(r, "io_uring_queue_init");

        chunk_base_ = config_.pool->chunk(config_.first_chunk);
        auto iovs = config_.pool->iovecs(config_.first_chunk, config_.chunk_count);
        if (!iovs.empty()) iov_span_ = iovs.front().iov_len;
        if (config_.register_buffers && !iovs.empty()) {
            r = io_uring_register_buffers(&ring_, iovs.data(), static_cast<unsigned>(iovs.size()));
            if (r == 0) {
                registered_ = true;
            } else {
                info.register_error = -r;
            }
        }
        info.registered_buffers = registered_;
        for (size_t i = 0; i < config_.chunk_count; ++i) {
            free_chunks_.push_back(config_.pool->chunk(config_.first_chunk + i));
        }
        slots_.resize(config_.queue_depth);
        for (unsigned i = config_.queue_depth; i > 0; --i) free_slots_.push_back(i - 1);
        return Status::ok();
    }

    void run(std::promise<Status>& ready, WorkerInitInfo& info) {
        Status st = init(info);
        bool ok = st.is_ok();
        ready.set_value(std::move(st));  // `ready` and `info` are dead after this
        if (!ok) return;
        register_thread();
        loop();
        io_uring_queue_exit(&ring_);
    }

    void arm_wake() {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        io_uring_prep_read(sqe, efd_, &wake_value_, sizeof(wake_value_), 0);
        sqe->user_data = kWakeTag;
    }

    void loop() {
        arm_wake();
        bool woken = true;  // look at the inbox once at start
        for (;;) {
            if (woken) {
                woken = false;
                take_inbox();
            }
            if (stop_.load(std::memory_order_acquire)) {
                if (stash_) cancel_op(*stash_);
                stash_.reset();
                cancel_unclaimed();
                if (inflight_ == 0) return;
            }
            fill();
            int r = io_uring_submit_and_wait(&ring_, 1);
            counters_.enters.fetch_add(1, std::memory_order_relaxed);
            if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
                log::write(log::Level::kError,
                           "worker " + std::to_string(config_.index) +
                               ": io_uring_submit_and_wait: " + Status(r, "").to_string());
            }
            woken = reap();
        }
    }

    // Claims ops into free slots while the queue depth and the pool slice allow.
    void fill() {
        while (!free_slots_.empty()) {
            Op op;
            if (stash_) {
                op = std::move(*stash_);
                stash_.reset();
                if (op.req->failed.load(std::memory_order_acquire)) {
                    finish_op(op, false, false);
                    continue;
                }
            } else if (!claim(op)) {
                return;
            }
            if (op.kind == OpKind::kBounce) {
                if (free_chunks_.empty()) {  // backpressure: wait for a chunk to come back
                    stash_ = std::move(op);
                    return;
                }
                op.chunk = free_chunks_.back();
                free_chunks_.pop_back();
            }
            unsigned slot = free_slots_.back();
            free_slots_.pop_back();
            slots_[slot] = std::move(op);
            ++inflight_;
            prep(slot);
        }
    }

    bool uses_fixed(const Op& op) const { return registered_ && op.kind == OpKind::kBounce; }

    void prep(unsigned slot) {
        Op& op = slots_[slot];
        // SQ entries >= 2 * queue_depth + 1 and at most queue_depth ops (two SQEs each) plus the
        // wake read are in flight, so free SQEs always exist here.
        // Only copies need it: an O_DIRECT read pins (and so faults in) its pages in the kernel.
        if (op.populate && populate_ok_ && op.payload > 0 && op.kind != OpKind::kDirect) {
            // Runs in io-wq (MADVISE is always async), so many ops' pages fault in in parallel
            // while this thread keeps the queue full; the link holds the read back until then.
            auto [addr, len] = populate_span(op);
            io_uring_sqe* pop = io_uring_get_sqe(&ring_);
            io_uring_prep_madvise(pop, addr, static_cast<off_t>(len), MADV_POPULATE_WRITE);
            pop->flags |= IOSQE_IO_LINK;
            pop->user_data = kPopulateTag | slot;
            counters_.populates.fetch_add(1, std::memory_order_relaxed);
            op.populate = false;  // once: retries of this op go straight to the read
        }
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        switch (op.kind) {
            case OpKind::kDirect:
                io_uring_prep_read(sqe, op.file->direct_fd, op.dst, op.len, op.file_off);
                break;
            case OpKind::kBuffered:
                io_uring_prep_read(sqe, op.file->fd, op.dst, op.len, op.file_off);
                break;
            case OpKind::kBounce: {
                std::byte* p = op.chunk + op.filled;
                if (registered_) {
                    auto index = static_cast<int>((op.chunk - chunk_base_) / iov_span_);
                    io_uring_prep_read_fixed(sqe, op.file->direct_fd, p, op.len, op.file_off,
                                             index);
                } else {
                    io_uring_prep_read(sqe, op.file->direct_fd, p, op.len, op.file_off);
                }
                break;
            }
        }
        sqe->user_data = slot;
    }

    void release(unsigned slot) {
        Op& op = slots_[slot];
        if (op.chunk != nullptr) {
            free_chunks_.push_back(op.chunk);
            op.chunk = nullptr;
        }
        free_slots_.push_back(slot);
        --inflight_;
    }

    // Handles all available completions; returns true when the wake-up eventfd fired.
    bool reap() {
        bool woken = false;
        unsigned seen = 0;
        unsigned head;
        io_uring_cqe* cqe;
        io_uring_for_each_cqe(&ring_, head, cqe) {
            ++seen;
            if (cqe->user_data == kWakeTag) {
                woken = true;
                continue;
            }
            if (cqe->user_data & kPopulateTag) {
                // A failed populate cancels its linked read (-ECANCELED below); stop asking.
                if (cqe->res < 0 && populate_ok_) {
                    populate_ok_ = false;
                    log::once(log::Level::kWarn, "populate-failed",
                              std::string("MADV_POPULATE_WRITE through io_uring failed (") +
                                  Status(cqe->res, "").to_string() +
                                  "): destinations fault in during the reads instead");
                }
                continue;
            }
            auto slot = static_cast<unsigned>(cqe->user_data);
            Op& op = slots_[slot];
            if (cqe->res == -ECANCELED && !populate_ok_) {  // the read behind a failed populate
                prep(slot);
                continue;
            }
            bool retried = false;
            OpStep step = advance_op(op, cqe->res, retried);
            if (step == OpStep::kAgain && op.req->failed.load(std::memory_order_acquire)) {
                step = OpStep::kFailed;
            }
            switch (step) {
                case OpStep::kAgain:
                    if (retried) counters_.retries.fetch_add(1, std::memory_order_relaxed);
                    prep(slot);
                    break;
                case OpStep::kDone:
                    finish_op(op, true, uses_fixed(op));
                    release(slot);
                    break;
                case OpStep::kFailed:
                    finish_op(op, false, false);
                    release(slot);
                    break;
            }
        }
        io_uring_cq_advance(&ring_, seen);
        if (woken) arm_wake();
        return woken;
    }

    WorkerConfig config_;
    std::thread thread_;
    io_uring ring_{};
    int efd_ = -1;
    uint64_t wake_value_ = 0;
    bool registered_ = false;
    bool populate_ok_ = true;
    std::byte* chunk_base_ = nullptr;
    size_t iov_span_ = 1;

    std::optional<Op> stash_;  // claimed, waiting for a pool chunk
    std::vector<Op> slots_;    // ops in flight, indexed by user_data
    std::vector<unsigned> free_slots_;
    std::vector<std::byte*> free_chunks_;
    unsigned inflight_ = 0;
};

}  // namespace

int probe_io_uring() {
    io_uring ring{};
    int r = io_uring_queue_init(2, &ring, 0);
    if (r == 0) io_uring_queue_exit(&ring);
    return r;
}

Result<std::unique_ptr<Worker>> make_uring_worker(const WorkerConfig& config, WorkerInitInfo& info) {
    auto worker = std::make_unique<UringWorker>(config);
    CHAINIO_RETURN_IF_ERROR(worker->start(info));
    return std::unique_ptr<Worker>(std::move(worker));
}

}  // namespace chainio
