#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe {
namespace {

using testing::GradError;
using testing::RandomTensor;
using testing::WeightedSum;

TEST(ScaleRowsColsTest, ForwardIsDiagRowTimesXTimesDiagCol) {
  const ExecContext ctx;
  Tensor x = RandomTensor({2, 3, 4}, 1);
  Tensor row = RandomTensor({2, 3}, 2);
  Tensor col = RandomTensor({2, 4}, 3);
  Tensor out = Tensor::Empty(x.shape(), DType::kF64);
  ops::ScaleRowsCols(ctx, x, row, col, out);
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j)
        EXPECT_DOUBLE_EQ(out.At((b * 3 + i) * 4 + j),
                         row.At(b * 3 + i) * x.At((b * 3 + i) * 4 + j) * col.At(b * 4 + j));
  Tensor only_col = Tensor::Empty(x.shape(), DType::kF64);
  ops::ScaleRowsCols(ctx, x, Tensor(), col, only_col);
  EXPECT_DOUBLE_EQ(only_col.At(5), x.At(5) * col.At(1));
}

TEST(ScaleRowsColsTest, BackwardMatchesFiniteDifferences) {
  const ExecContext ctx;
  Tensor x = RandomTensor({2, 3, 4}, 1);
  Tensor row = RandomTensor({2, 3}, 2);
  Tensor col = RandomTensor({2, 4}, 3);
  Tensor w = RandomTensor({2, 3, 4}, 4);
  auto loss = [&] {
    Tensor out = Tensor::Empty(x.shape(), DType::kF64);
    ops::ScaleRowsCols(ctx, x, row, col, out);
    return WeightedSum(out, w);
  };
  Tensor dx = Tensor::Empty(x.shape(), DType::kF64);
  Tensor drow = Tensor::Zeros(row.shape(), DType::kF64);
  Tensor dcol = Tensor::Zeros(col.shape(), DType::kF64);
  ops::ScaleRowsColsBackward(ctx, x, row, col, w, dx, drow, dcol);
  EXPECT_LT(GradError(loss, x, dx), testing::kGradTolerance);
  EXPECT_LT(GradError(loss, row, drow), testing::kGradTolerance);
  EXPECT_LT(GradError(loss, col, dcol), testing::kGradTolerance);
}

TEST(ScaleRowsColsTest, BackwardAccumulatesVectorGrads) {
  const ExecContext ctx;
  Tensor x = RandomTensor({3, 4}, 1);
  Tensor col = RandomTensor({4}, 3);
  Tensor w = RandomTensor({3, 4}, 4);
  Tensor dcol = Tensor::Zeros({4}, DType::kF64);
  ops::ScaleRowsColsBackward(ctx, x, Tensor(), col, w, Tensor(), Tensor(), dcol);
  const double once = dcol.At(2);
  ops::ScaleRowsColsBackward(ctx, x, Tensor(), col, w, Tensor(), Tensor(), dcol);
  EXPECT_DOUBLE_EQ(dcol.At(2), 2 * once);
}

}  // namespace
}  // namespace scalemoe
