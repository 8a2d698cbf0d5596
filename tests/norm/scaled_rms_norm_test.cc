// ScaledRmsNorm: forward semantics, f64 gradients (every reparam), mode NONE,
// RoPE outside the fused op with and without the table.
#include "norm/scaled_rms_norm.h"

#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/same_bits.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using testing::RandomTensor;

TEST(ScaledRmsNormTest, ForwardIsGammaTimesNormalizedPerHead) {
  config::ScaleVectorConfig cfg;
  ParamRegistry registry;
  ScaledRmsNorm norm(registry, ScaleOptions(cfg), "x_norm", 4, 0.0);
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  Param* g = registry.Find("x_norm.scale");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->spec.role, ParamRole::kOutputNormScale);
  for (int j = 0; j < 4; ++j) g->value.Narrow(0, j, 1).Fill(j + 1.0);
  const ExecContext ctx;
  Must(norm.PrepareStep(ctx, DType::kF64));
  Tensor x = RandomTensor({3, 8}, 2);  // 3 tokens x 2 heads of 4
  Tensor y = Tensor::Empty({3, 8}, DType::kF64);
  norm.Forward(ctx, x, y);
  for (int r = 0; r < 6; ++r) {
    double sq = 0;
    for (int j = 0; j < 4; ++j) sq += x.At(r * 4 + j) * x.At(r * 4 + j);
    const double rstd = 1.0 / std::sqrt(sq / 4);
    for (int j = 0; j < 4; ++j) EXPECT_NEAR(y.At(r * 4 + j), (j + 1) * x.At(r * 4 + j) * rstd, 1e-13);
  }
}

TEST(ScaledRmsNormTest, GradientsForEveryReparam) {
  for (auto reparam : {config::ScaleVectorConfig::PLAIN,
                       config::ScaleVectorConfig::MAGNITUDE_DIRECTION,
                       config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED}) {
    SCOPED_TRACE(reparam);
    config::ScaleVectorConfig cfg;
    cfg.set_reparam(reparam);
    ParamRegistry registry;
    ScaledRmsNorm norm(registry, ScaleOptions(cfg), "n", 6, 1e-6);
    ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
    for (const auto& p : registry.params()) {
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        p->value.View({p->local_numel()}).Narrow(0, i, 1).Fill(1.0 + 0.1 * (i % 3) - 0.05 * i);
      }
    }
    const ExecContext ctx;
    Tensor x = RandomTensor({5, 6}, 3);
    Tensor w = RandomTensor({5, 6}, 4);
    auto loss = [&] {
      Must(norm.PrepareStep(ctx, DType::kF64));
      Tensor y = Tensor::Empty({5, 6}, DType::kF64);
      norm.Forward(ctx, x, y);
      return testing::WeightedSum(y, w);
    };
    loss();
    registry.ZeroGrads();
    Tensor dx = Tensor::Empty({5, 6}, DType::kF64);
    norm.Backward(ctx, w, dx);
    Must(norm.FinishBackward(ctx));
    for (const auto& p : registry.params()) {
      EXPECT_LT(testing::GradError(loss, p->value, p->grad), testing::kGradTolerance)
          << p->spec.name;
    }
    EXPECT_LT(testing::GradError(loss, x, dx), testing::kGradTolerance);
  }
}

TEST(ScaledRmsNormTest, ModeNoneHasNoParametersAndOnlyNormalizes) {
  config::ScaleVectorConfig cfg;
  cfg.set_mode(config::ScaleVectorConfig::NONE);
  ParamRegistry registry;
  ScaledRmsNorm norm(registry, ScaleOptions(cfg), "n", 3, 0.0);
  EXPECT_TRUE(registry.params().empty());
  EXPECT_FALSE(norm.has_scale());
  const ExecContext ctx;
  Must(norm.PrepareStep(ctx, DType::kF64));
  Tensor x = Tensor::FromVector({1, 3}, {3, 0, -3}, DType::kF64);
  Tensor y = Tensor::Empty({1, 3}, DType::kF64);
  norm.Forward(ctx, x, y);
  EXPECT_NEAR(y.At(0), std::sqrt(1.5), 1e-14);
  EXPECT_NEAR(y.At(2), -std::sqrt(1.5), 1e-14);
}

