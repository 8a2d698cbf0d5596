// ScaledRmsNormalize and its backward on the CPU: the same bits as the
// sequences the per-head norms (norm/scaled_rms_norm.cc) ran before — the
// input widened to its statistic dtype, RmsNormalize, ScaleRowsCols(n, -, γ),
// a copy into the output dtype; backward ScaleRowsColsBackward then
// RmsNormalizeBackward — on random rows (one row, shorter than a pack, odd,
// per-head 3-D, the longest allowed), f32, f64, bf16, and f32 x with bf16
// outputs. Rows over 256 are refused with a message naming the other ops.
// ScaledRmsNormalizeRope is ScaledRmsNormalize then Rope, bit for bit.
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/same_bits.h"

namespace scalemoe {
namespace {

using testing::RandomTensor;
using testing::SameBits;

const std::vector<Shape> kShapes = {{1, 64}, {1, 7}, {5, 33}, {3, 4, 128}, {6, 256}, {40, 64}};

struct Case {
  DType x, io;  // x's dtype, and y's, d_y's and d_x's
};
constexpr Case kCases[] = {{DType::kF32, DType::kF32},
                           {DType::kF64, DType::kF64},
                           {DType::kBF16, DType::kBF16},
                           {DType::kF32, DType::kBF16}};

Tensor As(const ExecContext& ctx, const Tensor& t, DType dtype) {
  Tensor out = Tensor::Empty(t.shape(), dtype);
  ops::Copy(ctx, t, out);
  return out;
}

std::string What(const Case& c, const Shape& shape) {
  return absl::StrCat(DTypeName(c.x), " x, ", DTypeName(c.io), " out, ", ShapeString(shape));
}

TEST(ScaledRmsNormalizeTest, IsTheTwoOpSequenceBitForBit) {
  const ExecContext ctx;
  uint64_t stream = 1;
  for (const Case& c : kCases) {
    const DType stat = StatDType(c.x);
    for (const Shape& shape : kShapes) {
      const int64_t d = shape.back(), rows = NumElements(shape) / d;
      const Tensor x = RandomTensor({rows, d}, ++stream, 1.5, c.x, 0.2);
      const Tensor gamma = RandomTensor({d}, ++stream, 0.5, stat, 1.0);
      const Tensor d_y = RandomTensor({rows, d}, ++stream, 1.0, c.io);
      const Tensor d_gamma0 = RandomTensor({d}, ++stream, 0.1, stat);

      // The sequence, in the statistic dtype.
      const Tensor xs = As(ctx, x, stat);
      Tensor n = Tensor::Empty({rows, d}, stat);
      Tensor rstd_seq = Tensor::Empty({rows}, stat);
      ops::RmsNormalize(ctx, xs, 1e-5, n, rstd_seq);
      Tensor ys = Tensor::Empty({rows, d}, stat);
      ops::ScaleRowsCols(ctx, n, Tensor(), gamma, ys);
      const Tensor y_seq = As(ctx, ys, c.io);
      Tensor d_n = Tensor::Empty({rows, d}, stat);
      Tensor d_gamma_seq = d_gamma0.Clone();
      ops::ScaleRowsColsBackward(ctx, n, Tensor(), gamma, As(ctx, d_y, stat), d_n, Tensor(),
                                 d_gamma_seq);
      Tensor d_xs = Tensor::Empty({rows, d}, stat);
      ops::RmsNormalizeBackward(ctx, n, rstd_seq, d_n, d_xs);
      const Tensor d_x_seq = As(ctx, d_xs, c.io);

      // The fused ops.
      Tensor y = Tensor::Empty({rows, d}, c.io);
      Tensor rstd = Tensor::Empty({rows}, stat);
      ops::ScaledRmsNormalize(ctx, x, gamma, 1e-5, y, rstd);
      Tensor d_x = Tensor::Empty({rows, d}, c.io);
      Tensor d_gamma = d_gamma0.Clone();
      ops::ScaledRmsNormalizeBackward(ctx, x, rstd, gamma, d_y, d_x, d_gamma);

      EXPECT_TRUE(SameBits(y, y_seq)) << "y " << What(c, shape);
      EXPECT_TRUE(SameBits(rstd, rstd_seq)) << "rstd " << What(c, shape);
      EXPECT_TRUE(SameBits(d_x, d_x_seq)) << "d_x " << What(c, shape);
      EXPECT_TRUE(SameBits(d_gamma, d_gamma_seq)) << "d_gamma " << What(c, shape);
      EXPECT_FALSE(SameBits(d_gamma, d_gamma0)) << "d_gamma unchanged " << What(c, shape);
    }
  }
}

// ScaledRmsNormalizeRope: ScaledRmsNormalize then Rope, bit for bit (the
// table longer than the sequence); its backward RopeBackward into a copy,
// then ScaledRmsNormalizeBackward, leaving d_y as it was.
TEST(ScaledRmsNormalizeTest, RopeIsNormThenRopeBitForBit) {
  const ExecContext ctx;
  uint64_t stream = 100;
  constexpr double kTheta = 10000.0;
  for (const Case& c : kCases) {
    const DType stat = StatDType(c.x);
    for (const Shape& shape : std::vector<Shape>{{2, 5, 3, 64}, {1, 9, 2, 6}, {1, 3, 1, 256}}) {
      const int64_t d = shape[3], rows = NumElements(shape) / d;
      const Tensor x = RandomTensor(shape, ++stream, 1.5, c.x, 0.2);
      const Tensor gamma = RandomTensor({d}, ++stream, 0.5, stat, 1.0);
      const Tensor d_y = RandomTensor(shape, ++stream, 1.0, c.io);
      const Tensor d_gamma0 = RandomTensor({d}, ++stream, 0.1, stat);
      Tensor table = Tensor::Empty({2, shape[1] + 2, d / 2}, stat);
      ops::RopeTable(ctx, kTheta, table);

      Tensor y_seq = Tensor::Empty(shape, c.io), rstd_seq = Tensor::Empty({rows}, stat);
      ops::ScaledRmsNormalize(ctx, x, gamma, 1e-5, y_seq, rstd_seq);
      ops::Rope(ctx, y_seq, kTheta, y_seq);
      Tensor y = Tensor::Empty(shape, c.io), rstd = Tensor::Empty({rows}, stat);
      ops::ScaledRmsNormalizeRope(ctx, x, gamma, 1e-5, table, y, rstd);
      EXPECT_TRUE(SameBits(y, y_seq)) << "y " << What(c, shape);
      EXPECT_TRUE(SameBits(rstd, rstd_seq)) << "rstd " << What(c, shape);

      Tensor d_n = d_y.Clone();
      ops::RopeBackward(ctx, d_n, kTheta, d_n);
      Tensor d_x_seq = Tensor::Empty(shape, c.io), d_gamma_seq = d_gamma0.Clone();
      ops::ScaledRmsNormalizeBackward(ctx, x, rstd, gamma, d_n, d_x_seq, d_gamma_seq);
      const Tensor d_y_before = d_y.Clone();
      Tensor d_x = Tensor::Empty(shape, c.io), d_gamma = d_gamma0.Clone();
      ops::ScaledRmsNormalizeRopeBackward(ctx, x, rstd, gamma, table, d_y, d_x, d_gamma);
      EXPECT_TRUE(SameBits(d_x, d_x_seq)) << "d_x " << What(c, shape);
      EXPECT_TRUE(SameBits(d_gamma, d_gamma_seq)) << "d_gamma " << What(c, shape);
      EXPECT_TRUE(SameBits(d_y, d_y_before)) << "d_y kept " << What(c, shape);
      EXPECT_FALSE(SameBits(y, Tensor::Zeros(shape, c.io))) << What(c, shape);
    }
  }
}

TEST(ScaledRmsNormalizeDeathTest, RefusesLongRowsAndMixedDTypes) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({2, 257}, 3, 1.0, DType::kF32);
  EXPECT_DEATH(ops::ScaledRmsNormalize(ctx, x, Tensor::Zeros({257}, DType::kF32), 1e-5, x.Clone(),
                                       Tensor::Empty({2}, DType::kF32)),
               "rows of 257 elements.*use RmsNormalize and ScaleRowsCols");
  const Tensor xb = RandomTensor({2, 64}, 4, 1.0, DType::kBF16);
  // bf16 x takes bf16 outputs only.
  EXPECT_DEATH(
      ops::ScaledRmsNormalize(ctx, xb, Tensor::Zeros({64}, DType::kF32), 1e-5,
                              Tensor::Empty({2, 64}, DType::kF32), Tensor::Empty({2}, DType::kF32)),
      "x's dtype, or bf16 for f32 x");
  // γ in the statistic dtype (f32 for bf16 x).
  EXPECT_DEATH(ops::ScaledRmsNormalize(ctx, xb, Tensor::Zeros({64}, DType::kBF16), 1e-5, xb.Clone(),
                                       Tensor::Empty({2}, DType::kF32)),
               "gamma");
}

}  // namespace
}  // namespace scalemoe
