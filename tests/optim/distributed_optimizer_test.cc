// DistributedOptimizer in a FakeWorld: every layout must reproduce a
// single-rank Optimizer stepping on the mean gradient.
#include "optim/distributed_optimizer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "optim/clip.h"
#include "optim/optimizer_config.h"
#include "parallel/fake_communicator.h"

namespace scalemoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using Type = config::OptimizerConfig::Type;

constexpr int kExperts = 4;

config::RunConfig Config(Type type, int zero_stage, double grad_clip = 2.0) {
  config::RunConfig c;
  c.mutable_optimizer()->set_type(type);
  c.mutable_optimizer()->set_lr(1e-2);
  c.mutable_optimizer()->set_min_lr(1e-3);
  c.mutable_optimizer()->set_weight_decay(0.1);
  c.mutable_optimizer()->set_grad_clip(grad_clip);
  c.mutable_schedule()->set_warmup_steps(2);
  c.mutable_train()->set_train_steps(10);
  c.mutable_parallel()->set_zero_stage(zero_stage);
  c.mutable_parallel()->set_grad_bucket_elements(7);
  return c;
}

// Dense part: 67 elements, so that DP2 (shard 34) and DP4 (shard 17, padded
// to 68) shard boundaries 17, 34 and 51 fall inside in_gamma [16, 21),
// out_u [33, 36) and in_gamma2 [50, 54). Experts (when asked) sit between
// two dense blocks, so neither domain is contiguous in the flat buffer; a
// rank holds only the experts in `experts`.
void Build(ParamRegistry& reg, const std::set<int>& experts, DType dtype) {
  auto dense = [&](const char* name, Shape shape, ParamRole role, InitSpec init) {
    reg.Create({name, std::move(shape), role, init, {}});
  };
  dense("w1", {4, 4}, ParamRole::kLinear, InitSpec::Normal(0.5));
  dense("in_gamma", {5}, ParamRole::kInputNormScale, InitSpec::Ones());
  dense("w2", {3, 4}, ParamRole::kLinear, InitSpec::Normal(0.5));
  dense("out_u", {3}, ParamRole::kOutputNormScale, InitSpec::Ones());
  for (int e : experts) {
    ParamLayout layout;
    layout.expert = e;
    reg.Create({absl::StrCat("experts.", e, ".w"),
                {3, 2},
                ParamRole::kExpertLinear,
                InitSpec::Normal(0.5),
                layout});
    reg.Create({absl::StrCat("experts.", e, ".gamma"),
                {3},
                ParamRole::kInputNormScale,
                InitSpec::Ones(),
                layout});
  }
  if (!experts.empty()) dense("expert_bias", {kExperts}, ParamRole::kExpertBias, InitSpec::Zeros());
  dense("w3", {2, 7}, ParamRole::kLinear, InitSpec::Normal(0.5));
  dense("in_gamma2", {4}, ParamRole::kInputNormScale, InitSpec::Ones());
  dense("bias", {3}, ParamRole::kBias, InitSpec::Zeros());
  dense("w4", {2, 5}, ParamRole::kLinear, InitSpec::Normal(0.5));
  SM_CHECK_OK(reg.Materialize(7, dtype, Device::kCPU));
}

// Rank r's local gradient of element i of `name` at step t.
double LocalGrad(const std::string& name, int64_t i, int rank, int t) {
  const double salt = static_cast<double>(std::hash<std::string>{}(name) % 97);
  return std::sin(0.37 * i + 0.9 * t + 1.3 * rank + 0.11 * salt) * (1 + i % 5);
}

void SetLocalGrads(ParamRegistry& reg, int rank, int t) {
  for (const auto& p : reg.params()) {
    std::vector<double> g(p->local_numel());
    for (int64_t i = 0; i < p->local_numel(); ++i) g[i] = LocalGrad(p->spec.name, i, rank, t);
    p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
  }
}

