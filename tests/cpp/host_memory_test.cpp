#include "chainio/host_memory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "test_util.h"

namespace chainio {
namespace {

constexpr size_t kHuge = 2u << 20;

// A field of /proc/meminfo ("HugePages_Free", ...), or -1.
long meminfo(const std::string& key) {
    std::ifstream in("/proc/meminfo");
    std::string k;
    long v;
    std::string rest;
    while (in >> k >> v) {
        std::getline(in, rest);
        if (k == key + ":") return v;
    }
    return -1;
}

// This process's hugetlb pages in kB (/proc/self/status HugetlbPages), or -1.
long own_hugetlb_kb() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("HugetlbPages:", 0) == 0) return std::stol(line.substr(13));
    }
    return -1;
}

TEST(HostRegion, SizesNearTheTopOfSizeTAreEnomemNotAWrap) {
    for (bool transparent : {false, true}) {
        HostRegionOptions o;
        o.transparent = transparent;
        for (size_t bytes : {size_t(1) << 50, ~size_t(0) - (1u << 20), ~size_t(0)}) {
            auto r = HostRegion::allocate(bytes, o);
            EXPECT_EQ(r.status().code(), -ENOMEM) << bytes;
        }
    }
}

TEST(HostRegion, SmallRegionsArePlainPagesAndWritable) {
    auto r = HostRegion::allocate(5000);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    auto& region = *r.value();
    EXPECT_EQ(region.backing(), PageBacking::Small) << "below one huge page neither pool nor THP";
    EXPECT_EQ(region.size(), 5000u);
    EXPECT_EQ(region.mapped_bytes(), 8192u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(region.data()) % 4096, 0u);
    std::memset(region.data(), 0xab, region.size());
    EXPECT_EQ(static_cast<unsigned char>(region.data()[4999]), 0xab);
}

TEST(HostRegion, WithoutThePoolLargeRegionsAreHugePageAlignedForThp) {
    HostRegionOptions o;
    o.hugetlb = false;
    auto r = HostRegion::allocate(3 * kHuge + 5, o);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r.value()->backing(), PageBacking::Transparent);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.value()->data()) % kHuge, 0u);
    std::memset(r.value()->data(), 1, r.value()->size());

    o.transparent = false;
    auto plain = HostRegion::allocate(3 * kHuge, o);
    ASSERT_TRUE(plain.is_ok());
    EXPECT_EQ(plain.value()->backing(), PageBacking::Small);
}

TEST(HostRegion, TakesPoolPagesWhenThePoolHasRoomAndGivesThemBack) {
    // A wide margin: ctest runs other tests beside this one, and their engines' buffer pools
    // take pool pages too while they run.
    testing::HugetlbPoolGrowth pool(33 + 256);
    if (pool.added() < 33 + 256) GTEST_SKIP() << "cannot grow vm.nr_hugepages here (needs root and free memory)";
    const auto before = host_memory_stats();
    const long own0 = own_hugetlb_kb();
    {
        auto r = HostRegion::allocate(32 * kHuge + 1);  // 33 pages with the tail
        ASSERT_TRUE(r.is_ok()) << r.status().to_string();
        auto& region = *r.value();
        ASSERT_EQ(region.backing(), PageBacking::HugeTlb);
        EXPECT_EQ(region.mapped_bytes(), 33 * kHuge);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(region.data()) % kHuge, 0u);
        EXPECT_GE(meminfo("HugePages_Rsvd"), 33) << "reserved at mmap: no SIGBUS on touch";
        EXPECT_EQ(region.data()[region.size() - 1], std::byte{0}) << "fresh pool pages are zeroed";
        for (size_t off = 0; off < region.size(); off += 4096) region.data()[off] = std::byte{7};
        EXPECT_EQ(region.data()[32 * kHuge], std::byte{7});
        EXPECT_EQ(own_hugetlb_kb(), own0 + 33 * 2048) << "every touched page is a 2 MiB pool page";
        const auto after = host_memory_stats();
        EXPECT_EQ(after.hugetlb_regions, before.hugetlb_regions + 1);
        EXPECT_EQ(after.hugetlb_bytes, before.hugetlb_bytes + 32 * kHuge + 1);
    }
    EXPECT_EQ(own_hugetlb_kb(), own0) << "unmapping gives the pages back";
}

TEST(HostRegion, AShortPoolFallsBackToPlainPagesAndIsCounted) {
    const long free_pages = meminfo("HugePages_Free");
    ASSERT_GE(free_pages, 0);
    const auto before = host_memory_stats();
    // Far more than the pool has free (even if a concurrent test frees its pages meanwhile): the
    // mapping cannot be reserved, so no hugetlb. Only one byte is touched.
    auto r = HostRegion::allocate((static_cast<size_t>(free_pages) + 1024) * kHuge);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_NE(r.value()->backing(), PageBacking::HugeTlb);
    EXPECT_EQ(host_memory_stats().hugetlb_refused, before.hugetlb_refused + 1);
    r.value()->data()[0] = std::byte{1};
}

TEST(HostRegion, RegionsBelowTheThresholdNeverUseThePool) {
    testing::HugetlbPoolGrowth pool(4);
    if (pool.added() < 4) GTEST_SKIP() << "cannot grow vm.nr_hugepages here";
    auto r = HostRegion::allocate(4 * kHuge);  // below the 32 MiB default threshold
    ASSERT_TRUE(r.is_ok());
    EXPECT_NE(r.value()->backing(), PageBacking::HugeTlb);
}

TEST(HostRegion, ZeroBytesIsRefused) {
    EXPECT_EQ(HostRegion::allocate(0).status().code(), -EINVAL);
}

}  // namespace
}  // namespace chainio
