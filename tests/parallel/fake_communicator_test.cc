#include "parallel/fake_communicator.h"

#include <atomic>
#include <chrono>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/host_context.h"

namespace scalemoe {
namespace {

using std::chrono::milliseconds;

FakeWorldOptions Fast() { return {.timeout = milliseconds(2000)}; }

Tensor Vec(const std::vector<double>& v, DType dtype = DType::kF32) {
  return Tensor::FromVector({static_cast<int64_t>(v.size())}, v, dtype);
}

// Every rank sees a size-4 dp group and exact rank-order sums in every dtype.
TEST(FakeCommunicatorTest, AllReduceSumMaxMinInEveryDtype) {
  Status s = FakeWorld(Fast()).Run(4, {.dp = 4, .edp = 4}, [](ProcessGroups& pg) {
    Communicator& dp = pg.Get(Axis::kDp);
    EXPECT_EQ(dp.size(), 4);
    EXPECT_EQ(dp.rank(), pg.coords.dp);
    const double r = dp.rank();
    for (DType dtype : {DType::kF32, DType::kF64, DType::kI32, DType::kI64}) {
      Tensor sum = Vec({r, 10 * r + 1}, dtype);
      SM_RETURN_IF_ERROR(dp.AllReduce(testing::HostCtx(), sum));
      EXPECT_EQ(sum.ToVector(), (std::vector<double>{6, 64})) << DTypeName(dtype);
      Tensor max = Vec({r, -r}, dtype);
      SM_RETURN_IF_ERROR(dp.AllReduce(testing::HostCtx(), max, {.op = ReduceOp::kMax}));
      EXPECT_EQ(max.ToVector(), (std::vector<double>{3, 0})) << DTypeName(dtype);
      Tensor min = Vec({r, -r}, dtype);
      SM_RETURN_IF_ERROR(dp.AllReduce(testing::HostCtx(), min, {.op = ReduceOp::kMin}));
      EXPECT_EQ(min.ToVector(), (std::vector<double>{0, -3})) << DTypeName(dtype);
    }
    Tensor async = Vec({r + 0.5});
    SM_ASSIGN_OR_RETURN(std::unique_ptr<Work> work, dp.AllReduceAsync(testing::HostCtx(), async));
    SM_RETURN_IF_ERROR(work->Wait());
    EXPECT_EQ(async.ToVector(), (std::vector<double>{8}));
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FakeCommunicatorTest, ReduceScatterAllGatherBroadcastBarrier) {
  Status s = FakeWorld(Fast()).Run(3, {.dp = 3, .edp = 3}, [](ProcessGroups& pg) {
    Communicator& c = pg.Get(Axis::kWorld);
    const double r = c.rank();
    // input chunk q holds r + q; rank q gets sum over r of (r + q) = 3 + 3q.
    Tensor input = Vec({r, r + 1, r + 2, 100 * r, 100 * r + 1, 100 * r + 2}, DType::kF64);
    Tensor output = Tensor::Zeros({2}, DType::kF64);
    SM_RETURN_IF_ERROR(c.ReduceScatter(testing::HostCtx(), input, output));
    // chunks are [r, r+1], [r+2, 100r], [100r+1, 100r+2]
    const std::vector<std::vector<double>> want = {{3, 6}, {9, 300}, {303, 306}};
    EXPECT_EQ(output.ToVector(), want[c.rank()]);
    Tensor async_out = Tensor::Zeros({2}, DType::kF64);
    SM_ASSIGN_OR_RETURN(auto work, c.ReduceScatterAsync(testing::HostCtx(), input, async_out));
    SM_RETURN_IF_ERROR(work->Wait());
    EXPECT_EQ(async_out.ToVector(), want[c.rank()]);

    Tensor gathered = Tensor::Zeros({6}, DType::kI64);
    SM_RETURN_IF_ERROR(c.AllGather(testing::HostCtx(), Vec({r, -r}, DType::kI64), gathered));
    EXPECT_EQ(gathered.ToVector(), (std::vector<double>{0, 0, 1, -1, 2, -2}));

    Tensor b = Vec({r * 1.5, 7}, DType::kBF16);
    SM_RETURN_IF_ERROR(c.Broadcast(testing::HostCtx(), b, {.root = 2}));
    EXPECT_EQ(b.ToVector(), (std::vector<double>{3, 7}));
    return c.Barrier();
  });
  EXPECT_TRUE(s.ok()) << s;
}

// counts[src][dst]; rank 2 receives nothing and rank 1 sends only to itself.
TEST(FakeCommunicatorTest, UnevenAllToAllVWithZeroCounts) {
  const std::vector<std::vector<int64_t>> counts = {{1, 2, 0}, {0, 3, 0}, {2, 0, 0}};
  Status s = FakeWorld(Fast()).Run(3, {.dp = 3, .ep = 3}, [&](ProcessGroups& pg) {
    Communicator& ep = pg.Get(Axis::kEp);
    const int r = ep.rank();
    std::vector<double> send;
    for (int64_t dst = 0, i = 0; dst < 3; ++dst) {
      for (int64_t k = 0; k < counts[r][dst]; ++k, ++i) send.push_back(100 * r + 10 * dst + k);
    }
    std::vector<int64_t> recv_counts;
    std::vector<double> want;
    for (int src = 0; src < 3; ++src) {
      recv_counts.push_back(counts[src][r]);
      for (int64_t k = 0; k < counts[src][r]; ++k) want.push_back(100 * src + 10 * r + k);
    }
    Tensor input = send.empty() ? Tensor::Zeros({0}, DType::kF32) : Vec(send);
    Tensor output = Tensor::Zeros({static_cast<int64_t>(want.size())}, DType::kF32);
    SM_RETURN_IF_ERROR(ep.AllToAllV(testing::HostCtx(), input, counts[r], output, recv_counts));
    EXPECT_EQ(output.ToVector(), want) << "rank " << r;
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FakeCommunicatorTest, AllToAllVCountMismatchIsAnError) {
  Status s = FakeWorld(Fast()).Run(2, {.dp = 2, .ep = 2}, [](ProcessGroups& pg) {
    Communicator& ep = pg.Get(Axis::kEp);
    Tensor buf = Tensor::Zeros({4}, DType::kF32);
    // Each rank sends 1 to the other but expects 2 from it.
    return ep.AllToAllV(testing::HostCtx(), buf, {1, 1}, buf.Clone(), {1, 2});
  });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("recv_counts"), absl::string_view::npos) << s;
}

TEST(FakeCommunicatorTest, SendRecvAndGroupsFollowTheGrid) {
  Status s = FakeWorld(Fast()).Run(4, {.dp = 4, .ep = 2, .edp = 2}, [](ProcessGroups& pg) {
    const int g = pg.coords.global;
    Tensor ep_sum = Vec({static_cast<double>(g)}, DType::kI32);
    SM_RETURN_IF_ERROR(pg.ep->AllReduce(testing::HostCtx(), ep_sum));
    EXPECT_EQ(ep_sum.At(0), g < 2 ? 1 : 5);  // ep groups [0,1] [2,3]
    Tensor edp_sum = Vec({static_cast<double>(g)}, DType::kI32);
    SM_RETURN_IF_ERROR(pg.edp->AllReduce(testing::HostCtx(), edp_sum));
    EXPECT_EQ(edp_sum.At(0), g % 2 == 0 ? 2 : 4);  // edp groups [0,2] [1,3]
    EXPECT_EQ(pg.edp->name(), g % 2 == 0 ? "edp[0,2]" : "edp[1,3]");
    EXPECT_EQ(pg.tp->size(), 1);
    // Ring over the world: send to the right, receive from the left.
    Communicator& w = *pg.world;
    Tensor out = Vec({10.0 * g}, DType::kF64), in = Tensor::Zeros({1}, DType::kF64);
    SM_RETURN_IF_ERROR(w.Send(testing::HostCtx(), out, (g + 1) % 4, {.tag = 7}));
    SM_RETURN_IF_ERROR(w.Recv(testing::HostCtx(), in, (g + 3) % 4, {.tag = 7}));
    EXPECT_EQ(in.At(0), 10.0 * ((g + 3) % 4));
    return absl::OkStatus();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FakeCommunicatorTest, WorldOfOneIsIdentity) {
  Status s = FakeWorld(Fast()).Run(1, {}, [](ProcessGroups& pg) {
    Tensor t = Vec({1, 2});
    SM_RETURN_IF_ERROR(pg.dp->AllReduce(testing::HostCtx(), t));
    EXPECT_EQ(t.ToVector(), (std::vector<double>{1, 2}));
    Tensor out = Tensor::Zeros({2}, DType::kF32);
    SM_RETURN_IF_ERROR(pg.ep->AllToAllV(testing::HostCtx(), t, {2}, out, {2}));
    EXPECT_EQ(out.ToVector(), (std::vector<double>{1, 2}));
    return pg.world->Barrier();
  });
  EXPECT_TRUE(s.ok()) << s;
}

TEST(FakeCommunicatorTest, Bf16ReductionsAreUnimplemented) {
  Status s = FakeWorld(Fast()).Run(2, {.dp = 2, .edp = 2}, [](ProcessGroups& pg) {
    return pg.dp->AllReduce(testing::HostCtx(), Vec({1}, DType::kBF16));
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_NE(s.message().find("dp[0,1]"), absl::string_view::npos) << s;
}

TEST(FakeCommunicatorTest, BadLayoutIsInvalidArgument) {
  Status s = FakeWorld(Fast()).Run(4, {.dp = 3}, [](ProcessGroups&) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// Rank 1's second call fails; rank 0 and 2 learn at once instead of hanging.
TEST(FakeCommunicatorTest, InjectedFailureReachesEveryPeer) {
  FakeWorld world(Fast());
  world.FailCollective(1, 1);
  const auto start = std::chrono::steady_clock::now();
  std::atomic<int> first_ok{0};
  Status s = world.Run(3, {.dp = 3, .edp = 3}, [&](ProcessGroups& pg) {
    Tensor t = Vec({1});
    SM_RETURN_IF_ERROR(pg.dp->AllReduce(testing::HostCtx(), t));
    ++first_ok;
    return pg.dp->AllReduce(testing::HostCtx(), t);
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(1500));
  EXPECT_EQ(first_ok.load(), 3);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("injected"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("global rank 1"), absl::string_view::npos) << s;
  for (int r : {0, 2}) {
    EXPECT_EQ(world.rank_statuses()[r].code(), absl::StatusCode::kUnavailable)
        << world.rank_statuses()[r];
  }
}

TEST(FakeCommunicatorTest, RankThatNeverJoinsFailsItsPeers) {
  FakeWorld world(Fast());
  Status s = world.Run(2, {.dp = 2, .edp = 2}, [](ProcessGroups& pg) {
    if (pg.coords.global == 1) return absl::OkStatus();
    return pg.dp->Barrier();
  });
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("global rank 1 returned without joining"), absl::string_view::npos)
      << s;
}

// Ranks stuck in different calls (a deadlock) time out with an error.
TEST(FakeCommunicatorTest, MismatchedCallOrderTimesOut) {
  FakeWorld world({.timeout = milliseconds(200)});
  const auto start = std::chrono::steady_clock::now();
  Status s = world.Run(2, {.dp = 2, .edp = 2}, [](ProcessGroups& pg) {
    Tensor t = Vec({1});
    if (pg.coords.global == 0) return pg.dp->AllReduce(testing::HostCtx(), t);
    return pg.world->Recv(testing::HostCtx(), t, 0);
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(1500));
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("timed out after 200 ms"), absl::string_view::npos) << s;
}

TEST(FakeCommunicatorTest, MismatchedCollectivesAreErrors) {
  Status s = FakeWorld(Fast()).Run(2, {.dp = 2, .edp = 2}, [](ProcessGroups& pg) {
    Tensor t = Vec({1, 2});
    if (pg.coords.global == 0) return pg.dp->AllReduce(testing::HostCtx(), t);
    return pg.dp->Broadcast(testing::HostCtx(), t);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("mismatched call"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace scalemoe
