#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "chainio/host_memory.h"
#include "chainio/status.h"

namespace chainio {

/// Options of a BufferPool.
struct BufferPoolOptions {
    size_t bytes = 64u << 20;        ///< total size, rounded up to a whole number of chunks
    size_t chunk_bytes = 1u << 20;   ///< a multiple of 4096 (so chunks can back AF_XDP frames)
    bool huge_pages = true;          ///< try 2 MiB hugetlb pages, then THP-advised memory
};

/// One page-aligned anonymous region split into fixed-size chunks. The region is what the engine
/// registers as io_uring fixed buffers (and, later, as the AF_XDP UMEM). Its size is fixed at
/// creation: memory use never grows with the amount of data read through it.
/// Not thread-safe to mutate; all accessors are const and safe from any thread.
class BufferPool {
public:
    /// Maps the region. Errors: -EINVAL for a bad size, -ENOMEM when mmap fails.
    static Result<std::unique_ptr<BufferPool>> create(const BufferPoolOptions& options);
    BufferPool(const BufferPool&) = delete;
    BufferPool& operator=(const BufferPool&) = delete;

    std::byte* base() const { return region_->data(); }
    size_t size() const { return region_->size(); }
    size_t chunk_bytes() const { return chunk_bytes_; }
    size_t chunk_count() const { return size() / chunk_bytes_; }
    /// Start of chunk `index` (< chunk_count()).
    std::byte* chunk(size_t index) const { return base() + index * chunk_bytes_; }
    /// True when backed by reserved hugetlb pages (else THP-advised 4 KiB pages).
    bool hugetlb() const { return region_->backing() == PageBacking::HugeTlb; }
    /// The region [first_chunk, first_chunk + count) as iovecs of at most 1 GiB each, the
    /// largest unit io_uring_register_buffers accepts.
    std::vector<iovec> iovecs(size_t first_chunk, size_t count) const;

private:
    BufferPool(std::unique_ptr<HostRegion> region, size_t chunk_bytes)
        : region_(std::move(region)), chunk_bytes_(chunk_bytes) {}
    std::unique_ptr<HostRegion> region_;
    size_t chunk_bytes_;
};

}  // namespace chainio
