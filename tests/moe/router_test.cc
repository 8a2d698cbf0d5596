// Router: forward/backward incl. aux and z losses (f64 central differences),
// top-k ties, capacity drops, sigmoid scores, expert bias, a forced
// selection (ForceSelection), and the token-sharded loss ops (tensor
// parallel) against the single-rank ones.
#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "core/ops.h"
#include "gmock/gmock.h"
#include "tests/moe/moe_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using testing::kHidden;
using testing::kTokens;

struct RouterRig {
  explicit RouterRig(const config::RunConfig& cfg) {
    // The router's γ: one vector "gamma" (the layer's shared norm scale).
    scales = std::make_unique<BranchScales>(registry, ScaleOptions(cfg.scale_vectors()), "gamma",
                                            ParamLayout{}, kHidden,
                                            std::vector<BranchSpec>{{"gamma", {}}}, false);
    router = std::make_unique<Router>(registry, cfg, 0, "layers.0.moe", scales.get(), 0);
    SM_CHECK_OK(registry.Materialize(99, DType::kF64, Device::kCPU));
    Param* gamma = registry.Find("gamma");
    for (int64_t i = 0; i < kHidden; ++i) gamma->value.data<double>()[i] += 0.1 * i;
    n = testing::RandomTensor({kTokens, kHidden}, 5);
    r = testing::RandomTensor({kTokens, cfg.moe().top_k()}, 6);
  }
  void Forward() {
    Must(scales->Forward(ctx, DType::kF64));
    Must(router->PrepareStep(ctx, DType::kF64));
    Must(router->Forward(ctx, n));
  }
  // Σ r ⊙ weights (kept slots only, like the combine) + aux + z.
  double Loss() {
    Forward();
    double s = 0;
    for (int64_t i = 0; i < r.numel(); ++i) {
      if (router->kept().data<int32_t>()[i]) s += r.At(i) * router->weights().At(i);
    }
    return s + router->aux_loss().At(0) + router->z_loss().At(0);
  }
  Tensor Gradients() {
    registry.ZeroGrads();
    Forward();
    Tensor d_w = r.Clone();
    for (int64_t i = 0; i < r.numel(); ++i) {
      if (!router->kept().data<int32_t>()[i]) d_w.data<double>()[i] = 0;
    }
    Tensor d_n = Tensor::Empty(n.shape(), DType::kF64);
    router->Backward(ctx, d_w, 1.0, d_n);
    Must(router->FinishBackward(ctx));
    Must(scales->Backward(ctx));
    return d_n;
  }
  void CheckGradients() {
    const Tensor d_n = Gradients();
    auto loss = [&] { return Loss(); };
    EXPECT_LE(testing::GradError(loss, n, d_n), testing::kGradTolerance) << "d_n";
    testing::ExpectParamGradsMatch(registry, loss);
  }

  ExecContext ctx = ExecContext::Cpu();
  ParamRegistry registry;
  std::unique_ptr<BranchScales> scales;
  std::unique_ptr<Router> router;
  Tensor n, r;
};

TEST(RouterTest, SoftmaxGradientsWithAuxAndZLoss) {
  for (bool fold : {true, false}) {
    config::RunConfig cfg = testing::TinyConfig();
    cfg.mutable_scale_vectors()->set_fold_into_weights(fold);
    RouterRig rig(cfg);
    rig.CheckGradients();
  }
}

TEST(RouterTest, SigmoidGradients) {
  for (bool normalize : {true, false}) {
    config::RunConfig cfg = testing::TinyConfig();
    cfg.mutable_moe()->set_score_function(config::MoEConfig::SIGMOID);
    cfg.mutable_moe()->set_normalize_topk(normalize);
    RouterRig rig(cfg);
    rig.Forward();
    // Sigmoid scores are independent per expert; normalised weights sum to 1.
    const Tensor& s = rig.router->scores();
    EXPECT_NEAR(s.At(0), 1.0 / (1.0 + std::exp(-rig.router->logits().At(0))), 1e-15);
    if (normalize) {
      EXPECT_NEAR(rig.router->weights().At(0) + rig.router->weights().At(1), 1, 1e-15);
    }
    rig.CheckGradients();
  }
}

