// Expert parallelism: MoeLayer over FakeWorld EP groups equals the
// single-rank layer. EP changes where experts run, not the math:
// - rank r's outputs, d_n and aux/z losses equal the single-rank layer's on
//   rank r's tokens;
// - an owned expert's parameter gradient equals the SUM over the EP ranks'
//   tokens of the single-rank gradient (its rows come from every rank; with
//   dp ranks = EP ranks this is the single-rank gradient of the union of the
//   tokens, which the later EDP reduction then treats like any expert grad);
// - a replicated parameter's gradient summed over the ranks (what the DP
//   reduction does) equals the same single-rank sum;
// - step stats are global (all-reduced) and identical on every rank;
// - a Forward reads the host once (its counts), a Backward never.
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "moe/moe_layer.h"
#include "moe/token_dispatcher.h"
#include "parallel/fake_communicator.h"
#include "tests/moe/moe_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using config::ScaleVectorConfig;
using testing::kHidden;
using testing::kTokens;
using Grads = std::map<std::string, std::vector<double>>;

constexpr uint64_t kSeed = 1234;

// What one rank (or one single-rank run) produced for one micro-batch.
struct RankResult {
  Tensor out, d_n;
  double aux = 0, z = 0;
  Grads grads;  // trainable parameters by global name
  MoeLayerStats stats;  // of the step (one micro-batch), reduced over the replicas
  std::vector<std::string> names;  // every registered parameter
  int64_t forward_reads = 0, backward_reads = 0;  // ctx.ToHost calls
};

// Moves every scale vector off its init by a function of its global name
// (moe_test_util's version counts in registration order, which differs when
// a rank holds only some experts).
void PerturbByName(ParamRegistry& registry) {
  for (const auto& p : registry.params()) {
    if (!IsScaleVector(p->spec.role)) continue;
    const uint64_t stream = std::hash<std::string>()(p->spec.name);
    double* v = p->value.data<double>();
    for (int64_t i = 0; i < p->value.numel(); ++i) v[i] += 0.2 * PhiloxNormal(7, stream, i);
  }
}

Tensor Tokens(int rank) { return testing::RandomTensor({kTokens, kHidden}, 100 + rank); }
Tensor OutGrad(int rank) { return testing::RandomTensor({kTokens, kHidden}, 200 + rank); }

// Builds a layer (EP when groups has an ep group of size > 1), runs one
// forward/backward on rank `rank`'s tokens, and records everything.
RankResult RunLayer(const config::RunConfig& cfg, const ProcessGroups* groups, int rank,
                    const std::vector<std::pair<int, double>>& bias = {}) {
  const ExecContext ctx = ExecContext::Cpu();
  ParamRegistry registry;
  MoeLayer layer(registry, cfg, 0, "layers.0.moe", "layers.0.ffn_norm", groups);
  SM_CHECK_OK(registry.Materialize(kSeed, DType::kF64, Device::kCPU));
  PerturbByName(registry);
  for (const auto& [e, b] : bias) {
    registry.Find("layers.0.moe.router.expert_bias")->value.data<double>()[e] = b;
  }
  registry.ZeroGrads();
  Must(layer.PrepareStep(ctx, DType::kF64));
  const Tensor n = Tokens(rank);
  RankResult r;
  r.out = Tensor::Empty(n.shape(), DType::kF64);
  r.d_n = Tensor::Empty(n.shape(), DType::kF64);
  const int64_t reads = ctx.counters().host_reads;
  Must(layer.Forward(ctx, n, r.out));
  r.forward_reads = ctx.counters().host_reads - reads;
  Must(layer.Backward(ctx, OutGrad(rank), r.d_n, 1.0));
  Must(layer.FinishBackward(ctx));
  r.backward_reads = ctx.counters().host_reads - reads - r.forward_reads;
  r.aux = layer.aux_loss().At(0);
  r.z = layer.z_loss().At(0);
  r.stats = Must(layer.step_stats(ctx));
  for (const auto& p : registry.params()) {
    r.names.push_back(p->spec.name);
    if (IsTrainable(p->spec.role)) r.grads[p->spec.name] = p->grad.ToVector();
  }
  return r;
}

double MaxRelDiff(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0, norm = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    norm = std::max({norm, std::abs(a[i]), std::abs(b[i])});
  }
  return diff / norm;
}

void Accumulate(const Grads& from, Grads& into) {
  for (const auto& [name, g] : from) {
    auto& sum = into[name];
    sum.resize(g.size(), 0.0);
    for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i];
  }
}

std::vector<RankResult> RunEp(const config::RunConfig& cfg, int ep,
                              const std::vector<std::pair<int, double>>& bias = {}) {
  std::vector<RankResult> results(ep);
  FakeWorld world;
  GridSizes sizes;
  sizes.dp = ep;
  sizes.ep = ep;
  const Status status = world.Run(ep, sizes, [&](ProcessGroups& groups) {
    results[groups.coords.global] = RunLayer(cfg, &groups, groups.coords.global, bias);
    return absl::OkStatus();
  });
  EXPECT_TRUE(status.ok()) << status;
  return results;
}