// Layout: dp ranks, EP size ep (edp = dp / ep). Global rank -> EP coordinate
// is global % ep (Megatron order, TP = 1).
struct Layout {
  int dp = 1;
  int ep = 1;
  GridSizes Sizes() const { return {.dp = dp, .ep = ep, .edp = dp / ep}; }
  std::set<int> ExpertsOf(int ep_rank) const {
    std::set<int> out;
    for (int e = ep_rank * kExperts / ep; e < (ep_rank + 1) * kExperts / ep; ++e) out.insert(e);
    return out;
  }
};

// The single-rank reference: all experts, the mean gradient (an expert's
// local gradient on a rank counts toward the mean as GradSync says: summed
// over the ranks that hold it, divided by DP).
std::map<std::string, std::vector<double>> Reference(const config::RunConfig& config,
                                                     const Layout& layout, bool with_experts,
                                                     int steps, DType dtype,
                                                     std::vector<double>* norms) {
  ParamRegistry reg;
  std::set<int> all;
  if (with_experts) all = {0, 1, 2, 3};
  Build(reg, all, dtype);
  auto opt = Optimizer::Create(config, reg);
  SM_CHECK_OK(opt.status());
  for (int t = 0; t < steps; ++t) {
    for (const auto& p : reg.params()) {
      std::vector<double> g(p->local_numel(), 0.0);
      for (int r = 0; r < layout.dp; ++r) {
        const int ep_rank = r % layout.ep;
        if (p->spec.layout.expert >= 0 && !layout.ExpertsOf(ep_rank).count(p->spec.layout.expert)) {
          continue;
        }
        for (int64_t i = 0; i < p->local_numel(); ++i) {
          g[i] += LocalGrad(p->spec.name, i, r, t) / layout.dp;
        }
      }
      p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
    }
    const ExecContext ctx = ExecContext::Cpu();
    const StepStats stats = ReadStepStats(ctx, (*opt)->Step(ctx, t));
    SM_CHECK(stats.applied);
    norms->push_back(stats.grad_norm);
  }
  std::map<std::string, std::vector<double>> out;
  for (const auto& p : reg.params()) out[p->spec.name] = p->value.ToVector();
  return out;
}

struct RankResult {
  std::map<std::string, std::vector<double>> values;
  std::vector<double> norms;
  MemoryReport memory;
};

// Runs `steps` distributed steps on every rank; results indexed by global rank.
std::vector<RankResult> RunDistributed(const config::RunConfig& config, const Layout& layout,
                                       bool with_experts, int steps, DType dtype) {
  std::vector<RankResult> results(layout.dp);
  FakeWorld world;
  const Status status = world.Run(layout.dp, layout.Sizes(), [&](ProcessGroups& pg) -> Status {
    ParamRegistry reg;
    Build(reg, with_experts ? layout.ExpertsOf(pg.coords.ep) : std::set<int>{}, dtype);
    SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(config, reg, pg));
    RankResult& out = results[pg.coords.global];
    for (int t = 0; t < steps; ++t) {
      SetLocalGrads(reg, pg.coords.global, t);
      SM_ASSIGN_OR_RETURN(const StepResult result, opt->Step(ExecContext::Cpu(), t));
      const StepStats stats = ReadStepStats(ExecContext::Cpu(), result);
      if (!stats.applied) return absl::InternalError("step not applied");
      out.norms.push_back(stats.grad_norm);
    }
    for (const auto& p : reg.params()) out.values[p->spec.name] = p->value.ToVector();
    out.memory = opt->Memory();
    return absl::OkStatus();
  });
  SM_CHECK_OK(status);
  return results;
}

