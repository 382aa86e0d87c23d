#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "chainio/engine.h"
#include "file.h"

namespace chainio {

namespace detail {
struct Request;
}  // namespace detail

enum class OpKind : uint8_t {
    kDirect,    // O_DIRECT straight into dst: file_off, dst and len all dio-aligned
    kBuffered,  // page cache read into dst
    kBounce,    // O_DIRECT of an aligned range into a pool chunk, then copy out
};

/// One read of at most io_bytes. Owned by exactly one worker at a time.
struct Op {
    std::shared_ptr<detail::Request> req;  // set when a worker claims the op
    const FileRef* file = nullptr;
    OpKind kind = OpKind::kBuffered;
    uint64_t file_off = 0;   // next file offset to read
    uint32_t len = 0;        // bytes left to read at file_off (kBounce: left of the aligned range)
    std::byte* dst = nullptr;  // kDirect/kBuffered: where file_off lands; kBounce: copy target
    uint32_t copy_skip = 0;  // kBounce: bytes at the start of the aligned range not wanted
    uint32_t copy_len = 0;   // kBounce: bytes wanted
    uint32_t filled = 0;     // kBounce: bytes in the chunk so far
    std::byte* chunk = nullptr;  // kBounce: pool chunk, assigned by the worker
    uint32_t payload = 0;    // bytes this op delivers to the caller
    uint16_t retries = 0;
    bool flex = false;       // kBuffered that a direct-role worker may run as kDirect (hot data)
    bool populate = false;   // fault the destination in (MADV_POPULATE_WRITE) before the read
};

namespace detail {

/// Shared state of one read() call. Ops report into it from worker threads; handles wait on it.
struct Request {
    std::vector<Op> ops;               // planned ops, claimed by workers through next_op
    std::atomic<size_t> next_op{0};    // pull cursor: the first op no worker has claimed
    uint64_t bytes_total = 0;
    std::atomic<uint64_t> bytes_done{0};
    std::atomic<uint64_t> ops_left{0};
    std::atomic<bool> failed{false};
    std::vector<std::shared_ptr<FileRef>> files;  // kept open until the request ends

    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;  // guarded by mu
    Status status;          // guarded by mu; first error wins

    /// Records an error (the first one is kept); remaining ops of the request are skipped.
    void fail(Status st);
    /// Called once per op when it ends (successfully or not).
    void op_ended(uint64_t bytes);
    /// Marks a request with no ops as finished.
    void finish_now();
};

}  // namespace detail

/// How one extent is planned.
enum class PlanMode {
    kDirect,    // O_DIRECT body, bounced head/tail
    kBuffered,  // page cache only
    kHybrid,    // page cache, but the aligned body may be claimed as O_DIRECT (see Op::flex)
};

/// The page-aligned span covering an op's destination bytes (what populate faults in).
inline std::pair<std::byte*, size_t> populate_span(const Op& op) {
    auto begin = reinterpret_cast<uintptr_t>(op.dst) / 4096 * 4096;
    auto end = (reinterpret_cast<uintptr_t>(op.dst) + op.payload + 4095) / 4096 * 4096;
    return {reinterpret_cast<std::byte*>(begin), end - begin};
}

/// Splits one extent into ops of at most io_bytes.
void plan_extent(const ReadExtent& extent, const FileRef& file, PlanMode mode, size_t io_bytes,
                 std::vector<Op>& out);

/// Outcome of feeding a completion to an op.
enum class OpStep { kDone, kAgain, kFailed };

/// Applies a read result (bytes or -errno) to `op`: advances it, copies bounce data out,
/// and decides whether it is done, must be resubmitted, or failed (the request is failed then).
/// `retried` is set when a short read, EINTR or EAGAIN made it resubmit.
OpStep advance_op(Op& op, long res, bool& retried);

}  // namespace chainio
