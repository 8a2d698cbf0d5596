#include <cmath>
#include <utility>

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

// The packed forms on gate_up [N, 2F] give the same bits as SwiGlu and
// SwiGluBackward on its two halves (f32, f64 and bf16; F odd and even).
TEST(SwiGluTest, PackedEqualsHalvesBitForBit) {
  const ExecContext ctx;
  for (DType dt : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (const auto& [n, f] : {std::pair<int64_t, int64_t>{1, 1}, {5, 3}, {4, 16}}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dt) << " n=" << n << " f=" << f);
      const Tensor gu = testing::RandomTensor({n, 2 * f}, 11, 2.0, dt);
      const Tensor d_h = testing::RandomTensor({n, f}, 12, 1.0, dt);
      const Tensor g = gu.Narrow(1, 0, f).Clone(), u = gu.Narrow(1, f, f).Clone();
      Tensor h = Tensor::Empty({n, f}, dt), h_packed = Tensor::Empty({n, f}, dt);
      ops::SwiGlu(ctx, g, u, h);
      ops::SwiGluPacked(ctx, gu, h_packed);
      Tensor dg = Tensor::Empty({n, f}, dt), du = Tensor::Empty({n, f}, dt);
      Tensor d_gu = Tensor::Empty({n, 2 * f}, dt);
      ops::SwiGluBackward(ctx, g, u, d_h, dg, du);
      ops::SwiGluPackedBackward(ctx, gu, d_h, d_gu);
      EXPECT_EQ(h_packed.ToVector(), h.ToVector());
      EXPECT_EQ(d_gu.Narrow(1, 0, f).Clone().ToVector(), dg.ToVector());
      EXPECT_EQ(d_gu.Narrow(1, f, f).Clone().ToVector(), du.ToVector());
    }
  }
}

}  // namespace
}  // namespace scalemoe
