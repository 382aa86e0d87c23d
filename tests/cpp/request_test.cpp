// The op planner and the op state machine, fed with the results io_uring or pread would give.
#include "request.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

namespace chainio {
namespace {

// A FileRef with a made-up O_DIRECT descriptor: nothing is read here, and the number is
// forgotten before FileRef's destructor could close it.
struct FakeFile : FileRef {
    explicit FakeFile(uint64_t file_size, bool direct = true) {
        name = "test.bin";
        size = file_size;
        dio_align = 512;
        direct_fd = direct ? 1000 : -1;
    }
    ~FakeFile() { direct_fd = -1; }
};

uint64_t payload_sum(const std::vector<Op>& ops) {
    return std::accumulate(ops.begin(), ops.end(), uint64_t{0},
                           [](uint64_t a, const Op& op) { return a + op.payload; });
}

TEST(PlanExtent, AlignedExtentGoesStraightIn) {
    FakeFile f(8 << 20);
    alignas(4096) static std::byte dst[4 << 20];
    std::vector<Op> ops;
    plan_extent({"", -1, 0, 4 << 20, dst}, f, PlanMode::kDirect, 1 << 20, ops);
    ASSERT_EQ(ops.size(), 4u);
    for (size_t i = 0; i < ops.size(); ++i) {
        EXPECT_EQ(ops[i].kind, OpKind::kDirect);
        EXPECT_EQ(ops[i].file_off, i << 20);
        EXPECT_EQ(ops[i].dst, dst + (i << 20));
        EXPECT_EQ(ops[i].len, 1u << 20);
    }
}

TEST(PlanExtent, CoalignedExtentBouncesOnlyHeadAndTail) {
    FakeFile f(8 << 20);
    alignas(4096) static std::byte mem[4 << 20];
    std::byte* dst = mem + 100;  // file offset 100 too: both 100 mod 512
    std::vector<Op> ops;
    plan_extent({"", -1, 100, 3000000, dst}, f, PlanMode::kDirect, 1 << 20, ops);
    ASSERT_GE(ops.size(), 3u);
    EXPECT_EQ(ops.front().kind, OpKind::kBounce);
    EXPECT_EQ(ops.front().file_off, 0u);
    EXPECT_EQ(ops.front().copy_skip, 100u);
    EXPECT_EQ(ops.front().copy_len, 412u);
    EXPECT_EQ(ops.back().kind, OpKind::kBounce);
    EXPECT_EQ(ops.back().file_off % 512, 0u);
    for (size_t i = 1; i + 1 < ops.size(); ++i) {
        EXPECT_EQ(ops[i].kind, OpKind::kDirect);
        EXPECT_EQ(ops[i].file_off % 512, 0u);
        EXPECT_EQ(reinterpret_cast<uintptr_t>(ops[i].dst) % 512, 0u);
        EXPECT_EQ(ops[i].len % 512, 0u);
    }
    EXPECT_EQ(payload_sum(ops), 3000000u);
}

TEST(PlanExtent, MisalignedDestinationBouncesEverything) {
    FakeFile f(8 << 20);
    alignas(4096) static std::byte mem[4 << 20];
    std::vector<Op> ops;
    plan_extent({"", -1, 0, 3 << 20, mem + 1}, f, PlanMode::kDirect, 1 << 20, ops);
    for (const Op& op : ops) {
        EXPECT_EQ(op.kind, OpKind::kBounce);
        EXPECT_LE(op.len, 1u << 20);
        EXPECT_EQ(op.file_off % 512, 0u);
    }
    EXPECT_EQ(payload_sum(ops), 3u << 20);
}

TEST(PlanExtent, HybridMarksOnlyTheAlignedBodyFlexible) {
    FakeFile f(8 << 20);
    alignas(4096) static std::byte mem[4 << 20];
    std::vector<Op> ops;
    plan_extent({"", -1, 10, 3 << 20, mem + 10}, f, PlanMode::kHybrid, 1 << 20, ops);
    EXPECT_FALSE(ops.front().flex);
    EXPECT_FALSE(ops.back().flex);
    for (const Op& op : ops) EXPECT_EQ(op.kind, OpKind::kBuffered);
    size_t flex = 0;
    for (const Op& op : ops) flex += op.flex;
    EXPECT_EQ(flex, ops.size() - 2);
    // Without an O_DIRECT descriptor nothing may become direct.
    FakeFile no_direct(8 << 20, false);
    ops.clear();
    plan_extent({"", -1, 0, 3 << 20, mem}, no_direct, PlanMode::kHybrid, 1 << 20, ops);
    for (const Op& op : ops) EXPECT_FALSE(op.flex);
}

class AdvanceOp : public ::testing::Test {
protected:
    void SetUp() override { req_ = std::make_shared<detail::Request>(); }
    Op direct_op(uint64_t off, uint32_t len) {
        Op op;
        op.req = req_;
        op.file = &file_;
        op.kind = OpKind::kDirect;
        op.file_off = off;
        op.len = len;
        op.payload = len;
        op.dst = buf_;
        return op;
    }
    FakeFile file_{1 << 20};
    std::shared_ptr<detail::Request> req_;
    alignas(4096) std::byte buf_[1 << 16];
};

TEST_F(AdvanceOp, ShortReadResubmitsTheRest) {
    Op op = direct_op(0, 65536);
    bool retried = false;
    EXPECT_EQ(advance_op(op, 4096, retried), OpStep::kAgain);
    EXPECT_TRUE(retried);
    EXPECT_EQ(op.file_off, 4096u);
    EXPECT_EQ(op.len, 61440u);
    EXPECT_EQ(op.dst, buf_ + 4096);
    EXPECT_EQ(advance_op(op, 61440, retried), OpStep::kDone);
    EXPECT_FALSE(req_->failed);
}

TEST_F(AdvanceOp, EintrAndEagainRetryWithoutMoving) {
    Op op = direct_op(512, 1024);
    bool retried = false;
    EXPECT_EQ(advance_op(op, -EINTR, retried), OpStep::kAgain);
    EXPECT_EQ(advance_op(op, -EAGAIN, retried), OpStep::kAgain);
    EXPECT_TRUE(retried);
    EXPECT_EQ(op.file_off, 512u);
    EXPECT_EQ(op.len, 1024u);
    EXPECT_EQ(advance_op(op, 1024, retried), OpStep::kDone);
}

TEST_F(AdvanceOp, EndlessEagainGivesUp) {
    Op op = direct_op(0, 512);
    bool retried = false;
    OpStep step = OpStep::kAgain;
    for (int i = 0; i < 2000 && step == OpStep::kAgain; ++i) step = advance_op(op, -EAGAIN, retried);
    EXPECT_EQ(step, OpStep::kFailed);
    EXPECT_EQ(req_->status.code(), -EAGAIN);
}

TEST_F(AdvanceOp, ZeroBytesIsUnexpectedEof) {
    Op op = direct_op(4096, 4096);
    bool retried = false;
    EXPECT_EQ(advance_op(op, 0, retried), OpStep::kFailed);
    EXPECT_TRUE(req_->failed);
    EXPECT_EQ(req_->status.code(), -EIO);
    EXPECT_NE(req_->status.message().find("test.bin"), std::string::npos);
    EXPECT_NE(req_->status.message().find("4096"), std::string::npos);
}

TEST_F(AdvanceOp, UnalignedShortDirectReadIsEof) {
    Op op = direct_op(0, 4096);
    bool retried = false;
    EXPECT_EQ(advance_op(op, 1000, retried), OpStep::kFailed);
    EXPECT_EQ(req_->status.code(), -EIO);
}

TEST_F(AdvanceOp, ErrorsCarryErrnoAndOffset) {
    Op op = direct_op(8192, 512);
    bool retried = false;
    EXPECT_EQ(advance_op(op, -EIO, retried), OpStep::kFailed);
    EXPECT_EQ(req_->status.code(), -EIO);
    EXPECT_NE(req_->status.message().find("8192"), std::string::npos);
}

TEST_F(AdvanceOp, BounceCopiesOnlyTheWantedBytesAndAcceptsEofPastThem) {
    alignas(4096) std::byte chunk[4096];
    for (int i = 0; i < 4096; ++i) chunk[i] = static_cast<std::byte>(i & 0xff);
    std::byte out[300] = {};
    Op op;
    op.req = req_;
    op.file = &file_;
    op.kind = OpKind::kBounce;
    op.file_off = 0;
    op.len = 4096;
    op.chunk = chunk;
    op.dst = out;
    op.copy_skip = 100;
    op.copy_len = 300;
    op.payload = 300;
    bool retried = false;
    // The file ends at 700: a short, unaligned O_DIRECT read that still covers 100..400.
    EXPECT_EQ(advance_op(op, 700, retried), OpStep::kDone);
    for (int i = 0; i < 300; ++i) ASSERT_EQ(out[i], static_cast<std::byte>((i + 100) & 0xff));
}

TEST_F(AdvanceOp, BounceShortOfTheWantedBytesIsEof) {
    alignas(4096) std::byte chunk[4096];
    std::byte out[1000];
    Op op;
    op.req = req_;
    op.file = &file_;
    op.kind = OpKind::kBounce;
    op.len = 4096;
    op.chunk = chunk;
    op.dst = out;
    op.copy_skip = 100;
    op.copy_len = 1000;  // needs bytes 0..1100 of the aligned range
    bool retried = false;
    EXPECT_EQ(advance_op(op, 512, retried), OpStep::kAgain) << "aligned short read: more may come";
    EXPECT_EQ(op.filled, 512u);
    EXPECT_EQ(op.file_off, 512u);
    EXPECT_EQ(op.len, 4096u - 512u);
    EXPECT_EQ(advance_op(op, 100, retried), OpStep::kFailed) << "612 < 1100 and unaligned: EOF";
    EXPECT_EQ(req_->status.code(), -EIO);
}

TEST(RequestTest, FirstErrorWinsAndLastOpFinishes) {
    detail::Request req;
    req.ops_left = 2;
    req.fail(Status(EIO, "first"));
    req.fail(Status(ENOSPC, "second"));
    EXPECT_EQ(req.status.message(), "first");
    req.op_ended(10);
    EXPECT_FALSE(req.finished);
    req.op_ended(5);
    EXPECT_TRUE(req.finished);
    EXPECT_EQ(req.bytes_done, 15u);
}

}  // namespace
}  // namespace chainio