void ExpectMatchesReference(Type type, int zero_stage, const Layout& layout, bool with_experts,
                            DType dtype, double tolerance) {
  const config::RunConfig config = Config(type, zero_stage);
  constexpr int kSteps = 4;
  std::vector<double> ref_norms;
  const auto ref = Reference(config, layout, with_experts, kSteps, dtype, &ref_norms);
  // Clipping (at 2.0) must be exercised, so the norm's exactness matters.
  EXPECT_GT(*std::max_element(ref_norms.begin(), ref_norms.end()), 2.0);
  const auto ranks = RunDistributed(config, layout, with_experts, kSteps, dtype);
  for (int r = 0; r < layout.dp; ++r) {
    SCOPED_TRACE(absl::StrCat("rank ", r));
    ASSERT_EQ(ranks[r].norms.size(), ref_norms.size());
    for (size_t t = 0; t < ref_norms.size(); ++t) {
      EXPECT_NEAR(ranks[r].norms[t], ref_norms[t], tolerance * ref_norms[t]) << "step " << t;
    }
    for (const auto& [name, values] : ranks[r].values) {
      const std::vector<double>& want = ref.at(name);
      ASSERT_EQ(values.size(), want.size()) << name;
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_NEAR(values[i], want[i], tolerance * std::max(1.0, std::abs(want[i])))
            << name << "[" << i << "]";
      }
    }
  }
}

TEST(DistributedOptimizerTest, MatchesSingleRankOnTheMeanGradientF64) {
  for (Type type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    for (int zero : {0, 1}) {
      for (int dp : {1, 2, 4}) {
        SCOPED_TRACE(
            absl::StrCat(config::OptimizerConfig::Type_Name(type), " zero ", zero, " dp ", dp));
        ExpectMatchesReference(type, zero, {.dp = dp}, false, DType::kF64, 1e-12);
      }
    }
  }
}

TEST(DistributedOptimizerTest, MatchesSingleRankOnTheMeanGradientF32) {
  for (Type type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    for (int zero : {0, 1}) {
      for (int dp : {2, 4}) {
        SCOPED_TRACE(
            absl::StrCat(config::OptimizerConfig::Type_Name(type), " zero ", zero, " dp ", dp));
        ExpectMatchesReference(type, zero, {.dp = dp}, false, DType::kF32, 1e-6);
      }
    }
  }
}

// dp4 x ep2 -> edp2: ranks with different EP coordinates hold different
// experts; expert state is sharded and reduced over edp only.
TEST(DistributedOptimizerTest, ExpertParallelMatchesSingleRank) {
  for (Type type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    for (int zero : {0, 1}) {
      SCOPED_TRACE(absl::StrCat(config::OptimizerConfig::Type_Name(type), " zero ", zero));
      ExpectMatchesReference(type, zero, {.dp = 4, .ep = 2}, true, DType::kF64, 1e-12);
      ExpectMatchesReference(type, zero, {.dp = 4, .ep = 4}, true, DType::kF64, 1e-12);
    }
  }
}

// Zero gradients: only decoupled decay acts, so every element of every scale
// vector must show exactly its role's IWD decay, however the shards cut them.
TEST(DistributedOptimizerTest, ShardedDecayFollowsTheRolePolicyPerElement) {
  const config::RunConfig config = Config(config::OptimizerConfig::ADAMW, 1);
  const double lr = 0.5e-2;  // warm-up step 0 of 2
  std::mutex mu;
  int checked = 0;
  FakeWorld world;
  ASSERT_TRUE(
      world
          .Run(4, {.dp = 4, .edp = 4},
               [&](ProcessGroups& pg) -> Status {
                 ParamRegistry reg;
                 Build(reg, {}, DType::kF64);
                 SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(config, reg, pg));
                 reg.ZeroGrads();
                 const ExecContext ctx = ExecContext::Cpu();
                 SM_ASSIGN_OR_RETURN(const StepResult result, opt->Step(ctx, 0));
                 const StepStats stats = ReadStepStats(ctx, result);
                 std::lock_guard<std::mutex> lock(mu);
                 EXPECT_DOUBLE_EQ(stats.lr, lr);
                 for (const char* name : {"in_gamma", "in_gamma2"}) {
                   const Param* p = reg.Find(name);
                   for (int64_t i = 0; i < p->local_numel(); ++i, ++checked) {
                     EXPECT_DOUBLE_EQ(p->value.At(i), 1.0 - lr * 0.1) << name << "[" << i << "]";
                   }
                 }
                 const Param* u = reg.Find("out_u");
                 for (int64_t i = 0; i < u->local_numel(); ++i, ++checked) {
                   EXPECT_DOUBLE_EQ(u->value.At(i), 1.0) << "out_u[" << i << "]";
                 }
                 return absl::OkStatus();
               })
          .ok());
  EXPECT_EQ(checked, 4 * (5 + 4 + 3));
}

