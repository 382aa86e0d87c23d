#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "chainio/status.h"

namespace chainio {

/// What backs a HostRegion's pages.
enum class PageBacking {
    HugeTlb,      ///< 2 MiB pages reserved from the hugetlb pool (vm.nr_hugepages) at mmap time
    Transparent,  ///< 4 KiB-page mapping, 2 MiB-aligned and advised MADV_HUGEPAGE (THP)
    Small,        ///< plain 4 KiB pages
};

const char* to_string(PageBacking backing);

struct HostRegionOptions {
    /// Take 2 MiB pages from the hugetlb pool when it has enough free ones for the whole region.
    /// Why it matters: on a VM whose host backs guest memory lazily, faulting in fresh 4 KiB pages
    /// runs at ~2 GB/s, while pool pages (backed once, kept by the guest) only need the kernel's
    /// zeroing (~12 GB/s). See docs/BENCHMARKS.md, load_bench.
    bool hugetlb = true;
    /// Regions smaller than this never use the pool: the tail of the last 2 MiB page is wasted.
    size_t hugetlb_min_bytes = 32u << 20;
    /// Otherwise align to 2 MiB and advise THP (else plain pages).
    bool transparent = true;
};

/// One anonymous, private, read-write mapping, unmapped on destruction. Its pages are not touched
/// here: the first write (or an O_DIRECT read landing in them) faults them in. The region can
/// be used from any thread; a hugetlb region never SIGBUSes on first touch because the pages
/// are reserved when it is mapped (no MAP_NORESERVE).
class HostRegion {
public:
    /// Errors: -EINVAL for size 0, -ENOMEM (with the size) when no mapping can be made.
    static Result<std::unique_ptr<HostRegion>> allocate(size_t bytes, const HostRegionOptions& options = {});
    ~HostRegion();
    HostRegion(const HostRegion&) = delete;
    HostRegion& operator=(const HostRegion&) = delete;

    std::byte* data() const { return data_; }
    size_t size() const { return size_; }           ///< the bytes asked for
    size_t mapped_bytes() const { return mapped_; }  ///< what the mapping really holds
    PageBacking backing() const { return backing_; }

private:
    HostRegion(std::byte* data, size_t size, size_t mapped, PageBacking backing)
        : data_(data), size_(size), mapped_(mapped), backing_(backing) {}
    std::byte* data_;
    size_t size_;
    size_t mapped_;
    PageBacking backing_;
};

/// Process-wide counters of HostRegion::allocate, by backing (bytes asked for, and regions).
struct HostMemoryStats {
    uint64_t hugetlb_bytes = 0, hugetlb_regions = 0;
    uint64_t transparent_bytes = 0, transparent_regions = 0;
    uint64_t small_bytes = 0, small_regions = 0;
    uint64_t hugetlb_refused = 0;  ///< regions that asked for the pool and did not get it
};
HostMemoryStats host_memory_stats();


}  // namespace chainio
