#include "norm/scale_vector.h"

#include "gtest/gtest.h"

namespace scalemoe {
namespace {

using Sv = config::ScaleVectorConfig;

ParamLayout SplitOnDim0() {
  ParamLayout layout;
  layout.tp_split_dim = 0;
  return layout;
}

// A TP-split γ holds only its slice: Compute and Backward touch exactly the
// local elements (the registry's buffer has no more).
TEST(ScaleVectorTest, SplitVectorWorksOnItsLocalSlice) {
  ParamRegistry registry(ShardCoords{.tp_rank = 1, .tp_size = 2});
  ScaleVector gamma(registry, "g", 8, ParamRole::kOutputNormScale, Sv::PLAIN, SplitOnDim0());
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  EXPECT_EQ(gamma.dim(), 4);
  EXPECT_EQ(gamma.global_dim(), 8);
  EXPECT_EQ(registry.total_local_numel(), 4);
  Tensor g = Tensor::Empty({gamma.dim()}, DType::kF64);
  gamma.Compute(ExecContext{}, g);
  EXPECT_EQ(g.ToVector(), std::vector<double>(4, 1.0));
  Tensor d = Tensor::FromVector({4}, {1, 2, 3, 4}, DType::kF64);
  gamma.Backward(ExecContext{}, d);
  EXPECT_EQ(registry.Find("g")->grad.ToVector(), (std::vector<double>{1, 2, 3, 4}));
}

TEST(ScaleVectorTest, MagnitudeDirectionGradients) {
  ParamRegistry registry;
  ScaleVector gamma(registry, "g", 3, ParamRole::kInputNormScale, Sv::MAGNITUDE_DIRECTION);
  ASSERT_TRUE(registry.Materialize(1, DType::kF64, Device::kCPU).ok());
  registry.Find("g.alpha")->value.CopyFrom(Tensor::FromVector({3}, {1, 2, 3}, DType::kF64));
  registry.Find("g.beta")->value.Fill(0.5);
  Tensor g = Tensor::Empty({3}, DType::kF64);
  gamma.Compute(ExecContext{}, g);
  EXPECT_EQ(g.ToVector(), (std::vector<double>{0.5, 1.0, 1.5}));
  gamma.Backward(ExecContext{}, Tensor::FromVector({3}, {1, 0, -1}, DType::kF64));
  // dα = β·dγ, dβ = <α, dγ>.
  EXPECT_EQ(registry.Find("g.alpha")->grad.ToVector(), (std::vector<double>{0.5, 0, -0.5}));
  EXPECT_EQ(registry.Find("g.beta")->grad.ToVector(), (std::vector<double>{-2.0}));
}

TEST(ScaleVectorDeathTest, SplitMagnitudeDirectionIsRefused) {
  EXPECT_DEATH(
      {
        ParamRegistry registry(ShardCoords{.tp_rank = 0, .tp_size = 2});
        ScaleVector gamma(registry, "g", 8, ParamRole::kInputNormScale, Sv::MAGNITUDE_DIRECTION,
                          SplitOnDim0());
      },
      "not supported yet");
}

}  // namespace
}  // namespace scalemoe