TEST(DistributedOptimizerTest, OptimizerStatePerRankFallsAsOneOverDp) {
  const config::RunConfig config = Config(config::OptimizerConfig::ADAMW, 1);
  const auto dp1 = RunDistributed(config, {.dp = 1}, false, 1, DType::kF32);
  const auto dp4 = RunDistributed(config, {.dp = 4}, false, 1, DType::kF32);
  const int64_t n = 67;  // every element is AdamW's; master + m + v in f32
  EXPECT_EQ(dp1[0].memory.optimizer_state_bytes, 3 * n * 4);
  // Shard 17 (padded to 68): master weights span the shard, m and v only the
  // real elements (rank 3 owns 16).
  for (int r = 0; r < 4; ++r) {
    const int64_t owned = std::min<int64_t>(n, (r + 1) * 17) - r * 17;
    EXPECT_EQ(dp4[r].memory.optimizer_state_bytes, (17 + 2 * owned) * 4) << "rank " << r;
    EXPECT_LE(dp4[r].memory.optimizer_state_bytes, dp1[0].memory.optimizer_state_bytes / 4 + 3 * 4);
    EXPECT_EQ(dp4[r].memory.param_bytes, dp1[0].memory.param_bytes);  // never sharded
  }
  // The flat buffer: the parameters and the padding before aligned matrices.
  EXPECT_GE(dp1[0].memory.param_bytes, n * 4);
  EXPECT_LT(dp1[0].memory.param_bytes, (n + 4 * kParamAlignment) * 4);
  const auto replicated =
      RunDistributed(Config(config::OptimizerConfig::ADAMW, 0), {.dp = 4}, false, 1, DType::kF32);
  // Unsharded m and v span the flat buffer, padding included.
  EXPECT_EQ(replicated[0].memory.optimizer_state_bytes, 2 * replicated[0].memory.param_bytes);
}

// Each rank's slices cover its shard; over the dp group every element of
// every AdamW parameter is owned exactly once.
TEST(DistributedOptimizerTest, StateSlicesTileEveryParameterOnce) {
  const config::RunConfig config = Config(config::OptimizerConfig::ADAMW, 1);
  std::mutex mu;
  std::map<std::string, std::vector<int>> owners;  // name -> count per element
  FakeWorld world;
  ASSERT_TRUE(world
                  .Run(4, {.dp = 4, .edp = 4},
                       [&](ProcessGroups& pg) -> Status {
                         ParamRegistry reg;
                         Build(reg, {}, DType::kF32);
                         SM_ASSIGN_OR_RETURN(auto opt,
                                             DistributedOptimizer::Create(config, reg, pg));
                         std::lock_guard<std::mutex> lock(mu);
                         for (const StateSlice& s : opt->StateSlices()) {
                           std::vector<int>& count = owners[s.name];
                           count.resize(s.param->local_numel());
                           for (int64_t i = 0; i < s.data.numel(); ++i) count[s.start + i] += 1;
                         }
                         return absl::OkStatus();
                       })
                  .ok());
  EXPECT_EQ(owners.size(),
            2u * 8);  // adam_m and adam_v of every dense parameter
  for (const auto& [name, count] : owners) {
    for (size_t i = 0; i < count.size(); ++i) EXPECT_EQ(count[i], 1) << name << "[" << i << "]";
  }
}

// ---- Tensor parallelism: split and replicated parameters over TP/ETP. ----

