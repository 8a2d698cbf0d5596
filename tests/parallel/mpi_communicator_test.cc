// Runs under mpirun with 2 or 4 ranks (mpi_test_main.cc): every collective of
// MpiCommunicator against values computed by hand from the rank numbers.
#include "parallel/mpi_communicator.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/host_context.h"

namespace scalemoe {
namespace {

Tensor Vec(const std::vector<double>& v, DType dtype = DType::kF32) {
  return Tensor::FromVector({static_cast<int64_t>(v.size())}, v, dtype);
}

class MpiCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MPI_Comm_size(MPI_COMM_WORLD, &n_);
    auto groups = CreateMpiProcessGroups({.dp = n_, .edp = n_});
    ASSERT_TRUE(groups.ok()) << groups.status();
    groups_ = std::move(*groups);
  }
  Communicator& world() { return *groups_.world; }
  int n_ = 1;
  ProcessGroups groups_;
};

TEST_F(MpiCommunicatorTest, AllReduceInEveryDtypeAndOp) {
  const double r = world().rank(), n = n_;
  ASSERT_EQ(world().size(), n_);
  for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64}) {
    Tensor sum = Vec({r, 2 * r + 1}, dtype);
    ASSERT_TRUE(world().AllReduce(testing::HostCtx(), sum).ok());
    EXPECT_EQ(sum.ToVector(), (std::vector<double>{n * (n - 1) / 2, n * (n - 1) + n}));
    Tensor max = Vec({r, -r}, dtype), min = Vec({r, -r}, dtype);
    ASSERT_TRUE(world().AllReduce(testing::HostCtx(), max, {.op = ReduceOp::kMax}).ok());
    ASSERT_TRUE(world().AllReduce(testing::HostCtx(), min, {.op = ReduceOp::kMin}).ok());
    EXPECT_EQ(max.ToVector(), (std::vector<double>{n - 1, 0}));
    EXPECT_EQ(min.ToVector(), (std::vector<double>{0, 1 - n}));
  }
}

TEST_F(MpiCommunicatorTest, AsyncAllReduceAndReduceScatter) {
  const double r = world().rank(), n = n_;
  Tensor t = Vec(std::vector<double>(1000, r + 1), DType::kF64);
  auto work = world().AllReduceAsync(testing::HostCtx(), t);
  ASSERT_TRUE(work.ok()) << work.status();
  ASSERT_TRUE((*work)->Wait().ok());
  EXPECT_EQ(t.At(999), n * (n + 1) / 2);

  std::vector<double> in;
  for (int q = 0; q < n_; ++q) in.insert(in.end(), {r * q, 1.0});
  Tensor out = Tensor::Zeros({2}, DType::kF32);
  ASSERT_TRUE(world().ReduceScatter(testing::HostCtx(), Vec(in), out).ok());
  EXPECT_EQ(out.ToVector(), (std::vector<double>{r * n * (n - 1) / 2, n}));
  Tensor async_out = Tensor::Zeros({2}, DType::kF32);
  auto rs = world().ReduceScatterAsync(testing::HostCtx(), Vec(in), async_out);
  ASSERT_TRUE(rs.ok()) << rs.status();
  ASSERT_TRUE((*rs)->Wait().ok());
  EXPECT_EQ(async_out.ToVector(), out.ToVector());
}

TEST_F(MpiCommunicatorTest, AllGatherBroadcastBf16AndSendRecv) {
  const int r = world().rank();
  Tensor gathered = Tensor::Zeros({2 * n_}, DType::kBF16);
  ASSERT_TRUE(
      world().AllGather(testing::HostCtx(), Vec({1.0 * r, -0.5 * r}, DType::kBF16), gathered).ok());
  for (int q = 0; q < n_; ++q) {
    EXPECT_EQ(gathered.At(2 * q), q);
    EXPECT_EQ(gathered.At(2 * q + 1), -0.5 * q);
  }
  Tensor b = Vec({r + 0.25, 3}, DType::kF64);
  ASSERT_TRUE(world().Broadcast(testing::HostCtx(), b, {.root = n_ - 1}).ok());
  EXPECT_EQ(b.ToVector(), (std::vector<double>{n_ - 0.75, 3}));

  EXPECT_TRUE(world().Barrier().ok());
  if (n_ == 1) return;  // no peer to talk to
  Tensor out = Vec({10.0 * r}, DType::kI64), in = Tensor::Zeros({1}, DType::kI64);
  // Even ranks send first, odd ranks receive first: no deadlock on blocking sends.
  const int right = (r + 1) % n_, left = (r + n_ - 1) % n_;
  if (r % 2 == 0) {
    ASSERT_TRUE(world().Send(testing::HostCtx(), out, right, {.tag = 3}).ok());
    ASSERT_TRUE(world().Recv(testing::HostCtx(), in, left, {.tag = 3}).ok());
  } else {
    ASSERT_TRUE(world().Recv(testing::HostCtx(), in, left, {.tag = 3}).ok());
    ASSERT_TRUE(world().Send(testing::HostCtx(), out, right, {.tag = 3}).ok());
  }
  EXPECT_EQ(in.At(0), 10.0 * left);
}

