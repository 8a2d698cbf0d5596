// The norm ops with the residual add fused in (AddRmsNormalize,
// RmsNormalizeBackwardAdd) on the CPU: the same bits as the two-op
// sequences they replace in Block (Axpy then RmsNormalize; RmsNormalizeBackward
// then Axpy), on random rows of several shapes (one row, short, odd, per-head
// 3-D, long), f32, f64 and bf16 (with an f32 rstd), including the in-place
// calls the contract allows.
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

const std::vector<Shape> kShapes = {{1, 64}, {1, 7}, {5, 33}, {3, 4, 128}, {17, 1000}};
constexpr DType kDTypes[] = {DType::kF32, DType::kF64, DType::kBF16};

int64_t RowsOf(const Shape& shape) { return NumElements(shape) / shape.back(); }

std::string What(DType dtype, const Shape& shape) {
  return absl::StrCat(DTypeName(dtype), " ", ShapeString(shape));
}

TEST(AddRmsNormalizeTest, IsAxpyThenRmsNormalizeBitForBit) {
  const ExecContext ctx;
  uint64_t stream = 1;
  for (DType dtype : kDTypes) {
    for (const Shape& shape : kShapes) {
      const Tensor x = RandomTensor(shape, ++stream, 1.5, dtype);
      const Tensor residual = RandomTensor(shape, ++stream, 2.0, dtype, 0.3);
      // The sequence Block ran before.
      Tensor x_seq = x.Clone();
      Tensor n_seq = Tensor::Empty(shape, dtype);
      Tensor rstd_seq = Tensor::Empty({RowsOf(shape)}, StatDType(dtype));
      ops::Axpy(ctx, 1.0, residual, x_seq);
      ops::RmsNormalize(ctx, x_seq, 1e-5, n_seq, rstd_seq);
      // The fused op.
      Tensor x_fused = x.Clone();
      Tensor n = Tensor::Empty(shape, dtype);
      Tensor rstd = Tensor::Empty({RowsOf(shape)}, StatDType(dtype));
      ops::AddRmsNormalize(ctx, residual, x_fused, 1e-5, n, rstd);
      EXPECT_TRUE(SameBits(x_fused, x_seq)) << What(dtype, shape);
      EXPECT_TRUE(SameBits(n, n_seq)) << What(dtype, shape);
      EXPECT_TRUE(SameBits(rstd, rstd_seq)) << What(dtype, shape);
    }
  }
}

// n written over the residual (each element read before it is written).
TEST(AddRmsNormalizeTest, NOverTheResidualIsTheSameBits) {
  const ExecContext ctx;
  for (DType dtype : kDTypes) {
    const Shape shape = {9, 40};
    const Tensor x = RandomTensor(shape, 41, 1.0, dtype);
    const Tensor residual = RandomTensor(shape, 42, 1.0, dtype);
    Tensor x_seq = x.Clone();
    Tensor n_seq = Tensor::Empty(shape, dtype);
    Tensor rstd_seq = Tensor::Empty({9}, StatDType(dtype));
    ops::Axpy(ctx, 1.0, residual, x_seq);
    ops::RmsNormalize(ctx, x_seq, 1e-6, n_seq, rstd_seq);
    Tensor x_fused = x.Clone();
    Tensor res_then_n = residual.Clone();
    Tensor rstd = Tensor::Empty({9}, StatDType(dtype));
    ops::AddRmsNormalize(ctx, res_then_n, x_fused, 1e-6, res_then_n, rstd);
    EXPECT_TRUE(SameBits(x_fused, x_seq)) << DTypeName(dtype);
    EXPECT_TRUE(SameBits(res_then_n, n_seq)) << DTypeName(dtype);
    EXPECT_TRUE(SameBits(rstd, rstd_seq)) << DTypeName(dtype);
  }
}

TEST(RmsNormalizeBackwardAddTest, IsBackwardThenAxpyBitForBit) {
  const ExecContext ctx;
  uint64_t stream = 100;
  for (DType dtype : kDTypes) {
    for (const Shape& shape : kShapes) {
      const int64_t rows = RowsOf(shape);
      const Tensor n = RandomTensor(shape, ++stream, 1.0, dtype);
      const Tensor rstd = RandomTensor({rows}, ++stream, 0.2, StatDType(dtype), 1.0);
      const Tensor d_n = RandomTensor(shape, ++stream, 1.0, dtype);
      const Tensor d_res = RandomTensor(shape, ++stream, 0.5, dtype);
      Tensor d_x_seq = Tensor::Empty(shape, dtype);
      ops::RmsNormalizeBackward(ctx, n, rstd, d_n, d_x_seq);
      ops::Axpy(ctx, 1.0, d_res, d_x_seq);
      Tensor d_x = Tensor::Empty(shape, dtype);
      ops::RmsNormalizeBackwardAdd(ctx, n, rstd, d_n, d_res, d_x);
      EXPECT_TRUE(SameBits(d_x, d_x_seq)) << What(dtype, shape);

      // d_x over d_res, over d_n and over n: the same bits.
      Tensor over_res = d_res.Clone();
      ops::RmsNormalizeBackwardAdd(ctx, n, rstd, d_n, over_res, over_res);
      EXPECT_TRUE(SameBits(over_res, d_x_seq)) << "d_x = d_res, " << What(dtype, shape);
      Tensor over_dn = d_n.Clone();
      ops::RmsNormalizeBackwardAdd(ctx, n, rstd, over_dn, d_res, over_dn);
      EXPECT_TRUE(SameBits(over_dn, d_x_seq)) << "d_x = d_n, " << What(dtype, shape);
      Tensor over_n = n.Clone();
      ops::RmsNormalizeBackwardAdd(ctx, over_n, rstd, d_n, d_res, over_n);
      EXPECT_TRUE(SameBits(over_n, d_x_seq)) << "d_x = n, " << What(dtype, shape);
    }
  }
}

TEST(RmsNormalizeBackwardAddDeathTest, PartlyOverlappingOutputFailsTheCheck) {
  const ExecContext ctx;
  const Tensor buffer = RandomTensor({5 * 8}, 7);
  const Tensor n = RandomTensor({4, 8}, 8);
  const Tensor rstd = RandomTensor({4}, 9, 0.1, DType::kF64, 1.0);
  const Tensor d_n = RandomTensor({4, 8}, 10);
  const Tensor d_res = buffer.Narrow(0, 0, 32).View({4, 8});
  const Tensor d_x = buffer.Narrow(0, 8, 32).View({4, 8});  // one row further on
  EXPECT_DEATH(ops::RmsNormalizeBackwardAdd(ctx, n, rstd, d_n, d_res, d_x), "partly overlaps");
}

}  // namespace
}  // namespace scalemoe