TEST(RouterTest, LossesMatchTheirDefinitions) {
  config::RunConfig cfg = testing::TinyConfig();
  RouterRig rig(cfg);
  rig.Forward();
  const Tensor& x = rig.router->logits();
  const Tensor& s = rig.router->scores();
  const Tensor& ids = rig.router->expert_ids();
  double z = 0, aux = 0;
  std::vector<double> f(4, 0), p(4, 0);
  for (int64_t t = 0; t < kTokens; ++t) {
    double sum = 0;
    for (int e = 0; e < 4; ++e) sum += std::exp(x.At(t * 4 + e));
    z += std::log(sum) * std::log(sum);
    for (int e = 0; e < 4; ++e) p[e] += s.At(t * 4 + e) / kTokens;
    for (int j = 0; j < 2; ++j) f[ids.data<int32_t>()[t * 2 + j]] += 1.0 / (kTokens * 2);
  }
  for (int e = 0; e < 4; ++e) aux += f[e] * p[e];
  EXPECT_NEAR(rig.router->z_loss().At(0), 0.05 * z / kTokens, 1e-14);
  EXPECT_NEAR(rig.router->aux_loss().At(0), 0.1 * 4 * aux, 1e-14);
}

TEST(RouterTest, TopKTiesGoToTheLowerExpert) {
  const ExecContext ctx = ExecContext::Cpu();
  const Tensor scores =
      Tensor::FromVector({2, 4}, {0.25, 0.25, 0.25, 0.25, 0.1, 0.4, 0.1, 0.4}, DType::kF64);
  Tensor ids = Tensor::Empty({2, 2}, DType::kI32);
  Tensor w = Tensor::Empty({2, 2}, DType::kF64);
  ops::TopKRouting(ctx, scores, Tensor(), 2, true, ids, w);
  EXPECT_EQ(ids.data<int32_t>()[0], 0);
  EXPECT_EQ(ids.data<int32_t>()[1], 1);
  EXPECT_EQ(ids.data<int32_t>()[2], 1);
  EXPECT_EQ(ids.data<int32_t>()[3], 3);
  EXPECT_DOUBLE_EQ(w.At(0), 0.5);
  // A bias breaks the tie but the weights stay the unbiased scores.
  const Tensor bias = Tensor::FromVector({4}, {0, 0, 0.01, 0.02}, DType::kF64);
  ops::TopKRouting(ctx, scores, bias, 2, false, ids, w);
  EXPECT_EQ(ids.data<int32_t>()[0], 3);
  EXPECT_EQ(ids.data<int32_t>()[1], 2);
  EXPECT_DOUBLE_EQ(w.At(0), 0.25);
}

TEST(RouterTest, CapacityDropsLowestScoresAndKeepsEarlierTokensOnTies) {
  const ExecContext ctx = ExecContext::Cpu();
  // 4 tokens, k=1, all on expert 0; capacity 2.
  const Tensor ids = Tensor::FromVector({4, 1}, {0, 0, 0, 1}, DType::kI32);
  const Tensor prio = Tensor::FromVector({4, 1}, {0.3, 0.5, 0.3, 0.1}, DType::kF64);
  Tensor kept = Tensor::Empty({4, 1}, DType::kI32);
  ops::CapacityDrop(ctx, ids, prio, 2, 2, kept);
  EXPECT_EQ(kept.ToVector(), (std::vector<double>{1, 1, 0, 1}));
  ops::CapacityDrop(ctx, ids, prio, 2, 0, kept);  // dropless
  EXPECT_EQ(kept.ToVector(), (std::vector<double>{1, 1, 1, 1}));
}

