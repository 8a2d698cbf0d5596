// The NCCL backend across GPUs: runs under mpirun (mpi_test_main.cc), one
// rank per GPU (labels gpu and mpi: skipped, saying so, where there are fewer
// GPUs than ranks). Groups tp = 2 x dp = world/2 split from one NCCL world
// communicator; every collective against values computed by hand from the
// rank numbers, bf16 reductions and uneven all-to-all-v counts included.
#include <memory>
#include <string>
#include <vector>

#include "core/context.h"
#include "gtest/gtest.h"
#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/nccl_process_groups.h"

namespace scalemoe {
namespace {

class NcclMpiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    MPI_Comm_size(MPI_COMM_WORLD, &n_);
    MPI_Comm_rank(MPI_COMM_WORLD, &me_);
    // Every rank sees the same GPUs (one host), so all skip alike.
    if (ExecContext::CudaDeviceCount() < n_ || n_ % 2 != 0) return;
    StatusOr<ExecContext> ctx = ExecContext::Cuda(me_);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = new ExecContext(*ctx);
    StatusOr<ProcessGroups> groups = CreateMpiProcessGroups({.tp = 2, .dp = n_ / 2, .edp = n_});
    ASSERT_TRUE(groups.ok()) << groups.status();
    groups_ = new ProcessGroups(*std::move(groups));
    const Status s = UseNcclCommunicators(*groups_, *ctx_, {});
    ASSERT_TRUE(s.ok()) << s;
  }
  static void TearDownTestSuite() {
    delete groups_;  // before MPI_Finalize (main's MpiRuntime)
    delete ctx_;
    groups_ = nullptr;
    ctx_ = nullptr;
  }
  void SetUp() override {
    if (groups_ == nullptr) {
      GTEST_SKIP() << "needs an even number of ranks and a GPU per rank (" << n_ << " ranks, "
                   << ExecContext::CudaDeviceCount() << " GPUs): gpu test skipped";
    }
    ASSERT_NE(dynamic_cast<NcclCommunicator*>(groups_->world.get()), nullptr);
    ASSERT_NE(dynamic_cast<NcclCommunicator*>(groups_->tp.get()), nullptr);
    ASSERT_NE(dynamic_cast<NcclCommunicator*>(groups_->dp.get()), nullptr);
  }

  static Tensor Dev(const std::vector<double>& v, DType dtype) {
    return ctx_->ToDevice(Tensor::FromVector({static_cast<int64_t>(v.size())}, v, dtype));
  }
  static std::vector<double> Host(const Tensor& t) { return ctx_->ToHost(t).ToVector(); }

  static int n_, me_;
  static ExecContext* ctx_;
  static ProcessGroups* groups_;
};

int NcclMpiTest::n_ = 1;
int NcclMpiTest::me_ = 0;
ExecContext* NcclMpiTest::ctx_ = nullptr;
ProcessGroups* NcclMpiTest::groups_ = nullptr;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF64, DType::kBF16, DType::kI32, DType::kI64};

TEST_F(NcclMpiTest, SplitGroupsHoldTheRanksOfTheGrid) {
  // tp pairs neighbours (TP fastest); dp strides by 2.
  EXPECT_EQ(groups_->tp->size(), 2);
  EXPECT_EQ(groups_->tp->rank(), me_ % 2);
  EXPECT_EQ(groups_->dp->size(), n_ / 2);
  EXPECT_EQ(groups_->dp->rank(), me_ / 2);
  // The sum of the global ranks of each group, over NCCL.
  Tensor tp = Dev({static_cast<double>(me_)}, DType::kI64);
  Tensor dp = Dev({static_cast<double>(me_)}, DType::kI64);
  ASSERT_TRUE(groups_->tp->AllReduce(*ctx_, tp).ok());
  ASSERT_TRUE(groups_->dp->AllReduce(*ctx_, dp).ok());
  const int pair = me_ - me_ % 2;
  EXPECT_EQ(Host(tp), std::vector<double>{2.0 * pair + 1});
  double dp_sum = 0;
  for (int r = me_ % 2; r < n_; r += 2) dp_sum += r;
  EXPECT_EQ(Host(dp), std::vector<double>{dp_sum});
}

TEST_F(NcclMpiTest, AllReduceInEveryDtypeAndOp) {
  const double r = me_, n = n_;
  for (DType dtype : kAllDTypes) {
    SCOPED_TRACE(DTypeName(dtype));
    Tensor sum = Dev({r, 2 * r + 1}, dtype);
    ASSERT_TRUE(groups_->world->AllReduce(*ctx_, sum).ok());
    EXPECT_EQ(Host(sum), (std::vector<double>{n * (n - 1) / 2, n * (n - 1) + n}));
    Tensor max = Dev({r, -r}, dtype), min = Dev({r, -r}, dtype);
    ASSERT_TRUE(groups_->world->AllReduce(*ctx_, max, {.op = ReduceOp::kMax}).ok());
    ASSERT_TRUE(groups_->world->AllReduce(*ctx_, min, {.op = ReduceOp::kMin}).ok());
    EXPECT_EQ(Host(max), (std::vector<double>{n - 1, 0}));
    EXPECT_EQ(Host(min), (std::vector<double>{0, -(n - 1)}));
  }
}

