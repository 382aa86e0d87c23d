#include "request.h"

#include <cstring>
#include <string>

namespace chainio {

namespace detail {

void Request::fail(Status st) {
    std::lock_guard lock(mu);
    if (status.is_ok()) status = std::move(st);
    failed.store(true, std::memory_order_release);
}

void Request::op_ended(uint64_t bytes) {
    bytes_done.fetch_add(bytes, std::memory_order_relaxed);
    if (ops_left.fetch_sub(1, std::memory_order_acq_rel) == 1) finish_now();
}

void Request::finish_now() {
    {
        std::lock_guard lock(mu);
        finished = true;
    }
    cv.notify_all();
}

}  // namespace detail

namespace {

uint64_t align_down(uint64_t v, uint64_t a) { return v / a * a; }
uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

void push_simple(std::vector<Op>& out, const FileRef& file, OpKind kind, bool flex, uint64_t off,
                 uint64_t len, std::byte* dst, size_t io_bytes) {
    while (len > 0) {
        uint64_t n = std::min<uint64_t>(len, io_bytes);
        Op op;
        op.file = &file;
        op.kind = kind;
        op.flex = flex;
        op.file_off = off;
        op.len = static_cast<uint32_t>(n);
        op.payload = op.len;
        op.dst = dst;
        out.push_back(std::move(op));
        off += n;
        dst += n;
        len -= n;
    }
}

// Covers [off, off+len) with aligned reads into pool chunks of io_bytes.
void push_bounce(std::vector<Op>& out, const FileRef& file, uint64_t off, uint64_t len,
                 std::byte* dst, size_t io_bytes) {
    const uint64_t a = file.dio_align;
    const uint64_t end = off + len;
    while (off < end) {
        uint64_t aoff = align_down(off, a);
        uint64_t alen = std::min<uint64_t>(io_bytes, align_up(end, a) - aoff);
        uint64_t take = std::min<uint64_t>(end, aoff + alen) - off;
        Op op;
        op.file = &file;
        op.kind = OpKind::kBounce;
        op.file_off = aoff;
        op.len = static_cast<uint32_t>(alen);
        op.dst = dst;
        op.copy_skip = static_cast<uint32_t>(off - aoff);
        op.copy_len = static_cast<uint32_t>(take);
        op.payload = op.copy_len;
        out.push_back(std::move(op));
        off += take;
        dst += take;
    }
}

}  // namespace

void plan_extent(const ReadExtent& extent, const FileRef& file, PlanMode mode, size_t io_bytes,
                 std::vector<Op>& out) {
    auto* dst = static_cast<std::byte*>(extent.dst);
    const uint64_t off = extent.offset;
    const uint64_t len = extent.length;
    if (len == 0) return;
    const uint64_t a = file.dio_align;
    const uint64_t end = off + len;
    const auto addr = reinterpret_cast<uintptr_t>(dst);
    // Memory and file offsets share their misalignment: the aligned middle can go straight into
    // the destination; only the head and tail need the page cache or a bounce.
    const bool coaligned = file.direct_fd >= 0 && (addr - off) % a == 0;
    uint64_t body_begin = align_up(off, a);
    uint64_t body_end = align_down(end, a);
    if (mode == PlanMode::kBuffered || !coaligned || body_begin >= body_end) {
        if (mode == PlanMode::kDirect) {
            push_bounce(out, file, off, len, dst, io_bytes);
        } else {
            push_simple(out, file, OpKind::kBuffered, false, off, len, dst, io_bytes);
        }
        return;
    }
    const bool direct = mode == PlanMode::kDirect;
    auto edge = [&](uint64_t from, uint64_t to) {
        if (direct) {
            push_bounce(out, file, from, to - from, dst + (from - off), io_bytes);
        } else {
            push_simple(out, file, OpKind::kBuffered, false, from, to - from, dst + (from - off),
                        io_bytes);
        }
    };
    if (off < body_begin) edge(off, body_begin);
    push_simple(out, file, direct ? OpKind::kDirect : OpKind::kBuffered, !direct, body_begin,
                body_end - body_begin, dst + (body_begin - off), io_bytes);
    if (body_end < end) edge(body_end, end);
}

OpStep advance_op(Op& op, long res, bool& retried) {
    retried = false;
    if (res == -EINTR || res == -EAGAIN) {
        if (++op.retries > 1000) {
            op.req->fail(Status(static_cast<int>(res), "read(" + op.file->name + ") at offset " +
                                                           std::to_string(op.file_off) +
                                                           ": retried 1000 times"));
            return OpStep::kFailed;
        }
        retried = true;
        return OpStep::kAgain;
    }
    if (res < 0) {
        op.req->fail(Status(static_cast<int>(res), "read(" + op.file->name + ") at offset " +
                                                       std::to_string(op.file_off)));
        return OpStep::kFailed;
    }
    const auto n = static_cast<uint64_t>(res);
    if (op.kind == OpKind::kBounce) {
        op.filled += static_cast<uint32_t>(n);
        op.file_off += n;
        op.len -= static_cast<uint32_t>(n);
        if (op.filled >= op.copy_skip + op.copy_len) {
            std::memcpy(op.dst, op.chunk + op.copy_skip, op.copy_len);
            return OpStep::kDone;
        }
        // A short O_DIRECT read ending off-alignment means end of file.
        if (n == 0 || n % op.file->dio_align != 0) {
            op.req->fail(Status(EIO, op.file->name + ": unexpected end of file at offset " +
                                         std::to_string(op.file_off) +
                                         " (file shrank during the read?)"));
            return OpStep::kFailed;
        }
        retried = true;
        return OpStep::kAgain;
    }
    if (n == 0 || (op.kind == OpKind::kDirect && n < op.len && n % op.file->dio_align != 0)) {
        op.req->fail(Status(EIO, op.file->name + ": unexpected end of file at offset " +
                                     std::to_string(op.file_off + n) +
                                     " (file shrank during the read?)"));
        return OpStep::kFailed;
    }
    op.file_off += n;
    op.dst += n;
    op.len -= static_cast<uint32_t>(n);
    if (op.len == 0) return OpStep::kDone;
    retried = true;
    return OpStep::kAgain;
}

}  // namespace chainio
