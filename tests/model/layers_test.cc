// Layer-level f64 gradient checks and path equivalence: ScaledLinear (fold vs
// per token), Attention (GQA + RoPE, with/without QK-norm, DNP), Mlp.
#include <memory>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "model/attention.h"
#include "model/mlp.h"
#include "model/scaled_linear.h"
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
TEST(ScaledLinearTest, FoldAndPerTokenAgree) {
  config::ScaleVectorConfig sv;
  sv.set_mode(config::ScaleVectorConfig::SHARED);
  const ExecContext ctx;
  Tensor x = RandomTensor({6, 5}, 20);
  Tensor w = RandomTensor({6, 4}, 21);
  std::vector<double> grads[2];
  std::vector<double> outs[2];
  for (int path = 0; path < 2; ++path) {
    ParamRegistry registry;
    ParamSpec spec{"w", {4, 5}, ParamRole::kLinear, InitSpec::Normal(1.0), {}};
    Param* weight = registry.Create(spec);
    BranchScales scales(registry, ScaleOptions(sv), "gamma", {}, 5, {{"gamma", {}}}, false);
    ScaledLinear lin(registry, weight, &scales, 0, "u", config::ScaleVectorConfig::PLAIN,
                     path == 0 ? ScalePath::kFold : ScalePath::kPerToken);
    ASSERT_TRUE(registry.Materialize(3, DType::kF64, Device::kCPU).ok());
    testing::PerturbScaleVectors(registry, 8);
    Must(scales.Forward(ctx, DType::kF64));
    Must(lin.PrepareStep(ctx, DType::kF64));
    Tensor y = Tensor::Empty({6, 4}, DType::kF64);
    lin.Forward(ctx, x, y);
    Tensor dx = Tensor::Empty({6, 5}, DType::kF64);
    dx.Fill(1.0);
    lin.Backward(ctx, w, dx, GradMode::kAccumulate);  // adds to the 1s
    Must(lin.FinishBackward(ctx));
    Must(scales.Backward(ctx));
    outs[path] = y.ToVector();
    grads[path] = registry.flat_grads().ToVector();
    for (double v : dx.ToVector()) grads[path].push_back(v);
  }
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < outs[0].size(); ++i) EXPECT_NEAR(outs[0][i], outs[1][i], 1e-13);
  for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_NEAR(grads[0][i], grads[1][i], 1e-12);
}

}  // namespace
}  // namespace scalemoe
