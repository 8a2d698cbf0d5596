// Tensor and expert tensor parallelism: MoeLayer over FakeWorld TP/ETP
// layouts equals one single-rank MoeLayer on the concatenated tokens.
//
// The model's contract: the TP ranks of a data-parallel replica split one
// micro-batch by rows (TP rank t holds rows [t*N, (t+1)*N)); DP replicas hold
// different micro-batches. The reference for replica d is the single-rank
// layer on the N·TP rows of d's TP ranks in TP rank order. Checked on every
// rank, in f64, with relative tolerance kTol = 1e-12 (max |a-b| over the
// tensor, divided by the tensor's max |value|):
// - outputs and d_n: this rank's rows of its replica's reference;
// - aux and z losses: the replica's whole value, on every TP rank;
// - stats: loads and drops summed over every replica, on every rank;
// - host reads: one ctx.ToHost per Forward (the counts) under EP or ETP, with
//   capacity drops or with experts that do not run grouped; none when every
//   expert is local, dropless and grouped (device offsets); none in Backward;
// - every parameter gradient after what the trainer does each step:
//   SumPartialGradsOverTp (the partial shares over TP/ETP), then GradSync's
//   data-parallel mean (dense: Σ over dp / DP; expert: Σ over edp / DP) —
//   against the reference's mean over replicas, a split parameter sliced by
//   its global coordinates. Every element of every reference parameter is
//   held by some rank.
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "moe/moe_config.h"
#include "moe/moe_layer.h"
#include "parallel/fake_communicator.h"
#include "parallel/grad_sync.h"
#include "parallel/tp_grad_reduce.h"
#include "tests/moe/moe_test_util.h"
#include "tests/testing/host_context.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using config::ScaleVectorConfig;
using testing::kHidden;
using testing::kTokens;

constexpr uint64_t kSeed = 4321;
constexpr double kTol = 1e-12;

// A gradient as held by one rank: local values and their global indices.
struct HeldGrad {
  std::vector<double> values;
  std::vector<int64_t> global_index;
};

struct Result {
  Tensor out, d_n;
  double aux = 0, z = 0;
  MoeLayerStats stats;  // of the step (one micro-batch), reduced over the replicas
  std::map<std::string, HeldGrad> grads;  // trainable parameters by global name
  int64_t forward_reads = 0, backward_reads = 0;  // ctx.ToHost calls
};

// Moves every scale vector off its init by a function of (name, global
// index), so a shard gets exactly the slice of the single-rank values.
void PerturbByName(ParamRegistry& registry) {
  for (const auto& p : registry.params()) {
    if (!IsScaleVector(p->spec.role)) continue;
    const uint64_t stream = std::hash<std::string>()(p->spec.name);
    double* v = p->value.data<double>();
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      v[i] += 0.2 * PhiloxNormal(7, stream, p->GlobalIndex(i, registry.coords()));
    }
  }
}

Tensor Tokens(int rank, int64_t rows) {
  return testing::RandomTensor({rows, kHidden}, 100 + rank);
}
Tensor OutGrad(int rank, int64_t rows) {
  return testing::RandomTensor({rows, kHidden}, 200 + rank);
}

// One forward/backward/FinishBackward; with groups also the trainer's TP
// partial sum and DP mean. Records everything.
Result RunLayer(const config::RunConfig& cfg, ProcessGroups* groups, const Tensor& n,
                const Tensor& d_out) {
  const ExecContext ctx = ExecContext::Cpu();
  ShardCoords coords;
  if (groups != nullptr) {
    coords = {groups->coords.tp, groups->grid.sizes().tp, groups->coords.etp,
              groups->grid.sizes().etp};
  }
  ParamRegistry registry(coords);
  MoeLayer layer(registry, cfg, 0, "layers.0.moe", "layers.0.ffn_norm", groups);
  SM_CHECK_OK(registry.Materialize(kSeed, DType::kF64, Device::kCPU));
  PerturbByName(registry);
  registry.ZeroGrads();
  Must(layer.PrepareStep(ctx, DType::kF64));
  Result r;
  r.out = Tensor::Empty(n.shape(), DType::kF64);
  r.d_n = Tensor::Empty(n.shape(), DType::kF64);
  const int64_t reads = ctx.counters().host_reads;
  Must(layer.Forward(ctx, n, r.out));
  r.forward_reads = ctx.counters().host_reads - reads;
  Must(layer.Backward(ctx, d_out, r.d_n, 1.0));
  Must(layer.FinishBackward(ctx));
  r.backward_reads = ctx.counters().host_reads - reads - r.forward_reads;
  if (groups != nullptr) {
    SM_CHECK_OK(SumPartialGradsOverTp(testing::HostCtx(), registry, 0, registry.params().size(),
                                      *groups->tp, *groups->etp));
    GradSync sync(testing::HostCtx(), registry, *groups, /*bucket_elements=*/0);
    SM_CHECK_OK(sync.AllReduceMean());
  }
  r.aux = layer.aux_loss().At(0);
  r.z = layer.z_loss().At(0);
  r.stats = Must(layer.step_stats(ctx));
  for (const auto& p : registry.params()) {
    if (!IsTrainable(p->spec.role)) continue;
    HeldGrad& g = r.grads[p->spec.name];
    g.values = p->grad.ToVector();
    for (int64_t i = 0; i < p->local_numel(); ++i) {
      g.global_index.push_back(p->GlobalIndex(i, registry.coords()));
    }
  }
  return r;
}