TEST(RouterTest, CapacityOverflowInTheRouter) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_capacity_factor(0.5);
  cfg.mutable_moe()->set_expert_bias(true);
  RouterRig rig(cfg);
  // Send every token's first choice to expert 0: 10 assignments, capacity 3.
  rig.registry.Find("layers.0.moe.router.expert_bias")->value.data<double>()[0] = 100;
  rig.Forward();
  EXPECT_EQ(rig.router->capacity(), 3);  // ceil(0.5 * 10 * 2 / 4)
  const Tensor& s = rig.router->scores();
  const int32_t* ids = rig.router->expert_ids().data<int32_t>();
  const int32_t* kept = rig.router->kept().data<int32_t>();
  std::vector<std::pair<double, int>> on_zero;  // (score, token) of expert-0 assignments
  for (int t = 0; t < kTokens; ++t) {
    ASSERT_EQ(ids[t * 2], 0);
    on_zero.push_back({s.At(t * 4), t});
  }
  std::stable_sort(on_zero.begin(), on_zero.end(),
                   [](auto a, auto b) { return a.first > b.first; });
  for (int i = 0; i < kTokens; ++i) {
    EXPECT_EQ(kept[on_zero[i].second * 2], i < 3 ? 1 : 0) << "token " << on_zero[i].second;
  }
  rig.CheckGradients();
}

TEST(RouterTest, ExpertBiasChangesSelectionNotWeights) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_expert_bias(true);
  RouterRig rig(cfg);
  rig.Forward();
  const std::vector<double> ids_before = rig.router->expert_ids().ToVector();
  Param* bias = rig.registry.Find("layers.0.moe.router.expert_bias");
  EXPECT_FALSE(IsTrainable(bias->spec.role));
  bias->value.data<double>()[3] = -100;  // expert 3 never selected
  rig.Forward();
  const std::vector<double> ids_after = rig.router->expert_ids().ToVector();
  EXPECT_NE(ids_before, ids_after);
  const Tensor& s = rig.router->scores();
  for (int t = 0; t < kTokens; ++t) {
    const int a = static_cast<int>(ids_after[t * 2]), b = static_cast<int>(ids_after[t * 2 + 1]);
    EXPECT_NE(a, 3);
    EXPECT_NE(b, 3);
    EXPECT_NEAR(rig.router->weights().At(t * 2), s.At(t * 4 + a) / (s.At(t * 4 + a) + s.At(t * 4 + b)),
                1e-15);
  }
  rig.CheckGradients();
  EXPECT_EQ(bias->grad.At(3), 0.0);  // the bias gets no gradient
}

// Forcing the router's own pick changes nothing (the same bits); forcing
// other ids routes to them, with the weights gathered from this Forward's
// scores and renormalised, and gradients that check against differences
// of the loss with the selection held.
TEST(RouterTest, ForcedSelectionReplaysItsOwnPickBitForBit) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_capacity_factor(0.75);  // some assignments drop
  RouterRig rig(cfg);
  rig.Forward();
  const Tensor own_ids = rig.router->expert_ids().Clone();
  const std::vector<double> weights = rig.router->weights().ToVector();
  const std::vector<double> kept = rig.router->kept().ToVector();
  ASSERT_GT(std::count(kept.begin(), kept.end(), 0.0), 0);  // capacity 4 dropped some
  const std::vector<double> losses = rig.router->losses().ToVector();
  const std::vector<double> d_n = rig.Gradients().ToVector();
  const std::vector<double> d_w = rig.registry.Find("layers.0.moe.router.weight")->grad.ToVector();
  Must(rig.router->ForceSelection(rig.ctx, own_ids));
  rig.Forward();
  EXPECT_EQ(rig.router->expert_ids().ToVector(), own_ids.ToVector());
  EXPECT_EQ(rig.router->weights().ToVector(), weights);
  EXPECT_EQ(rig.router->kept().ToVector(), kept);
  EXPECT_EQ(rig.router->losses().ToVector(), losses);
  EXPECT_EQ(rig.Gradients().ToVector(), d_n);
  EXPECT_EQ(rig.registry.Find("layers.0.moe.router.weight")->grad.ToVector(), d_w);
}