// Dense: column- and row-split matrices, a split bias, a replicated matrix
// and scale vectors; expert-layout (ETP): routed experts split on either dim
// with a replicated γ, and a replicated expert-TP matrix (no expert index).
// Sizes make the ZeRO-1 shards cut through split and replicated tensors.
void BuildTp(ParamRegistry& reg, DType dtype) {
  auto add = [&](const std::string& name, Shape shape, ParamRole role, int split,
                 TpGroup group = TpGroup::kDense, int expert = -1) {
    ParamLayout layout;
    layout.tp_split_dim = split;
    layout.tp_group = group;
    layout.expert = expert;
    const InitSpec init = role == ParamRole::kInputNormScale || role == ParamRole::kOutputNormScale
                              ? InitSpec::Ones()
                              : InitSpec::Normal(0.5);
    reg.Create({name, std::move(shape), role, init, layout});
  };
  add("w_col", {8, 5}, ParamRole::kLinear, 0);
  add("in_gamma", {5}, ParamRole::kInputNormScale, -1);
  add("w_row", {3, 8}, ParamRole::kLinear, 1);
  add("b_col", {8}, ParamRole::kBias, 0);
  add("w_rep", {3, 3}, ParamRole::kLinear, -1);
  for (int e = 0; e < 2; ++e) {
    add(absl::StrCat("experts.", e, ".w_up"), {3, 4}, ParamRole::kExpertLinear, 1,
        TpGroup::kExpert, e);
    add(absl::StrCat("experts.", e, ".gamma"), {3}, ParamRole::kInputNormScale, -1,
        TpGroup::kExpert, e);
    add(absl::StrCat("experts.", e, ".w_down"), {4, 3}, ParamRole::kExpertLinear, 0,
        TpGroup::kExpert, e);
  }
  add("shared_rep", {2, 3}, ParamRole::kExpertLinear, -1, TpGroup::kExpert);
  add("out_u", {3}, ParamRole::kOutputNormScale, -1);
  SM_CHECK_OK(reg.Materialize(11, dtype, Device::kCPU));
}

// The gradient data-parallel replica `dp` computes for global element `gi`
// (identical on every (E)TP rank of the replica, as after the model's
// partial-gradient sums).
double ReplicaGrad(const std::string& name, int64_t gi, int dp, int t) {
  return LocalGrad(name, gi, dp, t);
}

// What a rank holds for an expert-layout element, as the MoE layer leaves
// it: each replica's tokens are split over its TP ranks, and an ETP group
// computes over the tokens of all its members; so the sum over the ETP
// group's members Q of replica dp(Q)'s gradient, over tp. Summed over edp
// (and ×1/DP) this is the mean over replicas, like a dense gradient.
double ExpertGrad(const ProcessGroups& pg, const std::string& name, int64_t gi, int t) {
  double g = 0;
  for (int q : pg.grid.GroupOf(Axis::kEtp, pg.coords.global)) {
    g += ReplicaGrad(name, gi, pg.grid.Coords(q).dp, t);
  }
  return g / pg.grid.sizes().tp;
}

ShardCoords CoordsOf(const ProcessGroups& pg) {
  return {pg.coords.tp, pg.grid.sizes().tp, pg.coords.etp, pg.grid.sizes().etp};
}