// The whole equivalence check for one (config, EP, routing) case.
void ExpectEpMatchesSingleRank(const config::RunConfig& cfg, int ep,
                               const std::vector<std::pair<int, double>>& bias = {}) {
  const int num_experts = cfg.moe().num_experts();
  std::vector<RankResult> single(ep);
  Grads single_sum;
  std::vector<int64_t> single_loads(num_experts, 0);
  for (int r = 0; r < ep; ++r) {
    single[r] = RunLayer(cfg, nullptr, r, bias);
    Accumulate(single[r].grads, single_sum);
    for (int e = 0; e < num_experts; ++e) single_loads[e] += single[r].stats.tokens_per_expert[e];
  }
  const std::vector<RankResult> multi = RunEp(cfg, ep, bias);
  ASSERT_EQ(static_cast<int>(multi.size()), ep);
  Grads replicated_sum;
  for (int r = 0; r < ep; ++r) {
    SCOPED_TRACE(absl::StrCat("ep=", ep, " rank=", r));
    const RankResult& m = multi[r];
    ASSERT_TRUE(m.out.defined());
    EXPECT_LE(MaxRelDiff(m.out.ToVector(), single[r].out.ToVector()), 1e-13);
    EXPECT_LE(MaxRelDiff(m.d_n.ToVector(), single[r].d_n.ToVector()), 1e-13);
    EXPECT_EQ(m.aux, single[r].aux);
    EXPECT_EQ(m.z, single[r].z);
    EXPECT_EQ(m.stats.tokens_per_expert, single_loads);  // global and equal on every rank
    EXPECT_EQ(m.forward_reads, 1);   // the layer's counts, once
    EXPECT_EQ(m.backward_reads, 0);

    // Only the owned experts are registered, under their global names.
    const ExpertRange owned = OwnedExperts(num_experts, ep, r);
    for (int e = 0; e < num_experts; ++e) {
      const std::string w = absl::StrCat("layers.0.moe.experts.", e, ".w_up");
      const bool present = m.grads.count(w) > 0;
      EXPECT_EQ(present, e >= owned.begin && e < owned.end) << w;
    }
    Grads replicated;
    for (const auto& [name, g] : m.grads) {
      ASSERT_TRUE(single_sum.count(name)) << name;
      if (name.find(".moe.experts.") != std::string::npos) {
        EXPECT_LE(MaxRelDiff(g, single_sum.at(name)), 1e-12) << name;
      } else {
        replicated[name] = g;
      }
    }
    Accumulate(replicated, replicated_sum);
  }
  for (const auto& [name, g] : replicated_sum) {
    EXPECT_LE(MaxRelDiff(g, single_sum.at(name)), 1e-12) << "replicated " << name;
  }
}

config::RunConfig UnifiedConfig(int num_experts) {
  return testing::DualExpertsConfig(num_experts, ScaleVectorConfig::MAGNITUDE_DIRECTION);
}

// SHARED mode: one γ feeds the router and every expert, so this replicated
// parameter also collects the owned experts' share of every rank's rows.
config::RunConfig SharedGammaConfig() {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_expert_bias(true);
  return cfg;
}

TEST(EpTest, Ep2MatchesSingleRank) { ExpectEpMatchesSingleRank(UnifiedConfig(4), 2); }
TEST(EpTest, Ep4MatchesSingleRank) { ExpectEpMatchesSingleRank(UnifiedConfig(4), 4); }
TEST(EpTest, Ep4UnevenOwnershipMatchesSingleRank) {
  // E=6 over 4 ranks: ranks own 1, 2, 1, 2 experts.
  ExpectEpMatchesSingleRank(UnifiedConfig(6), 4);
}
TEST(EpTest, SharedGammaSumsOverRanks) { ExpectEpMatchesSingleRank(SharedGammaConfig(), 2); }

TEST(EpTest, NoRemoteRowsAndIdleRankAndIdleExperts) {
  // Every token picks experts 0 and 1 (rank 0's): rank 0 sends nothing
  // remote, rank 1 receives nothing, experts 2 and 3 get no token at all.
  ExpectEpMatchesSingleRank(UnifiedConfig(4), 2, {{0, 100}, {1, 100}});
  const std::vector<RankResult> m = RunEp(UnifiedConfig(4), 2, {{0, 100}, {1, 100}});
  EXPECT_EQ(m[1].stats.tokens_per_expert, (std::vector<int64_t>{20, 20, 0, 0}));
  for (const auto& [name, g] : m[1].grads) {
    if (name.find(".experts.2.w_") == std::string::npos) continue;
    for (double v : g) EXPECT_EQ(v, 0.0) << name;
  }
}

