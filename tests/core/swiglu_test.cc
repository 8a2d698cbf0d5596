#include <cmath>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

TEST(SwiGluTest, ForwardIsSiluGateTimesUp) {
  const ExecContext ctx;
  Tensor g = testing::RandomTensor({5, 3}, 1);
  Tensor u = testing::RandomTensor({5, 3}, 2);
  Tensor h = Tensor::Empty({5, 3}, DType::kF64);
  ops::SwiGlu(ctx, g, u, h);
  for (int i = 0; i < 15; ++i) {
    EXPECT_NEAR(h.At(i), g.At(i) / (1 + std::exp(-g.At(i))) * u.At(i), 1e-15);
  }
}

TEST(SwiGluTest, BackwardMatchesFiniteDifferences) {
  const ExecContext ctx;
  Tensor g = testing::RandomTensor({4, 6}, 1, 2.0);
  Tensor u = testing::RandomTensor({4, 6}, 2);
  Tensor w = testing::RandomTensor({4, 6}, 3);
  auto loss = [&] {
    Tensor h = Tensor::Empty({4, 6}, DType::kF64);
    ops::SwiGlu(ctx, g, u, h);
    return testing::WeightedSum(h, w);
  };
  Tensor dg = Tensor::Empty({4, 6}, DType::kF64);
  Tensor du = Tensor::Empty({4, 6}, DType::kF64);
  ops::SwiGluBackward(ctx, g, u, w, dg, du);
  EXPECT_LT(testing::GradError(loss, g, dg), testing::kGradTolerance);
  EXPECT_LT(testing::GradError(loss, u, du), testing::kGradTolerance);
}

}  // namespace
}  // namespace scalemoe
