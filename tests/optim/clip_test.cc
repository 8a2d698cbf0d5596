// The gradient norm on the device: GradNormRanges over the trained
// parameters and CheckGradNorm's clip factor, non-finite flag and count.
#include "optim/clip.h"

#include <cmath>
#include <limits>
#include <memory>

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
    groups = std::make_unique<ParamGroups>(
        ParamGroups::Create(reg, {}, config::ScaleVectorConfig::IWD).value());
    ranges.Add(reg.flat_grads(), TrainedRanges(*groups));
    ranges.Upload(ctx);
    num_updates = Tensor::FromVector({1}, {5}, DType::kI64);
  }
  // The norm check of the current gradients.
  NormCheck Check(double max_norm) {
    const Tensor sum = ctx.Zeros({1}, DType::kF64);
    ranges.Accumulate(ctx, sum);
    return CheckGradNorm(ctx, sum, max_norm, num_updates);
  }
  ExecContext ctx = ExecContext::Cpu();
  ParamRegistry reg;
  Param *a, *g, *eb;
  std::unique_ptr<ParamGroups> groups;
  GradNormRanges ranges;
  Tensor num_updates;
};

constexpr double kNormSquared = 1 + 4 + 9 + 16 + 1 + 0 + 4;  // 35

TEST(ClipTest, GlobalNormIsExactOverTrainedGradients) {
  Fixture f64(DType::kF64), f32(DType::kF32);
  EXPECT_EQ(TrainedRanges(*f64.groups).size(), 2u);  // the expert bias is not trained
  EXPECT_DOUBLE_EQ(f64.Check(0.0).grad_norm.At(0), std::sqrt(kNormSquared));
  // Small integers: exact in f32 too.
  EXPECT_DOUBLE_EQ(f32.Check(0.0).grad_norm.At(0), std::sqrt(kNormSquared));
}

TEST(ClipTest, ClipFactorBringsTheNormToMaxNormAndGradientsStay) {
  Fixture f(DType::kF64);
  const NormCheck check = f.Check(2.0);
  EXPECT_DOUBLE_EQ(check.grad_norm.At(0), std::sqrt(kNormSquared));
  EXPECT_DOUBLE_EQ(check.control.clip_factor.At(0), 2.0 / std::sqrt(kNormSquared));
  EXPECT_EQ(check.control.nonfinite.At(0), 0);
  EXPECT_EQ(f.num_updates.At(0), 6);  // this update counted
  // The update ops apply the factor; the buffers are not rescaled.
  EXPECT_EQ(f.a->grad.ToVector(), (std::vector<double>{1, 2, 3, 4}));
}

TEST(ClipTest, FactorIsOneBelowMaxNormOrWhenOff) {
  for (double max_norm : {10.0, 0.0}) {
    Fixture f(DType::kF64);
    const NormCheck check = f.Check(max_norm);
    EXPECT_DOUBLE_EQ(check.grad_norm.At(0), std::sqrt(kNormSquared));
    EXPECT_EQ(check.control.clip_factor.At(0), 1.0);
    EXPECT_EQ(check.control.nonfinite.At(0), 0);
  }
}

TEST(ClipTest, NonFiniteNormIsFlaggedAndNotCounted) {
  Fixture f(DType::kF32);
  f.g->grad.data<float>()[1] = std::numeric_limits<float>::quiet_NaN();
  NormCheck check = f.Check(1.0);
  EXPECT_TRUE(std::isnan(check.grad_norm.At(0)));
  EXPECT_EQ(check.control.nonfinite.At(0), 1);
  EXPECT_EQ(check.control.clip_factor.At(0), 1.0);
  EXPECT_EQ(f.num_updates.At(0), 5);
  f.g->grad.data<float>()[1] = std::numeric_limits<float>::infinity();
  check = f.Check(1.0);
  EXPECT_TRUE(std::isinf(check.grad_norm.At(0)));
  EXPECT_EQ(check.control.nonfinite.At(0), 1);
  EXPECT_EQ(f.num_updates.At(0), 5);
}

}  // namespace
}  // namespace scalemoe