TEST(EpTest, OneIdleExpertOnEp4) {
  ExpectEpMatchesSingleRank(UnifiedConfig(4), 4, {{3, -100}});
}

TEST(EpTest, CapacityIsComputedFromLocalTokens) {
  // capacity ceil(0.5*10*2/4) = 3 per expert per source rank.
  config::RunConfig cfg = UnifiedConfig(4);
  cfg.mutable_moe()->set_capacity_factor(0.5);
  ExpectEpMatchesSingleRank(cfg, 2, {{1, 100}});
  const std::vector<RankResult> m = RunEp(cfg, 2, {{1, 100}});
  EXPECT_EQ(m[0].stats.tokens_per_expert[1], 6);  // 3 from each rank
  EXPECT_EQ(m[0].stats.dropped_tokens, m[1].stats.dropped_tokens);
  EXPECT_GE(m[0].stats.dropped_tokens, 2 * (kTokens - 3));
}

TEST(EpTest, Deterministic) {
  const std::vector<RankResult> a = RunEp(UnifiedConfig(4), 4);
  const std::vector<RankResult> b = RunEp(UnifiedConfig(4), 4);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(std::memcmp(a[r].out.raw_data(), b[r].out.raw_data(), a[r].out.nbytes()), 0);
    EXPECT_EQ(std::memcmp(a[r].d_n.raw_data(), b[r].d_n.raw_data(), a[r].d_n.nbytes()), 0);
    EXPECT_EQ(a[r].grads, b[r].grads);  // exact equality of every double
  }
}

TEST(EpTest, WorldOfOneEqualsNullGroupsBitForBit) {
  const config::RunConfig cfg = UnifiedConfig(4);
  const RankResult reference = RunLayer(cfg, nullptr, 0);
  RankResult one;
  FakeWorld world;
  ASSERT_TRUE(world.Run(1, GridSizes{}, [&](ProcessGroups& groups) {
    one = RunLayer(cfg, &groups, 0);
    return absl::OkStatus();
  }).ok());
  EXPECT_EQ(one.names, reference.names);
  EXPECT_EQ(std::memcmp(one.out.raw_data(), reference.out.raw_data(), one.out.nbytes()), 0);
  EXPECT_EQ(std::memcmp(one.d_n.raw_data(), reference.d_n.raw_data(), one.d_n.nbytes()), 0);
  EXPECT_EQ(one.grads, reference.grads);
  EXPECT_EQ(one.stats.tokens_per_expert, reference.stats.tokens_per_expert);
}

TEST(EpTest, OwnershipRanges) {
  EXPECT_EQ(OwnedExperts(8, 4, 0).begin, 0);
  EXPECT_EQ(OwnedExperts(8, 4, 3).begin, 6);
  EXPECT_EQ(OwnedExperts(8, 4, 3).end, 8);
  int covered = 0;
  for (int r = 0; r < 4; ++r) {
    const ExpertRange range = OwnedExperts(6, 4, r);
    EXPECT_EQ(range.begin, covered);
    EXPECT_GE(range.size(), 1);
    covered = range.end;
  }
  EXPECT_EQ(covered, 6);
}

TEST(EpTest, ModelCountsAreGlobalUnderEp) {
  config::RunConfig cfg = UnifiedConfig(4);
  config::ModelConfig& m = *cfg.mutable_model();
  m.set_num_heads(2);
  m.set_num_kv_heads(1);
  m.set_ffn_hidden_size(12);
  m.set_vocab_size(16);
  m.set_seq_length(5);
  ParamRegistry single_registry;
  const ModelCounts single = MoeTransformer(single_registry, cfg).Counts();
  std::vector<ModelCounts> counts(2);
  std::vector<int64_t> local(2);
  FakeWorld world;
  GridSizes sizes;
  sizes.dp = 2;
  sizes.ep = 2;
  ASSERT_TRUE(world.Run(2, sizes, [&](ProcessGroups& groups) {
    ParamRegistry registry;
    MoeTransformer model(registry, cfg, &groups);
    counts[groups.coords.global] = model.Counts();
    local[groups.coords.global] = static_cast<int64_t>(registry.params().size());
    return absl::OkStatus();
  }).ok());
  for (int r = 0; r < 2; ++r) {
    EXPECT_LT(local[r], static_cast<int64_t>(single_registry.params().size()));
    EXPECT_EQ(counts[r].total_params, single.total_params);
    EXPECT_EQ(counts[r].active_params_per_token, single.active_params_per_token);
    EXPECT_EQ(counts[r].scale_vector_params, single.scale_vector_params);
    EXPECT_EQ(counts[r].train_flops_per_token, single.train_flops_per_token);
  }
}

}  // namespace
}  // namespace scalemoe
