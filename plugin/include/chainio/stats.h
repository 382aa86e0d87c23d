#pragma once

#include <cstdint>

namespace chainio {

/// Counters of one Engine since its creation; a snapshot, summed over all workers.
struct EngineStats {
    uint64_t bytes_read = 0;        ///< bytes delivered to callers
    uint64_t requests = 0;          ///< read() calls accepted
    uint64_t ops = 0;               ///< read operations completed (one per I/O of <= io_bytes)
    uint64_t direct_ops = 0;        ///< of which O_DIRECT straight into caller memory
    uint64_t bounce_ops = 0;        ///< of which O_DIRECT into a pool chunk, then copied
    uint64_t buffered_ops = 0;      ///< of which through the page cache
    uint64_t fixed_ops = 0;         ///< ops that used a registered buffer (READ_FIXED)
    uint64_t retries = 0;           ///< short reads, EINTR and EAGAIN resubmitted
    uint64_t populate_ops = 0;      ///< MADV_POPULATE_WRITE issued ahead of reads
    uint64_t enter_calls = 0;       ///< io_uring_enter system calls (0 on the pread backend)
    uint64_t syscalls_avoided = 0;  ///< ops - enter_calls: what a pread-per-op loop would add
    uint64_t busy_ns = 0;           ///< worker time not spent waiting for completions
    uint64_t idle_ns = 0;           ///< worker time blocked waiting for completions or work
};

}  // namespace chainio
