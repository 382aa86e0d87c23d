#include "chainio/host_memory.h"

#include <linux/mman.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <string>

namespace chainio {

namespace {
constexpr size_t kHugePage = 2u << 20;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Counters {
    std::atomic<uint64_t> bytes[3]{}, regions[3]{};
    std::atomic<uint64_t> hugetlb_refused{0};
} g_counters;

void count(PageBacking b, size_t bytes) {
    g_counters.bytes[static_cast<int>(b)] += bytes;
    g_counters.regions[static_cast<int>(b)] += 1;
}
}  // namespace

const char* to_string(PageBacking backing) {
    switch (backing) {
        case PageBacking::HugeTlb: return "hugetlb";
        case PageBacking::Transparent: return "thp";
        case PageBacking::Small: return "4k";
    }
    return "?";
}

Result<std::unique_ptr<HostRegion>> HostRegion::allocate(size_t bytes, const HostRegionOptions& options) {
    if (bytes == 0) return Status(EINVAL, "HostRegion: size is 0");
    if (options.hugetlb && bytes >= options.hugetlb_min_bytes) {
        const size_t len = round_up(bytes, kHugePage);
        void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
        if (mem != MAP_FAILED) {
            count(PageBacking::HugeTlb, bytes);
            return std::unique_ptr<HostRegion>(
                new HostRegion(static_cast<std::byte*>(mem), bytes, len, PageBacking::HugeTlb));
        }
        g_counters.hugetlb_refused += 1;  // pool absent or short: the plain path below
    }
    const size_t len = round_up(bytes, 4096);
    if (options.transparent && len >= kHugePage) {
        // Over-map by one huge page so the region can start on a 2 MiB boundary, then give back
        // the unused head and tail: THP only backs whole, aligned 2 MiB ranges.
        void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) {
            return Status::from_errno("HostRegion: mmap of " + std::to_string(bytes) + " bytes");
        }
        auto start = reinterpret_cast<uintptr_t>(raw);
        const uintptr_t aligned = round_up(start, kHugePage);
        if (aligned > start) munmap(raw, aligned - start);
        const uintptr_t end = start + len + kHugePage;
        if (end > aligned + len) munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
        auto* mem = reinterpret_cast<std::byte*>(aligned);
        madvise(mem, len, MADV_HUGEPAGE);  // advisory: THP may be off ("never"), then 4 KiB pages
        count(PageBacking::Transparent, bytes);
        return std::unique_ptr<HostRegion>(new HostRegion(mem, bytes, len, PageBacking::Transparent));
    }
    void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return Status::from_errno("HostRegion: mmap of " + std::to_string(bytes) + " bytes");
    count(PageBacking::Small, bytes);
    return std::unique_ptr<HostRegion>(new HostRegion(static_cast<std::byte*>(mem), bytes, len, PageBacking::Small));
}

HostRegion::~HostRegion() { munmap(data_, mapped_); }

HostMemoryStats host_memory_stats() {
    HostMemoryStats s;
    auto b = [](PageBacking p) { return g_counters.bytes[static_cast<int>(p)].load(); };
    auto r = [](PageBacking p) { return g_counters.regions[static_cast<int>(p)].load(); };
    s.hugetlb_bytes = b(PageBacking::HugeTlb);
    s.hugetlb_regions = r(PageBacking::HugeTlb);
    s.transparent_bytes = b(PageBacking::Transparent);
    s.transparent_regions = r(PageBacking::Transparent);
    s.small_bytes = b(PageBacking::Small);
    s.small_regions = r(PageBacking::Small);
    s.hugetlb_refused = g_counters.hugetlb_refused.load();
    return s;
}

}  // namespace chainio