TEST(RouterTest, ForcedSelectionRoutesToTheGivenExperts) {
  for (bool normalize : {true, false}) {
    config::RunConfig cfg = testing::TinyConfig();
    cfg.mutable_moe()->set_normalize_topk(normalize);
    cfg.mutable_moe()->set_expert_bias(true);  // ignored while forced
    RouterRig rig(cfg);
    std::vector<double> forced(kTokens * 2);
    for (int64_t t = 0; t < kTokens; ++t) {  // experts 3 and 2 (t even) or 1 (t odd)
      forced[t * 2] = 3;
      forced[t * 2 + 1] = t % 2 == 0 ? 2 : 1;
    }
    const Tensor ids = Tensor::FromVector({kTokens, 2}, forced, DType::kI32);
    Must(rig.router->ForceSelection(rig.ctx, ids));
    rig.Forward();
    EXPECT_EQ(rig.router->expert_ids().ToVector(), forced);
    const Tensor& s = rig.router->scores();
    for (int64_t t = 0; t < kTokens; ++t) {
      const double a = s.At(t * 4 + 3), b = s.At(t * 4 + static_cast<int>(forced[t * 2 + 1]));
      const double sum = normalize ? a + b : 1.0;
      EXPECT_DOUBLE_EQ(rig.router->weights().At(t * 2), a / sum);
      EXPECT_DOUBLE_EQ(rig.router->weights().At(t * 2 + 1), b / sum);
    }
    // f_e of the aux loss counts the forced assignments: 1/2 on expert 3.
    rig.CheckGradients();
    Must(rig.router->ForceSelection(rig.ctx, Tensor()));  // cleared: its own pick again
    rig.Forward();
    EXPECT_NE(rig.router->expert_ids().ToVector(), forced);
  }
}

TEST(RouterTest, ForcedSelectionRejectsIdsItCannotUse) {
  RouterRig rig(testing::TinyConfig());
  auto expect_error = [](const Status& status, const char* what) {
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(what));
  };
  auto force = [&](const Shape& shape, const std::vector<double>& v) {
    return rig.router->ForceSelection(rig.ctx, Tensor::FromVector(shape, v, DType::kI32));
  };
  expect_error(force({1, 3}, {0, 1, 2}), "i32 [N, 2] (moe.top_k)");
  expect_error(force({1, 2}, {0, 4}), "token 0 slot 1 has expert 4");
  expect_error(force({2, 2}, {0, 1, 2, 2}), "token 1 slot 1 has expert 2");
  expect_error(rig.router->ForceSelection(rig.ctx, Tensor::FromVector({1, 2}, {0, 1}, DType::kI64)),
               "contiguous i32");
  Must(force({3, 2}, {0, 1, 0, 1, 0, 1}));  // 3 rows for a Forward of 10
  Must(rig.scales->Forward(rig.ctx, DType::kF64));
  Must(rig.router->PrepareStep(rig.ctx, DType::kF64));
  expect_error(rig.router->Forward(rig.ctx, rig.n), "has 3 rows for 10 tokens");
}

TEST(RouterTest, ExpertBiasUpdateFollowsLoad) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_expert_bias(true);
  cfg.mutable_moe()->set_expert_bias_update_rate(0.5);
  RouterRig rig(cfg);
  rig.router->UpdateExpertBias(rig.ctx, Tensor::FromVector({4}, {8, 2, 5, 5}, DType::kI64));
  EXPECT_EQ(rig.registry.Find("layers.0.moe.router.expert_bias")->value.ToVector(),
            (std::vector<double>{-0.5, 0.5, 0, 0}));
}

