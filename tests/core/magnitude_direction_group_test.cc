// MagnitudeDirectionGroup and MagnitudeDirectionBackwardGroup (core/ops.h)
// on the CPU: every vector gets the same bits as MagnitudeDirection, and as
// Dot then MagnitudeDirectionBackward (plain form), called on its own; for
// several group sizes (one included), f32 and f64, one element and odd
// lengths.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/core/group_test_util.h"
#include "tests/testing/same_bits.h"

namespace scalemoe {
namespace {

using testing::Clones;
using testing::Randoms;
using testing::SameBits;

struct Case {
  int64_t groups, d;
};
const Case kCases[] = {{1, 5}, {2, 1}, {3, 17}, {16, 40}};

TEST(MagnitudeDirectionGroupTest, ForwardEqualsOneCallPerVector) {
  const ExecContext ctx;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const Case& k : kCases) {
      const auto alpha = Randoms(k.groups, {1, k.d}, dtype, 1);
      const auto beta = Randoms(k.groups, {1, 1}, dtype, 2);
      const auto gamma = Randoms(k.groups, {1, k.d}, dtype, 3);  // overwritten
      ops::MagnitudeDirectionGroup(ctx, ops::MakeMatrixGroup(ctx, alpha),
                                   ops::MakeMatrixGroup(ctx, beta),
                                   ops::MakeMatrixGroup(ctx, gamma));
      for (int64_t g = 0; g < k.groups; ++g) {
        Tensor ref = Tensor::Empty({1, k.d}, dtype);
        ops::MagnitudeDirection(ctx, alpha[g], beta[g], Tensor(), 0, ref);
        EXPECT_TRUE(SameBits(gamma[g], ref))
            << DTypeName(dtype) << " " << k.groups << " x " << k.d << " vector " << g;
      }
    }
  }
}

TEST(MagnitudeDirectionGroupTest, BackwardEqualsDotThenBackwardPerVector) {
  const ExecContext ctx;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (const Case& k : kCases) {
      const std::string what = absl::StrCat(DTypeName(dtype), " ", k.groups, " x ", k.d);
      const auto alpha = Randoms(k.groups, {1, k.d}, dtype, 1);
      const auto beta = Randoms(k.groups, {1, 1}, dtype, 2);
      const auto d_gamma = Randoms(k.groups, {1, k.d}, dtype, 3);
      const auto d_alpha = Randoms(k.groups, {1, k.d}, dtype, 4);  // accumulated
      const auto d_beta = Randoms(k.groups, {1, 1}, dtype, 5);
      const auto d_alpha_ref = Clones(d_alpha), d_beta_ref = Clones(d_beta);
      ops::MagnitudeDirectionBackwardGroup(
          ctx, ops::MakeMatrixGroup(ctx, alpha), ops::MakeMatrixGroup(ctx, beta),
          ops::MakeMatrixGroup(ctx, d_gamma), ops::MakeMatrixGroup(ctx, d_alpha),
          ops::MakeMatrixGroup(ctx, d_beta));
      for (int64_t g = 0; g < k.groups; ++g) {
        Tensor dots = Tensor::Zeros({3}, DType::kF64);
        ops::Dot(ctx, alpha[g], d_gamma[g], dots.Narrow(0, 2, 1));
        ops::MagnitudeDirectionBackward(ctx, alpha[g], beta[g], dots, 0, d_gamma[g], d_alpha_ref[g],
                                        d_beta_ref[g]);
        EXPECT_TRUE(SameBits(d_alpha[g], d_alpha_ref[g])) << what << " d_alpha " << g;
        EXPECT_TRUE(SameBits(d_beta[g], d_beta_ref[g])) << what << " d_beta " << g;
      }
    }
  }
}

}  // namespace
}  // namespace scalemoe
