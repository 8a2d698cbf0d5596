// The NCCL backend on a world of one (label gpu: skipped without a device, a
// failure under SCALEMOE_REQUIRE_GPU=1): every group of LocalProcessGroups
// switched to NCCL, then every collective checked against its one-rank
// meaning, in every dtype. Outputs start filled with a sentinel, so a
// collective that did nothing fails; large inputs are written by compute
// kernels just before the collective and the result is transformed by a
// kernel just after, so a missing event between the compute and the
// communication stream shows up as stale or half-written values.
#include "parallel/nccl_communicator.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/ops.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/local_communicator.h"
#include "parallel/nccl_process_groups.h"

namespace scalemoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64};

// Host tensor of `n` distinct values exact in every dtype (bf16 included).
Tensor Values(int64_t n, DType dtype, double offset = 0) {
  Tensor f64 = Tensor::Empty({n}, DType::kF64);
  for (int64_t i = 0; i < n; ++i) f64.data<double>()[i] = offset + (i % 97) - 40;
  Tensor out = Tensor::Empty({n}, dtype);
  out.CopyFrom(f64);
  return out;
}

Tensor Sentinel(int64_t n, DType dtype) {
  Tensor t = Tensor::Empty({n}, dtype);
  t.Fill(-12345);
  return t;
}

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (ExecContext::CudaDeviceCount() == 0) return;
    StatusOr<ExecContext> ctx = ExecContext::Cuda(0);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = new ExecContext(*ctx);
    groups_ = new ProcessGroups(LocalProcessGroups());
    const Status s = UseNcclCommunicators(*groups_, *ctx_, {});
    ASSERT_TRUE(s.ok()) << s;
  }
  static void TearDownTestSuite() {
    delete groups_;
    delete ctx_;
    groups_ = nullptr;
    ctx_ = nullptr;
  }
  void SetUp() override {
    if (ExecContext::CudaDeviceCount() == 0) {
      const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");
      if (require != nullptr && std::strcmp(require, "1") == 0) {
        FAIL() << "SCALEMOE_REQUIRE_GPU=1 but no CUDA device";
      }
      GTEST_SKIP() << "no CUDA device on this machine: gpu test skipped";
    }
    ASSERT_NE(groups_, nullptr);
    // Every axis really is NCCL (not the host backend staging).
    for (Communicator* c :
         {groups_->world.get(), groups_->tp.get(), groups_->dp.get(), groups_->pp.get(),
          groups_->etp.get(), groups_->ep.get(), groups_->edp.get()}) {
      ASSERT_NE(dynamic_cast<NcclCommunicator*>(c), nullptr) << c->name();
      EXPECT_EQ(c->size(), 1);
      EXPECT_EQ(c->rank(), 0);
    }
  }

  static Communicator& comm() { return *groups_->dp; }
  static const ExecContext& ctx() { return *ctx_; }
  static Tensor Dev(const Tensor& host) { return ctx_->ToDevice(host); }
  static Tensor Host(const Tensor& dev) { return ctx_->ToHost(dev); }
  static void ExpectSame(const Tensor& got_dev, const Tensor& want_host, const std::string& what) {
    const Tensor got = Host(got_dev);
    ASSERT_EQ(got.nbytes(), want_host.nbytes()) << what;
    EXPECT_EQ(std::memcmp(got.raw_data(), want_host.raw_data(), got.nbytes()), 0)
        << what << ": got " << ::testing::PrintToString(got.ToVector()).substr(0, 200);
    EXPECT_TRUE(ctx_->status().ok()) << ctx_->status();
  }

  static ExecContext* ctx_;
  static ProcessGroups* groups_;
};

ExecContext* NcclCommunicatorTest::ctx_ = nullptr;
ProcessGroups* NcclCommunicatorTest::groups_ = nullptr;

TEST_F(NcclCommunicatorTest, AllReduceOfOneRankIsTheInputInEveryDtypeAndOp) {
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      const Tensor want = Values(1000, dtype);
      const Tensor t = Dev(want);
      ASSERT_TRUE(comm().AllReduce(ctx(), t, {.op = op}).ok());
      ExpectSame(t, want, std::string("AllReduce ") + DTypeName(dtype));
    }
  }
}

TEST_F(NcclCommunicatorTest, ReduceScatterAllGatherAndBroadcastCopyInEveryDtype) {
  for (DType dtype : kAllDTypes) {
    const Tensor want = Values(777, dtype, 3);
    const Tensor in = Dev(want);
    const Tensor rs = Dev(Sentinel(777, dtype));
    ASSERT_TRUE(comm().ReduceScatter(ctx(), in, rs).ok());
    ExpectSame(rs, want, std::string("ReduceScatter ") + DTypeName(dtype));
    const Tensor ag = Dev(Sentinel(777, dtype));
    ASSERT_TRUE(comm().AllGather(ctx(), in, ag).ok());
    ExpectSame(ag, want, std::string("AllGather ") + DTypeName(dtype));
    const Tensor b = Dev(want);
    ASSERT_TRUE(comm().Broadcast(ctx(), b, {.root = 0}).ok());
    ExpectSame(b, want, std::string("Broadcast ") + DTypeName(dtype));
  }
}