TEST(RouterTest, ShardedLossSharesSumToTheSingleRankLosses) {
  // 10 rows split 4 + 6 over two "ranks": shares and their gradients summed
  // (gradients concatenated by rows) equal the single-rank ops.
  const ExecContext ctx = ExecContext::Cpu();
  const int64_t e = 4, k = 2, rows[2] = {4, 6};
  const Tensor logits = testing::RandomTensor({kTokens, e}, 11);
  Tensor scores = Tensor::Empty(logits.shape(), DType::kF64);
  ops::RouterScores(ctx, ops::ScoreFunction::kSoftmax, logits, scores);
  Tensor ids = Tensor::Empty({kTokens, k}, DType::kI32);
  Tensor weights = Tensor::Empty({kTokens, k}, DType::kF64);
  ops::TopKRouting(ctx, scores, Tensor(), static_cast<int>(k), true, ids, weights);
  const double aux_coeff = 0.1, z_coeff = 0.05, scale = 0.5;
  Tensor aux = Tensor::Empty({1}, DType::kF64), z = Tensor::Empty({1}, DType::kF64);
  ops::LoadBalancingLoss(ctx, scores, ids, aux_coeff, aux);
  ops::ZLoss(ctx, logits, z_coeff, z);
  Tensor d_scores = Tensor::Zeros(scores.shape(), DType::kF64);
  Tensor d_logits = Tensor::Zeros(logits.shape(), DType::kF64);
  ops::LoadBalancingLossBackward(ctx, ids, aux_coeff, scale, d_scores);
  ops::ZLossBackward(ctx, logits, z_coeff, scale, d_logits);

  // The group's fractions: counts of each shard, summed, over N·K.
  Tensor fractions = Tensor::Zeros({e}, DType::kF64);
  for (int r = 0, start = 0; r < 2; start += rows[r], ++r) {
    Tensor counts = Tensor::Empty({e}, DType::kF64);
    ops::AssignmentCounts(ctx, ids.Narrow(0, start, rows[r]).Clone(), counts);
    ops::Axpy(ctx, 1.0, counts, fractions);
  }
  ops::Scale(ctx, 1.0 / static_cast<double>(kTokens * k), fractions);
  double aux_sum = 0, z_sum = 0;
  for (int r = 0, start = 0; r < 2; start += rows[r], ++r) {
    const Tensor s = scores.Narrow(0, start, rows[r]).Clone();
    const Tensor l = logits.Narrow(0, start, rows[r]).Clone();
    Tensor share = Tensor::Empty({1}, DType::kF64);
    ops::LoadBalancingLossShare(ctx, s, fractions, kTokens, aux_coeff, share);
    aux_sum += share.At(0);
    ops::ZLossShare(ctx, l, kTokens, z_coeff, share);
    z_sum += share.At(0);
    Tensor ds = Tensor::Zeros(s.shape(), DType::kF64);
    Tensor dl = Tensor::Zeros(l.shape(), DType::kF64);
    ops::LoadBalancingLossShareBackward(ctx, fractions, kTokens, aux_coeff, scale, ds);
    ops::ZLossShareBackward(ctx, l, kTokens, z_coeff, scale, dl);
    for (int64_t i = 0; i < ds.numel(); ++i) {
      EXPECT_NEAR(ds.At(i), d_scores.At(start * e + i), 1e-15);
      EXPECT_NEAR(dl.At(i), d_logits.At(start * e + i), 1e-15);
    }
  }
  EXPECT_NEAR(aux_sum, aux.At(0), 1e-14);
  EXPECT_NEAR(z_sum, z.At(0), 1e-14);

  // One shard holding every row is the single-rank op.
  Tensor whole = Tensor::Empty({1}, DType::kF64);
  Tensor counts = Tensor::Empty({e}, DType::kF64);
  ops::AssignmentCounts(ctx, ids, counts);
  ops::Scale(ctx, 1.0 / static_cast<double>(kTokens * k), counts);
  ops::LoadBalancingLossShare(ctx, scores, counts, kTokens, aux_coeff, whole);
  EXPECT_DOUBLE_EQ(whole.At(0), aux.At(0));  // fractions as c·(1/NK), not c/NK
  ops::ZLossShare(ctx, logits, kTokens, z_coeff, whole);
  EXPECT_EQ(whole.At(0), z.At(0));
}

}  // namespace
}  // namespace scalemoe