// TP `tp` x DP `dp`, every expert on every rank (ep 1), experts split over
// ETP `etp` (edp = tp*dp/etp) vs one rank on the mean over replicas.
void ExpectTpMatchesReference(int zero, int tp, int dp, int etp) {
  const config::RunConfig config = Config(config::OptimizerConfig::ADAMW, zero);
  constexpr int kSteps = 4;
  const int world_size = tp * dp;
  std::vector<double> ref_norms;
  std::map<std::string, std::vector<double>> ref;
  {
    ParamRegistry reg;
    BuildTp(reg, DType::kF64);
    auto opt = Optimizer::Create(config, reg);
    SM_CHECK_OK(opt.status());
    for (int t = 0; t < kSteps; ++t) {
      for (const auto& p : reg.params()) {
        std::vector<double> g(p->local_numel(), 0.0);
        for (int r = 0; r < dp; ++r) {
          for (int64_t i = 0; i < p->local_numel(); ++i) g[i] += ReplicaGrad(p->spec.name, i, r, t) / dp;
        }
        p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
      }
      const ExecContext ctx = ExecContext::Cpu();
      const StepStats stats = ReadStepStats(ctx, (*opt)->Step(ctx, t));
      SM_CHECK(stats.applied);
      ref_norms.push_back(stats.grad_norm);
    }
    for (const auto& p : reg.params()) ref[p->spec.name] = p->value.ToVector();
  }
  EXPECT_GT(*std::max_element(ref_norms.begin(), ref_norms.end()), 2.0);  // clipping acts
  std::mutex mu;
  FakeWorld world;
  const GridSizes sizes{.tp = tp, .dp = dp, .etp = etp, .ep = 1, .edp = world_size / etp};
  const Status status = world.Run(world_size, sizes, [&](ProcessGroups& pg) -> Status {
    ParamRegistry reg(CoordsOf(pg));
    BuildTp(reg, DType::kF64);
    SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(config, reg, pg));
    std::vector<double> norms;
    for (int t = 0; t < kSteps; ++t) {
      for (const auto& p : reg.params()) {
        std::vector<double> g(p->local_numel());
        for (int64_t i = 0; i < p->local_numel(); ++i) {
          const int64_t gi = p->GlobalIndex(i, reg.coords());
          g[i] = p->spec.layout.is_expert() ? ExpertGrad(pg, p->spec.name, gi, t)
                                            : ReplicaGrad(p->spec.name, gi, pg.coords.dp, t);
        }
        p->grad.CopyFrom(Tensor::FromVector(p->local_shape, g, DType::kF64));
      }
      SM_ASSIGN_OR_RETURN(const StepResult result, opt->Step(ExecContext::Cpu(), t));
      const StepStats stats = ReadStepStats(ExecContext::Cpu(), result);
      if (!stats.applied) return absl::InternalError("step not applied");
      norms.push_back(stats.grad_norm);
    }
    std::lock_guard<std::mutex> lock(mu);
    SCOPED_TRACE(absl::StrCat("rank ", pg.coords.global, " tp ", pg.coords.tp, " etp ",
                              pg.coords.etp));
    for (int t = 0; t < kSteps; ++t) {
      EXPECT_NEAR(norms[t], ref_norms[t], 1e-12 * ref_norms[t]) << "step " << t;
    }
    for (const auto& p : reg.params()) {
      const std::vector<double> got = p->value.ToVector();
      const std::vector<double>& want = ref.at(p->spec.name);
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        const int64_t gi = p->GlobalIndex(i, reg.coords());
        EXPECT_NEAR(got[i], want[gi], 1e-12 * std::max(1.0, std::abs(want[gi])))
            << p->spec.name << "[" << gi << "]";
      }
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
}

TEST(DistributedOptimizerTest, TensorParallelMatchesSingleRankOnWholeTensors) {
  for (int zero : {0, 1}) {
    for (auto [tp, dp, etp] : {std::tuple{2, 1, 1}, std::tuple{2, 2, 1}, std::tuple{2, 2, 2},
                               std::tuple{1, 2, 2}, std::tuple{4, 1, 2}}) {
      SCOPED_TRACE(absl::StrCat("zero ", zero, " tp ", tp, " dp ", dp, " etp ", etp));
      ExpectTpMatchesReference(zero, tp, dp, etp);
    }
  }
}

// The validator refuses Muon under (E)TP (one validation path); a direct
// caller that skips it gets an abort naming the rule, not a wrong update.
TEST(DistributedOptimizerTest, MuonIsRefusedUnderTensorParallelism) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // FakeWorld runs ranks on threads
  for (auto [tp, etp] : {std::pair{2, 1}, std::pair{1, 2}}) {
    config::RunConfig config = Config(config::OptimizerConfig::MUON, 1);
    config.mutable_parallel()->set_tp(tp);
    config.mutable_parallel()->set_etp(etp);
    ConfigProblems problems;
    ValidateOptimizerConfig(config, problems);
    EXPECT_THAT(problems.ToStatus("optimizer").message(),
                AllOf(HasSubstr("optimizer.type=MUON"), HasSubstr("ADAMW")));
    EXPECT_DEATH(
        {
          FakeWorld world;
          (void)world.Run(2, {.tp = tp, .dp = 2 / tp, .etp = etp, .edp = 2 / etp},
                          [&](ProcessGroups& pg) -> Status {
                            ParamRegistry reg(CoordsOf(pg));
                            BuildTp(reg, DType::kF32);
                            (void)DistributedOptimizer::Create(config, reg, pg);
                            return absl::OkStatus();
                          });
        },
        "optimizer.type=MUON with tp=");
  }
}

