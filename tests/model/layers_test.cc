// Layer-level f64 gradient checks and path equivalence: ScaledLinear (fold vs
// per token), Attention (GQA + RoPE, with/without QK-norm, DNP), Mlp.
#include <memory>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "model/attention.h"
#include "model/mlp.h"
#include "norm/scaled_linear.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

const TpRegion kOneRank(nullptr, /*sequence_parallel=*/false);


using testing::kGradTolerance;
using testing::RandomTensor;
using testing::WeightedSum;

// Runs PrepareStep + Forward + Backward + FinishBackward and checks every
// parameter and the input gradient against central differences.
template <typename Layer, typename Fwd, typename Bwd>
void CheckLayer(ParamRegistry& registry, Layer& layer, Fwd forward, Bwd backward,
                const Tensor& n, const Shape& out_shape) {
  const ExecContext ctx;
  Tensor w = RandomTensor(out_shape, 99);
  auto loss = [&] {
    Must(layer.PrepareStep(ctx, DType::kF64));
    Tensor out = Tensor::Empty(out_shape, DType::kF64);
    forward(layer, n, out);
    return WeightedSum(out, w);
  };
  registry.ZeroGrads();
  loss();
  Tensor d_n = Tensor::Empty(n.shape(), DType::kF64);
  backward(layer, w, d_n);
  Must(layer.FinishBackward(ctx));
  testing::ExpectAllParamGrads(registry, loss, 24);
  EXPECT_LT(testing::GradError(loss, n, d_n), kGradTolerance);
}

config::RunConfig AttentionConfig() {
  config::RunConfig cfg = testing::TinyConfig(0);
  cfg.mutable_model()->set_num_heads(4);
  cfg.mutable_model()->set_num_kv_heads(2);
  cfg.mutable_model()->set_rope_theta(100.0);
  return cfg;
}

void CheckAttention(const config::RunConfig& cfg) {
  ParamRegistry registry;
  Attention attention(registry, cfg, 0, kOneRank);
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  testing::PerturbScaleVectors(registry, 5);
  const ExecContext ctx;
  const int64_t b = 2, t = 5, c = cfg.model().hidden_size();
  Tensor n = RandomTensor({b * t, c}, 3);
  CheckLayer(
      registry, attention,
      [&](Attention& a, const Tensor& x, const Tensor& out) { Must(a.Forward(ctx, x, b, t, out)); },
      [&](Attention& a, const Tensor& d_out, const Tensor& d_n) { Must(a.Backward(ctx, d_out, d_n)); },
      n, {b * t, c});
}

TEST(AttentionTest, GradientsWithGqaAndRope) { CheckAttention(AttentionConfig()); }

TEST(AttentionTest, GradientsWithQkNorm) {
  config::RunConfig cfg = AttentionConfig();
  cfg.mutable_model()->set_qk_norm(true);
  CheckAttention(cfg);
}

TEST(AttentionTest, GradientsPerBranchDualAllProjectionsPerToken) {
  config::RunConfig cfg = AttentionConfig();
  auto* sv = cfg.mutable_scale_vectors();
  sv->set_mode(config::ScaleVectorConfig::PER_BRANCH);
  sv->set_placement(config::ScaleVectorConfig::DUAL);
  for (auto p : {config::ScaleVectorConfig::Q, config::ScaleVectorConfig::K,
                 config::ScaleVectorConfig::V, config::ScaleVectorConfig::O}) {
    sv->add_dual_projections(p);
  }
  sv->set_fold_into_weights(false);
  CheckAttention(cfg);
}

TEST(AttentionTest, GradientsDnpWithNormalizedV) {
  config::RunConfig cfg = AttentionConfig();
  auto* sv = cfg.mutable_scale_vectors();
  sv->set_placement(config::ScaleVectorConfig::DUAL_NORMALIZED);
  sv->set_dnp_normalize_v(true);
  sv->set_reparam(config::ScaleVectorConfig::MAGNITUDE_DIRECTION);
  cfg.mutable_model()->set_qk_norm(true);  // DNP's norm replaces it: one norm each
  ParamRegistry probe;
  Attention names(probe, cfg, 0, kOneRank);
  EXPECT_EQ(probe.Find("layers.0.attn.q_norm.scale.alpha"), nullptr);
  EXPECT_NE(probe.Find("layers.0.attn.dnp_q.scale.alpha"), nullptr);
  EXPECT_NE(probe.Find("layers.0.attn.dnp_v.scale.beta"), nullptr);
  EXPECT_EQ(probe.Find("layers.0.attn.u_q.alpha"), nullptr);
  CheckAttention(cfg);
}

