#include "chainio/buffer_pool.h"

#include <string>

namespace chainio {

namespace {
constexpr size_t kMaxIovec = 1u << 30;  // io_uring refuses registered buffers above 1 GiB
}  // namespace

Result<std::unique_ptr<BufferPool>> BufferPool::create(const BufferPoolOptions& options) {
    const size_t chunk = options.chunk_bytes;
    if (chunk == 0 || chunk % 4096 != 0) {
        return Status(EINVAL, "BufferPool: chunk_bytes " + std::to_string(chunk) +
                                  " is not a positive multiple of 4096");
    }
    if (options.bytes == 0) return Status(EINVAL, "BufferPool: size is 0");
    if (options.bytes > (size_t(1) << 48))  // keeps the rounding below from wrapping
        return Status(ENOMEM, "BufferPool: " + std::to_string(options.bytes) +
                                  " bytes is more memory than a machine has");
    size_t size = (options.bytes + chunk - 1) / chunk * chunk;

    HostRegionOptions ro;
    ro.hugetlb = options.huge_pages;
    ro.hugetlb_min_bytes = 0;  // the pool is the engine's long-lived staging memory: always try
    ro.transparent = options.huge_pages;
    auto region = HostRegion::allocate(size, ro);
    if (!region) return Status(region.status().code(), "BufferPool: " + region.status().message());
    return std::unique_ptr<BufferPool>(new BufferPool(std::move(region).value(), chunk));
}

std::vector<iovec> BufferPool::iovecs(size_t first_chunk, size_t count) const {
    std::vector<iovec> out;
    std::byte* p = chunk(first_chunk);
    size_t left = count * chunk_bytes_;
    const size_t step = kMaxIovec / chunk_bytes_ * chunk_bytes_;  // keep chunks whole per iovec
    while (left > 0) {
        size_t n = left < step ? left : step;
        out.push_back({p, n});
        p += n;
        left -= n;
    }
    return out;
}

}  // namespace chainio