// RoPE after the norm in its own op (the paths the fused norm + RoPE does
// not take: no γ under mode NONE, a head dim past the fused op's) reads the
// rope table where it fits: the same bits as without one, forward and
// backward (y, d_x and d_γ).
TEST(ScaledRmsNormTest, RopeOutsideTheFusedOpGivesTheTablelessBits) {
  constexpr double kTheta = 10000.0;
  constexpr int64_t kBatch = 2, kSeq = 5, kHeads = 3;
  struct Case {
    config::ScaleVectorConfig::Mode mode;
    int64_t dim;
  };
  for (const Case c : {Case{config::ScaleVectorConfig::NONE, 8},
                       Case{config::ScaleVectorConfig::SHARED, 2 * 136}}) {
    SCOPED_TRACE(c.dim);
    ASSERT_GT(c.dim,
              c.mode == config::ScaleVectorConfig::NONE ? 0 : ops::kScaledRmsNormalizeMaxDim);
    const ExecContext ctx;
    const int64_t rows = kBatch * kSeq * kHeads;
    const Tensor x = RandomTensor({rows, c.dim}, 5, 1.0, DType::kF32);
    const Tensor d_y = RandomTensor({rows, c.dim}, 6, 1.0, DType::kF32);
    Tensor table = Tensor::Empty({2, kSeq + 3, c.dim / 2}, DType::kF32);
    ops::RopeTable(ctx, kTheta, table);
    // y, d_x and the flat gradients of one forward and backward.
    auto run = [&](const Tensor& rope_table) {
      config::ScaleVectorConfig cfg;
      cfg.set_mode(c.mode);
      ParamRegistry registry;
      ScaledRmsNorm norm(registry, ScaleOptions(cfg), "q_norm", c.dim, 1e-6);
      Must(registry.Materialize(1, DType::kF32, Device::kCPU));
      registry.ZeroGrads();
      Must(norm.PrepareStep(ctx, DType::kF32));
      const ScaledRmsNorm::Rope rope{kTheta, rope_table, kBatch, kSeq};
      Tensor y = Tensor::Empty({rows, c.dim}, DType::kF32);
      norm.Forward(ctx, x, y, &rope);
      Tensor d_x = Tensor::Empty({rows, c.dim}, DType::kF32);
      norm.Backward(ctx, d_y.Clone(), d_x);
      Must(norm.FinishBackward(ctx));
      std::vector<Tensor> out = {y, d_x};
      const Tensor grads = registry.flat_grads();
      if (grads.defined() && grads.numel() > 0) out.push_back(grads.Clone());
      return out;
    };
    const std::vector<Tensor> with = run(table), without = run(Tensor());
    ASSERT_EQ(with.size(), without.size());
    EXPECT_EQ(with.size(), c.mode == config::ScaleVectorConfig::NONE ? 2u : 3u);
    for (size_t i = 0; i < with.size(); ++i)
      EXPECT_TRUE(testing::SameBits(with[i], without[i])) << i;
    // The rotation took place: y differs from the norm alone.
    config::ScaleVectorConfig cfg;
    cfg.set_mode(c.mode);
    ParamRegistry registry;
    ScaledRmsNorm plain(registry, ScaleOptions(cfg), "q_norm", c.dim, 1e-6);
    Must(registry.Materialize(1, DType::kF32, Device::kCPU));
    Must(plain.PrepareStep(ctx, DType::kF32));
    Tensor y_plain = Tensor::Empty({rows, c.dim}, DType::kF32);
    plain.Forward(ctx, x, y_plain);
    EXPECT_FALSE(testing::SameBits(with[0], y_plain));
  }
}

}  // namespace
}  // namespace scalemoe