// Rank r sends (r + p) % 3 elements to rank p (zeros included); the last rank
// receives nothing at all.
TEST_F(MpiCommunicatorTest, UnevenAllToAllV) {
  const int r = world().rank();
  auto count = [&](int src, int dst) -> int64_t { return dst == n_ - 1 ? 0 : (src + dst) % 3; };
  std::vector<int64_t> send_counts, recv_counts;
  std::vector<double> send, want;
  for (int p = 0; p < n_; ++p) {
    send_counts.push_back(count(r, p));
    recv_counts.push_back(count(p, r));
    for (int64_t k = 0; k < count(r, p); ++k) send.push_back(100 * r + 10 * p + k);
    for (int64_t k = 0; k < count(p, r); ++k) want.push_back(100 * p + 10 * r + k);
  }
  Tensor input = Tensor::Zeros({static_cast<int64_t>(send.size())}, DType::kI32);
  if (!send.empty()) input = Vec(send, DType::kI32);
  Tensor output = Tensor::Zeros({static_cast<int64_t>(want.size())}, DType::kI32);
  ASSERT_TRUE(world().AllToAllV(testing::HostCtx(), input, send_counts, output, recv_counts).ok());
  EXPECT_EQ(output.ToVector(), want);
}

TEST_F(MpiCommunicatorTest, BadArgumentsAreErrorsNamingTheGroup) {
  Status bf16 = world().AllReduce(testing::HostCtx(), Vec({1}, DType::kBF16));
  EXPECT_EQ(bf16.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(bf16.message().find("world[0"), absl::string_view::npos) << bf16;
  // One count too many: counts need one entry per rank.
  Status counts =
      world().AllToAllV(testing::HostCtx(), Vec({1, 1, 1, 1, 1}), std::vector<int64_t>(n_ + 1, 1),
                        Vec({1, 1, 1, 1, 1}), std::vector<int64_t>(n_ + 1, 1));
  EXPECT_EQ(counts.code(), absl::StatusCode::kInvalidArgument) << counts;
  Status chunks =
      world().AllGather(testing::HostCtx(), Vec({1, 2}), Tensor::Zeros({2 * n_ + 1}, DType::kF32));
  EXPECT_EQ(chunks.code(), absl::StatusCode::kInvalidArgument) << chunks;
  EXPECT_FALSE(world().Broadcast(testing::HostCtx(), Vec({1}), {.root = n_}).ok());
}

// dp2 x ep2 on 4 ranks (dp = 4 dense): ep [0,1] [2,3], edp [0,2] [1,3].
TEST_F(MpiCommunicatorTest, ExpertGroupsFromCommSplit) {
  if (n_ != 4) GTEST_SKIP() << "needs 4 ranks";
  auto groups = CreateMpiProcessGroups({.dp = 4, .ep = 2, .edp = 2});
  ASSERT_TRUE(groups.ok()) << groups.status();
  const int g = groups->coords.global;
  EXPECT_EQ(groups->ep->rank(), g % 2);
  EXPECT_EQ(groups->edp->rank(), g / 2);
  EXPECT_EQ(groups->ep->name(), g < 2 ? "ep[0,1]" : "ep[2,3]");
  Tensor ep = Vec({1.0 * g}, DType::kI64), edp = Vec({1.0 * g}, DType::kI64);
  ASSERT_TRUE(groups->ep->AllReduce(testing::HostCtx(), ep).ok());
  ASSERT_TRUE(groups->edp->AllReduce(testing::HostCtx(), edp).ok());
  EXPECT_EQ(ep.At(0), g < 2 ? 1 : 5);
  EXPECT_EQ(edp.At(0), g % 2 == 0 ? 2 : 4);
  EXPECT_EQ(groups->tp->size(), 1);
  EXPECT_EQ(groups->dp->size(), 4);
}

TEST_F(MpiCommunicatorTest, LayoutThatDoesNotTileIsAnError) {
  auto groups = CreateMpiProcessGroups({.dp = n_ + 1});
  EXPECT_EQ(groups.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace scalemoe