double MaxRelDiff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 1e-30;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    norm = std::max({norm, std::abs(a[i]), std::abs(b[i])});
  }
  return diff / norm;
}

// The layer's host reads per Forward (moe/moe_layer.h, "Host synchronisation").
int64_t ExpectedForwardReads(const config::RunConfig& cfg, const GridSizes& sizes) {
  const config::ScaleVectorConfig& sv = cfg.scale_vectors();
  const bool grouped = sv.mode() == config::ScaleVectorConfig::NONE ||
                       (sv.fold_into_weights() && !sv.fold_just_in_time());
  const bool local = sizes.ep == 1 && sizes.etp == 1;
  return local && cfg.moe().capacity_factor() <= 0 && grouped ? 0 : 1;
}

Tensor Rows(const Tensor& t, int64_t start, int64_t rows) {
  return t.Narrow(0, start, rows).Clone();
}

// The whole check for one config on one layout (pp = 1).
void ExpectMatchesSingleRank(const config::RunConfig& cfg, int world, const GridSizes& sizes) {
  SCOPED_TRACE(absl::StrCat("tp=", sizes.tp, " dp=", sizes.dp, " etp=", sizes.etp,
                            " ep=", sizes.ep, " edp=", sizes.edp));
  const int tp = sizes.tp, dp = sizes.dp;
  ASSERT_EQ(tp * dp, world);
  const int num_experts = cfg.moe().num_experts();
  // Replica d's micro-batch: the rows of global ranks t + tp*d, t = 0..tp-1.
  std::vector<Result> reference(dp);
  std::map<std::string, std::vector<double>> mean_grads;
  std::vector<int64_t> loads(num_experts, 0);
  int64_t dropped = 0;
  for (int d = 0; d < dp; ++d) {
    Tensor n = Tensor::Empty({tp * kTokens, kHidden}, DType::kF64);
    Tensor d_out = Tensor::Empty(n.shape(), DType::kF64);
    for (int t = 0; t < tp; ++t) {
      n.Narrow(0, t * kTokens, kTokens).CopyFrom(Tokens(t + tp * d, kTokens));
      d_out.Narrow(0, t * kTokens, kTokens).CopyFrom(OutGrad(t + tp * d, kTokens));
    }
    reference[d] = RunLayer(cfg, nullptr, n, d_out);
    for (const auto& [name, g] : reference[d].grads) {
      std::vector<double>& m = mean_grads[name];
      m.resize(g.values.size(), 0.0);
      for (size_t i = 0; i < g.values.size(); ++i) m[i] += g.values[i] / dp;
    }
    for (int e = 0; e < num_experts; ++e) loads[e] += reference[d].stats.tokens_per_expert[e];
    dropped += reference[d].stats.dropped_tokens;
  }

  std::vector<Result> multi(world);
  std::vector<GridCoords> coords(world);
  FakeWorld fake;
  const Status status = fake.Run(world, sizes, [&](ProcessGroups& groups) {
    const int g = groups.coords.global;
    coords[g] = groups.coords;
    multi[g] = RunLayer(cfg, &groups, Tokens(g, kTokens), OutGrad(g, kTokens));
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;

  std::map<std::string, std::vector<bool>> covered;
  for (const auto& [name, m] : mean_grads) covered[name].assign(m.size(), false);
  for (int g = 0; g < world; ++g) {
    SCOPED_TRACE(absl::StrCat("rank ", g));
    const Result& m = multi[g];
    const Result& ref = reference[coords[g].dp];
    const int64_t first = coords[g].tp * kTokens;
    ASSERT_TRUE(m.out.defined());
    EXPECT_LE(MaxRelDiff(m.out.ToVector(), Rows(ref.out, first, kTokens).ToVector()), kTol);
    EXPECT_LE(MaxRelDiff(m.d_n.ToVector(), Rows(ref.d_n, first, kTokens).ToVector()), kTol);
    EXPECT_NEAR(m.aux, ref.aux, kTol * std::abs(ref.aux));
    EXPECT_NEAR(m.z, ref.z, kTol * std::abs(ref.z));
    EXPECT_EQ(m.stats.tokens_per_expert, loads);
    EXPECT_EQ(m.stats.dropped_tokens, dropped);
    // The layer's counts (EP and ETP exchanged on the device), if it reads them.
    EXPECT_EQ(m.forward_reads, ExpectedForwardReads(cfg, sizes));
    EXPECT_EQ(m.backward_reads, 0);
    EXPECT_NEAR(m.stats.aux_loss, ref.aux, kTol * std::abs(ref.aux));
    EXPECT_NEAR(m.stats.z_loss, ref.z, kTol * std::abs(ref.z));
    for (const auto& [name, held] : m.grads) {
      ASSERT_TRUE(mean_grads.count(name)) << name << " is not a single-rank parameter";
      const std::vector<double>& whole = mean_grads.at(name);
      std::vector<double> slice;
      for (int64_t i : held.global_index) {
        slice.push_back(whole.at(i));
        covered[name][i] = true;
      }
      // Relative to the whole reference tensor (a slice may be ~0).
      double norm = 1e-30, diff = 0;
      for (double v : whole) norm = std::max(norm, std::abs(v));
      for (size_t i = 0; i < slice.size(); ++i) {
        diff = std::max(diff, std::abs(slice[i] - held.values[i]));
      }
      EXPECT_LE(diff / norm, kTol) << name;
    }
  }
  for (const auto& [name, elems] : covered) {
    int64_t missing = 0;
    for (bool c : elems) missing += c ? 0 : 1;
    EXPECT_EQ(missing, 0) << name << " has elements no rank holds";
  }
}

// The unified strategy: PER_BRANCH (router and routed experts their own γ),
// DUAL gate/up/down, normalized magnitude-direction, a shared expert.
config::RunConfig UnifiedConfig(int num_experts, bool hg_shared = false) {
  // F = 6, K = 2, softmax, aux and z on.
  config::RunConfig cfg =
      testing::DualExpertsConfig(num_experts, ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED);
  ScaleVectorConfig* sv = cfg.mutable_scale_vectors();
  sv->set_hg_router(true);
  sv->set_hg_experts(true);
  sv->set_hg_shared_experts(hg_shared);
  return cfg;
}

// One γ for the router and every expert (it collects every F-slice share).
config::RunConfig SharedPlainConfig() {
  config::RunConfig cfg = UnifiedConfig(4);
  ScaleVectorConfig* sv = cfg.mutable_scale_vectors();
  sv->set_mode(ScaleVectorConfig::SHARED);
  sv->set_reparam(ScaleVectorConfig::PLAIN);
  return cfg;
}

GridSizes Sizes(int tp, int dp, int etp, int ep, int edp) {
  GridSizes s;
  s.tp = tp;
  s.dp = dp;
  s.etp = etp;
  s.ep = ep;
  s.edp = edp;
  return s;
}

const GridSizes kTp2 = Sizes(2, 1, 1, 1, 2);
const GridSizes kTp2Ep2 = Sizes(2, 1, 1, 2, 1);
const GridSizes kEtp2 = Sizes(2, 1, 2, 1, 1);
const GridSizes kEtp2Ep2 = Sizes(2, 2, 2, 2, 1);
const GridSizes kDp2Etp2 = Sizes(1, 2, 2, 1, 1);
const GridSizes kTp2Dp2Ep2 = Sizes(2, 2, 1, 2, 2);

TEST(MoeTpTest, Tp2) { ExpectMatchesSingleRank(UnifiedConfig(4), 2, kTp2); }
TEST(MoeTpTest, Tp2Ep2) { ExpectMatchesSingleRank(UnifiedConfig(4), 2, kTp2Ep2); }
TEST(MoeTpTest, Etp2) { ExpectMatchesSingleRank(UnifiedConfig(4), 2, kEtp2); }
TEST(MoeTpTest, Etp2Ep2) { ExpectMatchesSingleRank(UnifiedConfig(8, true), 4, kEtp2Ep2); }
TEST(MoeTpTest, Tp1Etp2OverDataParallelRanks) {
  ExpectMatchesSingleRank(UnifiedConfig(4), 2, kDp2Etp2);
}
TEST(MoeTpTest, Tp2Dp2Ep2) { ExpectMatchesSingleRank(UnifiedConfig(8), 4, kTp2Dp2Ep2); }

TEST(MoeTpTest, SharedPlainGammaOnEveryLayout) {
  const config::RunConfig cfg = SharedPlainConfig();
  ExpectMatchesSingleRank(cfg, 2, kTp2);
  ExpectMatchesSingleRank(cfg, 2, kTp2Ep2);
  ExpectMatchesSingleRank(cfg, 2, kEtp2);
  ExpectMatchesSingleRank(cfg, 4, kEtp2Ep2);
  ExpectMatchesSingleRank(cfg, 2, kDp2Etp2);
}

TEST(MoeTpTest, PerTokenScalesUnderEtp) {
  config::RunConfig cfg = UnifiedConfig(4, true);
  cfg.mutable_scale_vectors()->set_fold_into_weights(false);
  ExpectMatchesSingleRank(cfg, 4, kEtp2Ep2);
}

TEST(MoeTpTest, SigmoidScoresUnderTp) {
  config::RunConfig cfg = UnifiedConfig(4);
  cfg.mutable_moe()->set_score_function(config::MoEConfig::SIGMOID);
  ExpectMatchesSingleRank(cfg, 2, kEtp2);
}

// Routed-expert layouts: split on F over ETP, tp_group kExpert; the rest
// replicated with tp_partial_grad.
TEST(MoeTpTest, ParamLayouts) {
  const config::RunConfig cfg = UnifiedConfig(4);
  FakeWorld fake;
  std::map<std::string, ParamLayout> layouts;
  std::map<std::string, Shape> local_shapes;
  ASSERT_TRUE(fake.Run(2, kEtp2, [&](ProcessGroups& groups) {
    ParamRegistry registry(ShardCoords{groups.coords.tp, 2, groups.coords.etp, 2});
    MoeLayer layer(registry, cfg, 0, "m", "n", &groups);
    if (groups.coords.global == 0) {
      for (const auto& p : registry.params()) {
        layouts[p->spec.name] = p->spec.layout;
        local_shapes[p->spec.name] = p->local_shape;
      }
    }
    return absl::OkStatus();
  }).ok());
  auto expect = [&](const std::string& name, int split, TpGroup group, bool partial) {
    ASSERT_TRUE(layouts.count(name)) << name;
    EXPECT_EQ(layouts[name].tp_split_dim, split) << name;
    EXPECT_EQ(layouts[name].tp_group, group) << name;
    EXPECT_EQ(layouts[name].tp_partial_grad, partial) << name;
  };
  expect("m.router.weight", -1, TpGroup::kDense, true);
  expect("m.router.gamma.alpha", -1, TpGroup::kDense, true);
  expect("m.experts.1.w_gate", 0, TpGroup::kExpert, false);
  expect("m.experts.1.w_up", 0, TpGroup::kExpert, false);
  expect("m.experts.1.w_down", 1, TpGroup::kExpert, false);
  expect("m.experts.1.u_gate.alpha", 0, TpGroup::kExpert, false);
  expect("m.experts.1.u_gate.beta", -1, TpGroup::kExpert, true);
  expect("m.experts.1.u_down.alpha", -1, TpGroup::kExpert, true);
  expect("m.experts.1.gamma_gate.alpha", -1, TpGroup::kExpert, true);
  expect("m.shared_experts.0.w_up", -1, TpGroup::kDense, true);
  expect("m.shared_experts.0.u_down.beta", -1, TpGroup::kDense, true);
  expect("n.scale.alpha", -1, TpGroup::kDense, true);  // the shared experts' γ
  EXPECT_EQ(local_shapes["m.experts.1.w_gate"], (Shape{3, kHidden}));
  EXPECT_EQ(local_shapes["m.experts.1.w_down"], (Shape{kHidden, 3}));
  EXPECT_EQ(local_shapes["m.shared_experts.0.w_up"], (Shape{5, kHidden}));
}

TEST(MoeTpTest, ExpertFfnNotDivisibleByEtpIsAClearError) {
  config::RunConfig cfg = UnifiedConfig(4);
  cfg.mutable_moe()->set_expert_ffn_hidden_size(5);
  cfg.mutable_parallel()->set_etp(2);
  ConfigProblems problems;
  ValidateMoeConfig(cfg, problems);
  const Status status = problems.ToStatus("moe");
  EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  EXPECT_NE(status.ToString().find("is not divisible by parallel.etp=2"), std::string::npos)
      << status;
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // FakeWorld runs ranks on threads
  EXPECT_DEATH(
      {
        FakeWorld fake;
        (void)fake.Run(2, kEtp2, [&](ProcessGroups& groups) {
          ParamRegistry registry(ShardCoords{groups.coords.tp, 2, groups.coords.etp, 2});
          MoeLayer layer(registry, cfg, 0, "m", "n", &groups);
          return absl::OkStatus();
        });
      },
      "expert_ffn_hidden_size=5 does not split over parallel.etp=2");
}

}  // namespace
}  // namespace scalemoe