void CheckMlp(const config::RunConfig& cfg) {
  ParamRegistry registry;
  Mlp mlp(registry, cfg, 1, kOneRank);
  ASSERT_TRUE(registry.Materialize(2, DType::kF64, Device::kCPU).ok());
  testing::PerturbScaleVectors(registry, 6);
  const ExecContext ctx;
  const int64_t c = cfg.model().hidden_size();
  Tensor n = RandomTensor({7, c}, 4);
  CheckLayer(
      registry, mlp, [&](Mlp& m, const Tensor& x, const Tensor& out) { Must(m.Forward(ctx, x, out)); },
      [&](Mlp& m, const Tensor& d_out, const Tensor& d_n) { Must(m.Backward(ctx, d_out, d_n)); }, n,
      {7, c});
}

TEST(MlpTest, GradientsShared) { CheckMlp(testing::TinyConfig(0)); }

TEST(MlpTest, GradientsPerBranchDualFoldAndPerToken) {
  for (bool fold : {true, false}) {
    config::RunConfig cfg = testing::TinyConfig(0);
    auto* sv = cfg.mutable_scale_vectors();
    sv->set_mode(config::ScaleVectorConfig::PER_BRANCH);
    sv->set_placement(config::ScaleVectorConfig::DUAL);
    for (auto p : {config::ScaleVectorConfig::GATE, config::ScaleVectorConfig::UP,
                   config::ScaleVectorConfig::DOWN}) {
      sv->add_dual_projections(p);
    }
    sv->set_fold_into_weights(fold);
    SCOPED_TRACE(fold ? "fold" : "per token");
    CheckMlp(cfg);
  }
}

TEST(MlpTest, ModeNoneRegistersOnlyWeights) {
  config::RunConfig cfg = testing::TinyConfig(0);
  cfg.mutable_scale_vectors()->set_mode(config::ScaleVectorConfig::NONE);
  cfg.mutable_scale_vectors()->set_placement(config::ScaleVectorConfig::DUAL);
  ParamRegistry registry;
  Mlp mlp(registry, cfg, 0, kOneRank);
  ASSERT_EQ(registry.params().size(), 3u);
  for (const auto& p : registry.params()) EXPECT_EQ(p->spec.role, ParamRole::kLinear);
}