// StateBoxes of every rank, each (E)TP-replicated tensor's taken from (E)TP
// rank 0 only (as checkpoints do), tile every parameter's GLOBAL shape once,
// and each box element is the state of that global element.
TEST(DistributedOptimizerTest, StateBoxesTileTheGlobalShapesUnderTp) {
  for (int zero : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("zero ", zero));
    const config::RunConfig config = Config(config::OptimizerConfig::ADAMW, zero);
    std::mutex mu;
    std::map<std::string, std::vector<int>> count;  // name -> per global element
    FakeWorld world;
    const Status status =
        world.Run(4, {.tp = 2, .dp = 2, .etp = 2, .ep = 1, .edp = 2}, [&](ProcessGroups& pg) -> Status {
          ParamRegistry reg(CoordsOf(pg));
          BuildTp(reg, DType::kF64);
          SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(config, reg, pg));
          const std::vector<StateSlice> slices = opt->StateSlices();
          // Mark every state element with its parameter's global index.
          for (const StateSlice& s : slices) {
            for (int64_t i = 0; i < s.data.numel(); ++i) {
              s.data.Narrow(0, i, 1).Fill(
                  static_cast<double>(s.param->GlobalIndex(s.start + i, reg.coords())));
            }
          }
          std::lock_guard<std::mutex> lock(mu);
          for (const StateSlice& s : slices) {
            const ParamLayout& l = s.param->spec.layout;
            if (l.tp_split_dim < 0 && (l.is_expert() ? pg.coords.etp : pg.coords.tp) != 0) continue;
            if (zero == 0 && (l.is_expert() ? pg.coords.edp : pg.coords.dp) != 0) continue;
            const Shape& global = s.param->spec.shape;
            std::vector<int>& c = count[s.name];
            c.resize(NumElements(global));
            int64_t total = 0;
            const std::vector<StateBox> boxes = StateBoxes(s, reg.coords());
            EXPECT_LE(boxes.size(), 2 * global.size() - 1) << s.name;
            for (const StateBox& box : boxes) {
              const std::vector<double> v = box.data.ToVector();
              const Shape& size = box.data.shape();
              const Shape strides = ContiguousStrides(global);
              for (int64_t j = 0; j < static_cast<int64_t>(v.size()); ++j) {
                int64_t rest = j, gi = 0;
                for (int d = static_cast<int>(size.size()) - 1; d >= 0; --d) {
                  gi += (box.slice_start[d] + rest % size[d]) * strides[d];
                  rest /= size[d];
                }
                EXPECT_EQ(v[j], static_cast<double>(gi)) << s.name;
                c[gi] += 1;
              }
              total += box.data.numel();
            }
            EXPECT_EQ(total, s.data.numel()) << s.name;
          }
          return absl::OkStatus();
        });
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(count.size(), 2u * 13);  // adam_m, adam_v of every parameter
    for (const auto& [name, c] : count) {
      for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i], 1) << name << "[" << i << "]";
    }
  }
}

TEST(DistributedOptimizerTest, NonFiniteGradientOnOneRankChangesNothingAnywhere) {
  for (int zero : {0, 1}) {
    const config::RunConfig config = Config(config::OptimizerConfig::MUON, zero);
    FakeWorld world;
    ASSERT_TRUE(world
                    .Run(2, {.dp = 2, .edp = 2},
                         [&](ProcessGroups& pg) -> Status {
                           ParamRegistry reg;
                           Build(reg, {}, DType::kF32);
                           SM_ASSIGN_OR_RETURN(auto opt,
                                               DistributedOptimizer::Create(config, reg, pg));
                           const std::vector<double> before = reg.flat_values().ToVector();
                           SetLocalGrads(reg, pg.coords.global, 0);
                           if (pg.coords.global == 1)
                             reg.Find("in_gamma")->grad.data<float>()[2] = NAN;
                           const ExecContext ctx = ExecContext::Cpu();
                           SM_ASSIGN_OR_RETURN(const StepResult result, opt->Step(ctx, 0));
                           const StepStats stats = ReadStepStats(ctx, result);
                           EXPECT_FALSE(stats.applied);
                           EXPECT_FALSE(std::isfinite(stats.grad_norm));
                           EXPECT_EQ(opt->num_updates(), 0);
                           EXPECT_EQ(reg.flat_values().ToVector(), before);
                           for (const StateSlice& s : opt->StateSlices()) {
                             for (double v : s.data.ToVector()) EXPECT_EQ(v, 0.0) << s.name;
                           }
                           return absl::OkStatus();
                         })
                    .ok());
  }
}

