#include "chainio/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>

#include "test_util.h"

namespace chainio {
namespace {

TEST(BufferPool, ChunksArePageAlignedAndCoverTheRegion) {
    auto pool = BufferPool::create({.bytes = (10u << 20) + 1, .chunk_bytes = 1u << 20});
    ASSERT_TRUE(pool.is_ok()) << pool.status().to_string();
    auto& p = *pool.value();
    EXPECT_EQ(p.size(), 11u << 20) << "rounded up to whole chunks";
    EXPECT_EQ(p.chunk_count(), 11u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p.base()) % 4096, 0u);
    for (size_t i = 0; i < p.chunk_count(); ++i) {
        EXPECT_EQ(p.chunk(i), p.base() + i * (1u << 20));
        std::memset(p.chunk(i), static_cast<int>(i), p.chunk_bytes());  // writable
    }
}

TEST(BufferPool, FrameSizedChunksForAfXdp) {
    for (size_t chunk : {2048u * 2, 4096u}) {
        auto pool = BufferPool::create({.bytes = 1u << 20, .chunk_bytes = chunk});
        ASSERT_TRUE(pool.is_ok());
        EXPECT_EQ(pool.value()->chunk_count(), (1u << 20) / chunk);
    }
}

TEST(BufferPool, BadSizesAreRejected) {
    EXPECT_EQ(BufferPool::create({.bytes = 1 << 20, .chunk_bytes = 1000}).status().code(), -EINVAL);
    EXPECT_EQ(BufferPool::create({.bytes = 1 << 20, .chunk_bytes = 0}).status().code(), -EINVAL);
    EXPECT_EQ(BufferPool::create({.bytes = 0}).status().code(), -EINVAL);
}

TEST(BufferPool, IovecsSplitAtOneGibibyteOnChunkBoundaries) {
    auto pool = BufferPool::create({.bytes = 3u << 20, .chunk_bytes = 1u << 20});
    ASSERT_TRUE(pool.is_ok());
    auto iovs = pool.value()->iovecs(1, 2);
    ASSERT_EQ(iovs.size(), 1u);
    EXPECT_EQ(iovs[0].iov_base, pool.value()->chunk(1));
    EXPECT_EQ(iovs[0].iov_len, 2u << 20);
}

TEST(BufferPool, UsesReservedHugePagesAndFallsBackWithout) {
    {
        auto pool = BufferPool::create({.bytes = 8u << 20, .chunk_bytes = 1u << 20});
        ASSERT_TRUE(pool.is_ok());
        std::ifstream in("/proc/sys/vm/nr_hugepages");
        long reserved = 0;
        in >> reserved;
        if (reserved == 0) {
            EXPECT_FALSE(pool.value()->hugetlb()) << "no pages reserved: THP path";
        }
    }
    testing::HugetlbPoolGrowth pages(4);
    if (pages.added() < 4) GTEST_SKIP() << "cannot reserve huge pages (not root?)";
    auto pool = BufferPool::create({.bytes = 8u << 20, .chunk_bytes = 1u << 20});
    ASSERT_TRUE(pool.is_ok());
    EXPECT_TRUE(pool.value()->hugetlb());
    std::memset(pool.value()->base(), 1, pool.value()->size());
    auto no_huge = BufferPool::create({.bytes = 8u << 20, .chunk_bytes = 1u << 20, .huge_pages = false});
    ASSERT_TRUE(no_huge.is_ok());
    EXPECT_FALSE(no_huge.value()->hugetlb());
}

}  // namespace
}  // namespace chainio