TEST_F(NcclCommunicatorTest, AllToAllVKeepsThisRanksPartWithZeroCountsToo) {
  for (DType dtype : kAllDTypes) {
    for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{500}}) {
      // 600-element buffers: only the first `count` move; the rest of the
      // output keeps its sentinel.
      const Tensor in_host = Values(600, dtype, 1);
      Tensor want = Sentinel(600, dtype);
      if (count > 0) want.Narrow(0, 0, count).CopyFrom(in_host.Narrow(0, 0, count));
      const Tensor out = Dev(Sentinel(600, dtype));
      ASSERT_TRUE(comm().AllToAllV(ctx(), Dev(in_host), {count}, out, {count}).ok());
      ExpectSame(out, want,
                 std::string("AllToAllV ") + DTypeName(dtype) + " count " + std::to_string(count));
    }
  }
}

TEST_F(NcclCommunicatorTest, ZeroElementCollectivesAreFine) {
  const Tensor empty = ctx().Empty({0}, DType::kF32);
  EXPECT_TRUE(comm().AllReduce(ctx(), empty).ok());
  EXPECT_TRUE(comm().ReduceScatter(ctx(), empty, empty).ok());
  EXPECT_TRUE(comm().AllGather(ctx(), empty, empty).ok());
  EXPECT_TRUE(comm().Broadcast(ctx(), empty).ok());
  EXPECT_TRUE(comm().AllToAllV(ctx(), empty, {0}, empty, {0}).ok());
  EXPECT_TRUE(ctx().status().ok()) << ctx().status();
}

// 2^22 floats scaled ten times by 2 on the compute stream right before the
// collective, halved right after: the communication stream must start after
// the first and finish before the second.
TEST_F(NcclCommunicatorTest, CollectivesAreOrderedAgainstTheComputeStream) {
  const int64_t n = int64_t{1} << 22;
  const Tensor base = Values(n, DType::kF32);
  Tensor want = Values(n, DType::kF32);
  for (int64_t i = 0; i < n; ++i) want.data<float>()[i] *= 512.0f;  // 2^10 / 2
  const Tensor in = Dev(base);
  const Tensor out = Dev(Sentinel(n, DType::kF32));
  for (int k = 0; k < 10; ++k) ops::Scale(ctx(), 2.0, in);
  ASSERT_TRUE(comm().ReduceScatter(ctx(), in, out).ok());
  ops::Scale(ctx(), 0.5, out);
  ExpectSame(out, want, "synchronous ReduceScatter");

  // Asynchronous: the result is in place for the compute stream after Wait.
  const Tensor a = Dev(base);
  for (int k = 0; k < 10; ++k) ops::Scale(ctx(), 2.0, a);
  StatusOr<std::unique_ptr<Work>> work = comm().AllReduceAsync(ctx(), a);
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_TRUE((*work)->Wait().ok());
  ops::Scale(ctx(), 0.5, a);
  ExpectSame(a, want, "AllReduceAsync");

  const Tensor b = Dev(base);
  const Tensor b_out = Dev(Sentinel(n, DType::kF32));
  for (int k = 0; k < 10; ++k) ops::Scale(ctx(), 2.0, b);
  work = comm().ReduceScatterAsync(ctx(), b, b_out);
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_TRUE((*work)->Wait().ok());
  ops::Scale(ctx(), 0.5, b_out);
  ExpectSame(b_out, want, "ReduceScatterAsync");
}

TEST_F(NcclCommunicatorTest, CpuTensorsTakeTheHostBackend) {
  // A CPU context selects the group's host communicator (here the
  // LocalCommunicator the group was made from).
  const ExecContext cpu = ExecContext::Cpu();
  const Tensor want = Values(10, DType::kF32);
  Tensor t = want.Clone();
  ASSERT_TRUE(comm().AllReduce(cpu, t).ok());
  EXPECT_EQ(t.ToVector(), want.ToVector());
  Tensor host = want.Clone();
  ASSERT_TRUE(comm().AllReduceHost(host).ok());
  EXPECT_EQ(host.ToVector(), want.ToVector());
  EXPECT_TRUE(comm().Barrier().ok());
}

TEST_F(NcclCommunicatorTest, BadArgumentsNameTheCollectiveAndTheGroup) {
  const Tensor t = Dev(Values(8, DType::kF32));
  const std::string group = comm().name();
  Status s = comm().Send(ctx(), t, 0);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("Send on " + group), HasSubstr("peer 0")));
  s = comm().Recv(ctx(), t, 1);
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("Recv on " + group), HasSubstr("peer 1")));
  s = comm().ReduceScatter(ctx(), t, Dev(Values(4, DType::kF32)));
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("ReduceScatter on " + group), HasSubstr("chunks")));
  s = comm().AllToAllV(ctx(), t, {9}, t, {9});
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("AllToAllV on " + group), HasSubstr("send_counts")));
  s = comm().AllToAllV(ctx(), t, {2, 2}, t, {4});
  EXPECT_THAT(std::string(s.message()), HasSubstr("one non-negative count per group rank (1)"));
  s = comm().AllToAllV(ctx(), t, {2}, t, {3});
  EXPECT_THAT(std::string(s.message()), HasSubstr("the counts must agree"));
  s = comm().Broadcast(ctx(), t, {.root = 1});
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("Broadcast on " + group), HasSubstr("root 1")));
  // The communicators still work after refusing those.
  const Tensor want = Values(8, DType::kF32);
  const Tensor ok = Dev(want);
  ASSERT_TRUE(comm().AllReduce(ctx(), ok).ok());
  ExpectSame(ok, want, "AllReduce after errors");
}

}  // namespace
}  // namespace scalemoe
