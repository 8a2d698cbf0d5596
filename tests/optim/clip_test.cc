#include "optim/clip.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace scalemoe {
namespace {

struct Fixture {
  explicit Fixture(DType dtype) {
    a = reg.Create({"a", {2, 2}, ParamRole::kLinear, InitSpec::Zeros(), {}});
    g = reg.Create({"g", {3}, ParamRole::kInputNormScale, InitSpec::Ones(), {}});
    eb = reg.Create({"eb", {2}, ParamRole::kExpertBias, InitSpec::Zeros(), {}});
    SM_CHECK_OK(reg.Materialize(1, dtype, Device::kCPU));
    a->grad.CopyFrom(Tensor::FromVector({2, 2}, {1, 2, 3, 4}, DType::kF64));
    g->grad.CopyFrom(Tensor::FromVector({3}, {-1, 0, 2}, DType::kF64));
    eb->grad.CopyFrom(Tensor::FromVector({2}, {100, 100}, DType::kF64));  // not counted
  }
  ParamRegistry reg;
  Param *a, *g, *eb;
};

constexpr double kNormSquared = 1 + 4 + 9 + 16 + 1 + 0 + 4;  // 35

TEST(ClipTest, GlobalNormIsExactOverTrainableGradients) {
  Fixture f64(DType::kF64), f32(DType::kF32);
  EXPECT_DOUBLE_EQ(GlobalGradNorm(f64.reg), std::sqrt(kNormSquared));
  EXPECT_DOUBLE_EQ(GlobalGradNorm(f32.reg), std::sqrt(kNormSquared));  // small ints: exact in f32
}

TEST(ClipTest, ClipScalesToMaxNorm) {
  Fixture f(DType::kF64);
  const double norm = ClipGradients(f.reg, 2.0);
  EXPECT_DOUBLE_EQ(norm, std::sqrt(kNormSquared));
  EXPECT_NEAR(GlobalGradNorm(f.reg), 2.0, 1e-15);
  const double s = 2.0 / std::sqrt(kNormSquared);
  EXPECT_DOUBLE_EQ(f.a->grad.At(3), 4 * s);
  EXPECT_DOUBLE_EQ(f.g->grad.At(2), 2 * s);
  EXPECT_EQ(f.eb->grad.At(0), 100);  // untrained: left alone
}

TEST(ClipTest, NoOpBelowMaxNormOrWhenOff) {
  for (double max_norm : {10.0, 0.0}) {
    Fixture f(DType::kF64);
    EXPECT_DOUBLE_EQ(ClipGradients(f.reg, max_norm), std::sqrt(kNormSquared));
    EXPECT_EQ(f.a->grad.ToVector(), (std::vector<double>{1, 2, 3, 4}));
  }
}

TEST(ClipTest, NonFiniteNormIsReportedAndGradientsLeftAlone) {
  Fixture f(DType::kF32);
  f.g->grad.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(ClipGradients(f.reg, 1.0)));
  EXPECT_EQ(f.a->grad.ToVector(), (std::vector<double>{1, 2, 3, 4}));
  f.g->grad.data<float>()[1] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(ClipGradients(f.reg, 1.0)));
}

}  // namespace
}  // namespace scalemoe