// The fold and the per-token path compute the same function and gradients.
// The fold (in place in W's gradient, or through a separate buffer when the
// gradient is shared with other terms; W_eff kept for the step or formed
// just in time) and the per-token path compute the same outputs and
// gradients; the shared variants keep what the gradient already held.
TEST(ScaledLinearTest, FoldInPlaceFoldSharedAndPerTokenAgree) {
  config::ScaleVectorConfig sv;
  sv.set_mode(config::ScaleVectorConfig::SHARED);
  const ExecContext ctx;
  Tensor x = RandomTensor({6, 5}, 20);
  Tensor w = RandomTensor({6, 4}, 21);
  // fold in place, fold shared, per token, just-in-time fold in place, shared
  constexpr int kVariants = 5;
  auto in_place = [](int variant) { return variant == 0 || variant == 3; };
  std::vector<double> grads[kVariants];
  std::vector<double> outs[kVariants];
  for (int variant = 0; variant < kVariants; ++variant) {
    ParamRegistry registry;
    ParamSpec spec{"w", {4, 5}, ParamRole::kLinear, InitSpec::Normal(1.0), {}};
    Param* weight = registry.Create(spec);
    BranchScales scales(registry, ScaleOptions(sv), "gamma", {}, 5, {{"gamma", {}}}, false);
    const ScaledLinearOptions options{.path = variant == 2   ? ScalePath::kPerToken
                                              : variant >= 3 ? ScalePath::kFoldJustInTime
                                                             : ScalePath::kFold,
                                      .u_name = "u",
                                      .shared_weight_grad = variant == 1 || variant == 4};
    ScaledLinear lin(registry, weight, &scales, 0, options);
    ASSERT_TRUE(registry.Materialize(3, DType::kF64, Device::kCPU).ok());
    testing::PerturbScaleVectors(registry, 8);
    registry.ZeroGrads();
    // What another user of the weight (a tied embedding) adds to its
    // gradient: before this map's backward where the gradient is shared or
    // not folded, after it where the fold owns the gradient (in place).
    auto other_user = [&] {
      for (int64_t i = 0; i < weight->local_numel(); ++i) {
        weight->grad.data<double>()[i] += 0.25 * static_cast<double>(i % 3);
      }
    };
    if (!in_place(variant)) other_user();
    Must(scales.Forward(ctx, DType::kF64));
    Must(lin.PrepareStep(ctx, DType::kF64));
    EXPECT_EQ(lin.effective_weight().defined(), variant < 3) << variant;  // none kept: JIT
    Tensor y = Tensor::Empty({6, 4}, DType::kF64);
    lin.Forward(ctx, x, y);
    Tensor dx = Tensor::Empty({6, 5}, DType::kF64);
    dx.Fill(1.0);
    lin.Backward(ctx, w, dx, GradMode::kAccumulate);  // adds to the 1s
    Must(lin.FinishBackward(ctx));
    Must(scales.Backward(ctx));
    if (in_place(variant)) other_user();
    outs[variant] = y.ToVector();
    grads[variant] = registry.flat_grads().ToVector();
    for (double v : dx.ToVector()) grads[variant].push_back(v);
  }
  for (int variant = 1; variant < kVariants; ++variant) {
    ASSERT_EQ(grads[0].size(), grads[variant].size());
    for (size_t i = 0; i < outs[0].size(); ++i) {
      EXPECT_NEAR(outs[0][i], outs[variant][i], 1e-13) << variant;
    }
    for (size_t i = 0; i < grads[0].size(); ++i) {
      EXPECT_NEAR(grads[0][i], grads[variant][i], 1e-12) << variant << " element " << i;
    }
  }
}

// A linear map records in its vectors' ParamSpecs which weight they fold
// into: γ its columns, u its rows (the export reads nothing else).
TEST(ScaledLinearTest, VectorsRecordTheWeightTheyFoldInto) {
  config::ScaleVectorConfig sv;
  sv.set_mode(config::ScaleVectorConfig::SHARED);
  sv.set_reparam(config::ScaleVectorConfig::MAGNITUDE_DIRECTION);
  ParamRegistry registry;
  Param* w1 = registry.Create({"w1", {4, 5}, ParamRole::kLinear, InitSpec::Normal(1.0), {}});
  Param* w2 = registry.Create({"w2", {3, 5}, ParamRole::kLinear, InitSpec::Normal(1.0), {}});
  BranchScales scales(registry, ScaleOptions(sv), "gamma", {}, 5, {{"g1", {}}, {"g2", {}}},
                      false);
  ScaledLinear a(registry, w1, &scales, 0,
                 {.u_name = "u1", .reparam = config::ScaleVectorConfig::MAGNITUDE_DIRECTION});
  ScaledLinear b(registry, w2, &scales, 1, {});
  for (const char* part : {"gamma.alpha", "gamma.beta"}) {
    const ParamSpec& s = registry.Find(part)->spec;
    EXPECT_EQ(s.scale_vector.vector, "gamma") << part;
    ASSERT_EQ(s.scale_vector.folds_into.size(), 2u) << part;
    EXPECT_EQ(s.scale_vector.folds_into[0].weight, "w1");
    EXPECT_EQ(s.scale_vector.folds_into[1].weight, "w2");
    EXPECT_EQ(s.scale_vector.folds_into[0].side, FoldSide::kColumns);
  }
  const ParamSpec& u = registry.Find("u1.alpha")->spec;
  EXPECT_EQ(u.scale_vector.part, VectorPart::kAlpha);
  ASSERT_EQ(u.scale_vector.folds_into.size(), 1u);
  EXPECT_EQ(u.scale_vector.folds_into[0].weight, "w1");
  EXPECT_EQ(u.scale_vector.folds_into[0].side, FoldSide::kRows);
}

}  // namespace
}  // namespace scalemoe
