#include "worker.h"

#include <pthread.h>

namespace chainio {

void Worker::enqueue(std::shared_ptr<detail::Request> req) {
    {
        std::lock_guard lock(inbox_mu_);
        inbox_.push_back(std::move(req));
    }
    wake();
}

void Worker::take_inbox() {
    std::lock_guard lock(inbox_mu_);
    take_inbox_locked();
}

void Worker::take_inbox_locked() {
    for (auto& req : inbox_) jobs_.push_back(std::move(req));
    inbox_.clear();
}

bool Worker::claim(Op& out) {
    while (jobs_head_ < jobs_.size()) {
        const std::shared_ptr<detail::Request>& job = jobs_[jobs_head_];
        size_t index = job->next_op.fetch_add(1, std::memory_order_relaxed);
        if (index >= job->ops.size()) {
            jobs_[jobs_head_++].reset();
            if (jobs_head_ == jobs_.size()) {
                jobs_.clear();
                jobs_head_ = 0;
            }
            continue;
        }
        out = job->ops[index];
        out.req = job;
        if (job->failed.load(std::memory_order_acquire)) {
            finish_op(out, false, false);
            continue;
        }
        if (out.flex && direct_role_) out.kind = OpKind::kDirect;
        return true;
    }
    return false;
}

void Worker::cancel_unclaimed() {
    Op op;
    while (claim(op)) cancel_op(op);
}

void Worker::finish_op(Op& op, bool ok, bool fixed) {
    if (ok) {
        counters_.bytes.fetch_add(op.payload, std::memory_order_relaxed);
        counters_.ops.fetch_add(1, std::memory_order_relaxed);
        auto& kind = op.kind == OpKind::kDirect   ? counters_.direct
                     : op.kind == OpKind::kBounce ? counters_.bounce
                                                  : counters_.buffered;
        kind.fetch_add(1, std::memory_order_relaxed);
        if (fixed) counters_.fixed.fetch_add(1, std::memory_order_relaxed);
    }
    auto req = std::move(op.req);
    req->op_ended(ok ? op.payload : 0);
}

void Worker::cancel_op(Op& op) {
    op.req->fail(Status(ECANCELED, "engine shut down before the read ran"));
    finish_op(op, false, false);
}

void Worker::register_thread() {
    clockid_t clock;
    if (pthread_getcpuclockid(pthread_self(), &clock) != 0) return;
    std::lock_guard lock(threads_mu_);
    cpu_clocks_.push_back(clock);
}

void Worker::add_to(EngineStats& stats) const {
    stats.bytes_read += counters_.bytes.load(std::memory_order_relaxed);
    stats.ops += counters_.ops.load(std::memory_order_relaxed);
    stats.direct_ops += counters_.direct.load(std::memory_order_relaxed);
    stats.bounce_ops += counters_.bounce.load(std::memory_order_relaxed);
    stats.buffered_ops += counters_.buffered.load(std::memory_order_relaxed);
    stats.fixed_ops += counters_.fixed.load(std::memory_order_relaxed);
    stats.retries += counters_.retries.load(std::memory_order_relaxed);
    stats.enter_calls += counters_.enters.load(std::memory_order_relaxed);
    stats.populate_ops += counters_.populates.load(std::memory_order_relaxed);

    uint64_t busy = 0;
    std::lock_guard lock(threads_mu_);
    for (clockid_t clock : cpu_clocks_) {
        timespec ts{};
        if (clock_gettime(clock, &ts) == 0) busy += ts.tv_sec * 1'000'000'000ull + ts.tv_nsec;
    }
    auto wall = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now() - started_)
                                          .count()) *
                cpu_clocks_.size();
    stats.busy_ns += busy;
    stats.idle_ns += wall > busy ? wall - busy : 0;
}

}  // namespace chainio