// The step reads nothing on the host, on every layout and stage, with a
// finite and a non-finite gradient: the norm, the clip factor and the skip
// stay tensors on the optimizer's context.
TEST(DistributedOptimizerTest, StepMakesNoHostReads) {
  for (Type type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    for (int zero : {0, 1}) {
      SCOPED_TRACE(absl::StrCat(config::OptimizerConfig::Type_Name(type), " zero ", zero));
      const config::RunConfig config = Config(type, zero);
      const Layout layout{.dp = 4, .ep = 2};
      FakeWorld world;
      const Status status = world.Run(layout.dp, layout.Sizes(), [&](ProcessGroups& pg) -> Status {
        const ExecContext ctx = ExecContext::Cpu();
        ParamRegistry reg;
        Build(reg, layout.ExpertsOf(pg.coords.ep), DType::kF32);
        SM_ASSIGN_OR_RETURN(auto opt, DistributedOptimizer::Create(config, reg, pg, ctx));
        const int64_t before = ctx.counters().host_reads.load();
        for (int t = 0; t < 3; ++t) {
          SetLocalGrads(reg, pg.coords.global, t);
          if (t == 1 && pg.coords.global == 2) reg.Find("w2")->grad.data<float>()[0] = NAN;
          SM_ASSIGN_OR_RETURN(const StepResult result, opt->Step(ctx, t));
          EXPECT_EQ(result.grad_norm.device(), ctx.device());
        }
        EXPECT_EQ(ctx.counters().host_reads.load(), before) << "rank " << pg.coords.global;
        EXPECT_EQ(opt->num_updates(), 2);  // the non-finite step was skipped everywhere
        return absl::OkStatus();
      });
      ASSERT_TRUE(status.ok()) << status;
    }
  }
}

// Its config rules are the optimizer validator's (one validation path).
TEST(DistributedOptimizerTest, ValidatorRejectsBadConfigWithTheFieldName) {
  auto problems = [](const config::RunConfig& c) {
    ConfigProblems p;
    ValidateOptimizerConfig(c, p);
    return std::string(p.ToStatus("optimizer").message());
  };
  EXPECT_EQ(problems(Config(config::OptimizerConfig::ADAMW, 1)), "");
  EXPECT_THAT(problems(Config(config::OptimizerConfig::ADAMW, 2)),
              HasSubstr("parallel.zero_stage=2"));
  config::RunConfig c = Config(config::OptimizerConfig::ADAMW, 1);
  c.mutable_optimizer()->set_beta2(1.5);
  EXPECT_THAT(problems(c), HasSubstr("optimizer.beta2=1.5"));
}

TEST(DistributedOptimizerTest, CommunicationFailureIsAStatusNotAHang) {
  FakeWorld world;
  world.FailCollective(1, 0);
  const Status status = world.Run(2, {.dp = 2, .edp = 2}, [&](ProcessGroups& pg) -> Status {
    ParamRegistry reg;
    Build(reg, {}, DType::kF32);
    SM_ASSIGN_OR_RETURN(
        auto opt, DistributedOptimizer::Create(Config(config::OptimizerConfig::ADAMW, 1), reg, pg));
    SetLocalGrads(reg, pg.coords.global, 0);
    return opt->Step(ExecContext::Cpu(), 0).status();
  });
  EXPECT_FALSE(status.ok());
}

}  // namespace
}  // namespace scalemoe
