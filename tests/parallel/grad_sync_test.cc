// GradSync in a FakeWorld: dense gradients become the DP mean, expert
// gradients the EDP sum over DP, in buckets that never mix the two.
#include "parallel/grad_sync.h"

#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "tests/testing/host_context.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

// Dense, then the experts `experts` (EP-owned), then dense again and the
// gradient-free routing bias.
void Build(ParamRegistry& reg, const std::set<int>& experts) {
  reg.Create({"w1", {3, 4}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
  reg.Create({"gamma", {4}, ParamRole::kInputNormScale, InitSpec::Ones(), {}});
  for (int e : experts) {
    ParamLayout layout;
    layout.expert = e;
    reg.Create({absl::StrCat("experts.", e, ".w"),
                {2, 3},
                ParamRole::kExpertLinear,
                InitSpec::Normal(0.5),
                layout});
  }
  reg.Create({"expert_bias", {4}, ParamRole::kExpertBias, InitSpec::Zeros(), {}});
  reg.Create({"w2", {5, 2}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
  SM_CHECK_OK(reg.Materialize(1, DType::kF64, Device::kCPU));
}

double LocalGrad(const std::string& name, int64_t i, int rank) {
  return std::cos(0.7 * i + 1.9 * rank + static_cast<double>(name.size())) * (1 + i % 3);
}

void SetLocalGrads(ParamRegistry& reg, int rank) {
  for (const auto& p : reg.params()) {
    std::vector<double> g(p->local_numel());
    for (int64_t i = 0; i < p->local_numel(); ++i) g[i] = LocalGrad(p->spec.name, i, rank);
    p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
  }
}

// dp ranks, EP size ep; EP rank q owns experts {2q, 2q+1}.
struct Result {
  std::map<std::string, std::vector<double>> grads;
  std::vector<GradSync::Bucket> buckets;
};
enum class Mode { kAllReduceMean, kReverseRanges };

std::vector<Result> Sync(int dp, int ep, int64_t bucket, Mode mode) {
  std::vector<Result> out(dp);
  FakeWorld world;
  SM_CHECK_OK(world.Run(dp, {.dp = dp, .ep = ep, .edp = dp / ep}, [&](ProcessGroups& pg) -> Status {
    ParamRegistry reg;
    Build(reg, {2 * pg.coords.ep, 2 * pg.coords.ep + 1});
    SetLocalGrads(reg, pg.coords.global);
    GradSync sync(testing::HostCtx(), reg, pg, bucket);
    if (mode == Mode::kAllReduceMean) {
      SM_RETURN_IF_ERROR(sync.AllReduceMean());
    } else {
      // As a backward pass would: parameters finalised last to first.
      for (auto it = reg.params().rbegin(); it != reg.params().rend(); ++it) {
        const Param& p = **it;
        SM_RETURN_IF_ERROR(sync.LaunchRange(p.flat_offset, p.flat_offset + p.local_numel()));
      }
      SM_RETURN_IF_ERROR(sync.WaitAll());
    }
    for (const auto& p : reg.params())
      out[pg.coords.global].grads[p->spec.name] = p->grad.ToVector();
    out[pg.coords.global].buckets = sync.buckets();
    return absl::OkStatus();
  }));
  return out;
}

void ExpectSynced(int dp, int ep, const std::vector<Result>& results) {
  for (int r = 0; r < dp; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    for (const auto& [name, got] : results[r].grads) {
      for (size_t i = 0; i < got.size(); ++i) {
        double want = 0.0;
        if (name == "expert_bias") {
          want = LocalGrad(name, i, r);  // untouched
        } else if (name.rfind("experts.", 0) == 0) {
          // Summed over the EDP group (same EP coordinate: global % ep), / DP.
          for (int q = r % ep; q < dp; q += ep) want += LocalGrad(name, i, q) / dp;
        } else {
          for (int q = 0; q < dp; ++q) want += LocalGrad(name, i, q) / dp;
        }
        EXPECT_NEAR(got[i], want, 1e-14) << name << "[" << i << "]";
      }
    }
  }
}

TEST(GradSyncTest, DenseGradientsBecomeTheDpMean) {
  ExpectSynced(4, 1, Sync(4, 1, 5, Mode::kAllReduceMean));
  ExpectSynced(2, 1, Sync(2, 1, 0, Mode::kAllReduceMean));
}

TEST(GradSyncTest, ExpertGradientsAreReducedOverEdpOnly) {
  // dp4 x ep2 -> edp2: ranks 0, 2 hold experts 0, 1; ranks 1, 3 hold 2, 3.
  ExpectSynced(4, 2, Sync(4, 2, 4, Mode::kAllReduceMean));
  ExpectSynced(4, 4, Sync(4, 4, 4, Mode::kAllReduceMean));
}

TEST(GradSyncTest, BucketsRespectTheLimitAndNeverMixDomains) {
  const std::vector<Result> results = Sync(4, 2, 5, Mode::kAllReduceMean);
  ParamRegistry reg;
  Build(reg, {0, 1});
  const std::vector<GradSync::Bucket>& buckets = results[0].buckets;
  // w1 12 + gamma 4 = 16 dense -> 5,5,5,1; experts 12 -> 5,5,2; w2 10 -> 5,5.
  ASSERT_EQ(buckets.size(), 9u);
  int64_t covered = 0;
  for (const GradSync::Bucket& b : buckets) {
    EXPECT_LE(b.end - b.begin, 5);
    for (const auto& p : reg.params()) {
      const bool overlaps = p->flat_offset < b.end && b.begin < p->flat_offset + p->local_numel();
      if (!overlaps) continue;
      EXPECT_NE(p->spec.role, ParamRole::kExpertBias)
          << "bucket [" << b.begin << ", " << b.end << ")";
      EXPECT_EQ(p->spec.layout.is_expert(), b.expert) << p->spec.name;
    }
    covered += b.end - b.begin;
  }
  EXPECT_EQ(covered, reg.total_local_numel() - 4);  // everything but expert_bias
}

TEST(GradSyncTest, LaunchingRangesInBackwardOrderGivesTheSameResult) {
  const auto all = Sync(4, 2, 3, Mode::kAllReduceMean);
  const auto ranges = Sync(4, 2, 3, Mode::kReverseRanges);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(all[r].grads, ranges[r].grads) << "rank " << r;
}

TEST(GradSyncTest, BadRangesAreErrors) {
  FakeWorld world;
  ASSERT_TRUE(world
                  .Run(1, {},
                       [&](ProcessGroups& pg) -> Status {
                         ParamRegistry reg;
                         Build(reg, {0});
                         GradSync sync(testing::HostCtx(), reg, pg, 4);
                         Status s = sync.LaunchRange(0, reg.total_local_numel() + 1);
                         EXPECT_THAT(s.message(), HasSubstr("not inside the flat grad buffer"));
                         EXPECT_TRUE(sync.LaunchRange(0, 6).ok());
                         s = sync.LaunchRange(2, 8);
                         EXPECT_THAT(s.message(), HasSubstr("overlaps a range already marked"));
                         EXPECT_TRUE(sync.WaitAll().ok());
                         EXPECT_TRUE(sync.LaunchRange(0, 6).ok());  // re-armed for the next step
                         return sync.WaitAll();
                       })
                  .ok());
}

TEST(GradSyncTest, FailedCollectiveIsAStatusOnEveryRank) {
  FakeWorld world;
  world.FailCollective(0, 1);
  const Status status = world.Run(2, {.dp = 2, .edp = 2}, [&](ProcessGroups& pg) -> Status {
    ParamRegistry reg;
    Build(reg, {0, 1});
    SetLocalGrads(reg, pg.coords.global);
    GradSync sync(testing::HostCtx(), reg, pg, 4);
    return sync.AllReduceMean();
  });
  EXPECT_FALSE(status.ok());
  for (const Status& s : world.rank_statuses()) EXPECT_FALSE(s.ok()) << s;
}

}  // namespace
}  // namespace scalemoe
