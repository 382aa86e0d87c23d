#include "chainio/buffer_pool.h"

#include <linux/mman.h>
#include <sys/mman.h>

#include <string>

namespace chainio {

namespace {
constexpr size_t kHugePage = 2u << 20;
constexpr size_t kMaxIovec = 1u << 30;  // io_uring refuses registered buffers above 1 GiB
}  // namespace

Result<std::unique_ptr<BufferPool>> BufferPool::create(const BufferPoolOptions& options) {
    const size_t chunk = options.chunk_bytes;
    if (chunk == 0 || chunk % 4096 != 0) {
        return Status(EINVAL, "BufferPool: chunk_bytes " + std::to_string(chunk) +
                                  " is not a positive multiple of 4096");
    }
    if (options.bytes == 0) return Status(EINVAL, "BufferPool: size is 0");
    size_t size = (options.bytes + chunk - 1) / chunk * chunk;

    void* mem = MAP_FAILED;
    bool hugetlb = false;
    if (options.huge_pages && size % kHugePage == 0) {
        mem = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
        hugetlb = mem != MAP_FAILED;
    }
    if (mem == MAP_FAILED) {
        mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) return Status::from_errno("BufferPool: mmap of " + std::to_string(size) + " bytes");
        if (options.huge_pages) madvise(mem, size, MADV_HUGEPAGE);  // advisory; failure is harmless
    }
    return std::unique_ptr<BufferPool>(
        new BufferPool(static_cast<std::byte*>(mem), size, chunk, hugetlb));
}

BufferPool::~BufferPool() { munmap(base_, size_); }

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