TEST_F(NcclMpiTest, ReduceScatterAllGatherBroadcastAndAsync) {
  Communicator& world = *groups_->world;
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    // Chunk p of rank r's input is {r + p, 1}: rank p gets {sum_r r + n p, n}.
    std::vector<double> in;
    for (int p = 0; p < n_; ++p) in.insert(in.end(), {double(me_ + p), 1.0});
    Tensor out = Dev({-1, -1}, dtype);
    ASSERT_TRUE(world.ReduceScatter(*ctx_, Dev(in, dtype), out).ok());
    const double ranks = n_ * (n_ - 1) / 2.0;
    EXPECT_EQ(Host(out), (std::vector<double>{ranks + n_ * me_, double(n_)}));
    StatusOr<std::unique_ptr<Work>> work = world.ReduceScatterAsync(*ctx_, Dev(in, dtype), out);
    ASSERT_TRUE(work.ok()) << work.status();
    ASSERT_TRUE((*work)->Wait().ok());
    EXPECT_EQ(Host(out), (std::vector<double>{ranks + n_ * me_, double(n_)}));

    Tensor gathered = Dev(std::vector<double>(2 * n_, -1), dtype);
    ASSERT_TRUE(world.AllGather(*ctx_, Dev({double(me_), 7}, dtype), gathered).ok());
    std::vector<double> want;
    for (int p = 0; p < n_; ++p) want.insert(want.end(), {double(p), 7});
    EXPECT_EQ(Host(gathered), want);

    Tensor b = Dev({double(me_), double(me_)}, dtype);
    ASSERT_TRUE(world.Broadcast(*ctx_, b, {.root = n_ - 1}).ok());
    EXPECT_EQ(Host(b), (std::vector<double>{double(n_ - 1), double(n_ - 1)}));

    Tensor a = Dev({1, double(me_)}, dtype);
    work = world.AllReduceAsync(*ctx_, a);
    ASSERT_TRUE(work.ok()) << work.status();
    ASSERT_TRUE((*work)->Wait().ok());
    EXPECT_EQ(Host(a), (std::vector<double>{double(n_), ranks}));
  }
}

// Rank r sends (r + p) % 3 elements to rank p (zero for some pairs, this
// rank's own part included), each 3 (n r + p) + k (exact in bf16 up to 8
// ranks).
TEST_F(NcclMpiTest, AllToAllVWithUnevenAndZeroCounts) {
  for (DType dtype : {DType::kF32, DType::kI64, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    std::vector<int64_t> send, recv;
    std::vector<double> in, want;
    for (int p = 0; p < n_; ++p) {
      send.push_back((me_ + p) % 3);
      recv.push_back((p + me_) % 3);
      for (int k = 0; k < send.back(); ++k) in.push_back(3 * (n_ * me_ + p) + k);
      for (int k = 0; k < recv.back(); ++k) want.push_back(3 * (n_ * p + me_) + k);
    }
    // One spare element on each side: counts need not fill the buffers.
    in.push_back(-5);
    std::vector<double> out_init(want.size() + 1, -1);
    want.push_back(-1);
    Tensor out = Dev(out_init, dtype);
    ASSERT_TRUE(groups_->world->AllToAllV(*ctx_, Dev(in, dtype), send, out, recv).ok());
    EXPECT_EQ(Host(out), want);
  }
}

TEST_F(NcclMpiTest, SendAndRecvAlongTheTpPairs) {
  Communicator& tp = *groups_->tp;
  const int peer = 1 - tp.rank();
  Tensor mine = Dev({double(me_), 0.5}, DType::kF32);
  Tensor theirs = Dev({-1, -1}, DType::kF32);
  // Rank 0 of the pair sends first, rank 1 receives first.
  if (tp.rank() == 0) {
    ASSERT_TRUE(tp.Send(*ctx_, mine, peer).ok());
    ASSERT_TRUE(tp.Recv(*ctx_, theirs, peer).ok());
  } else {
    ASSERT_TRUE(tp.Recv(*ctx_, theirs, peer).ok());
    ASSERT_TRUE(tp.Send(*ctx_, mine, peer).ok());
  }
  const int other = me_ - tp.rank() + peer;
  EXPECT_EQ(Host(theirs), (std::vector<double>{double(other), 0.5}));
}

}  // namespace
}  // namespace scalemoe
