// ScaleRowsColsGroup and ScaleRowsColsBackwardGroup (core/ops.h) on the CPU:
// every group gets the same bits as a ScaleRowsCols / ScaleRowsColsBackward
// call of its own, for several group sizes (one included), odd shapes,
// undefined row or col, any subset of the backward's outputs, the in-place
// unfold (d_x aliasing d_out), a d_col shared by all groups and the fold
// rounded to bf16.
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
  int64_t groups, r, c;
};
const Case kCases[] = {{1, 3, 4}, {2, 1, 7}, {3, 5, 1}, {5, 17, 9}, {8, 33, 12}};
constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

// The group of vectors [n] as [1, n] matrices; none when `vectors` is empty.
ops::MatrixGroup VectorGroup(const ExecContext& ctx, const std::vector<Tensor>& vectors) {
  std::vector<Tensor> views;
  for (const Tensor& v : vectors) views.push_back(v.View({1, v.numel()}));
  return ops::MakeMatrixGroup(ctx, views);
}

Tensor At(const std::vector<Tensor>& ts, size_t g) { return ts.empty() ? Tensor() : ts[g]; }

TEST(ScaleRowsColsGroupTest, ForwardEqualsOneCallPerGroup) {
  const ExecContext ctx;
  for (DType dtype : kFloats) {
    for (const Case& k : kCases) {
      for (int mask = 0; mask < 4; ++mask) {  // bit 0: row defined, bit 1: col defined
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", k.groups, " x [", k.r, ", ", k.c, "] mask ", mask);
        const auto x = Randoms(k.groups, {k.r, k.c}, dtype, 1);
        const auto row = mask & 1 ? Randoms(k.groups, {k.r}, dtype, 2) : std::vector<Tensor>();
        const auto col = mask & 2 ? Randoms(k.groups, {k.c}, dtype, 3) : std::vector<Tensor>();
        const auto out = Randoms(k.groups, {k.r, k.c}, dtype, 4);  // overwritten
        ops::ScaleRowsColsGroup(ctx, ops::MakeMatrixGroup(ctx, x), VectorGroup(ctx, row),
                                VectorGroup(ctx, col), ops::MakeMatrixGroup(ctx, out));
        for (int64_t g = 0; g < k.groups; ++g) {
          Tensor ref = Tensor::Empty({k.r, k.c}, dtype);
          ops::ScaleRowsCols(ctx, x[g], At(row, g), At(col, g), ref);
          EXPECT_TRUE(SameBits(out[g], ref)) << what << " group " << g;
        }
      }
    }
  }
}

TEST(ScaleRowsColsGroupTest, ForwardRoundedToBf16EqualsFoldThenCopy) {
  const ExecContext ctx;
  const Case k{4, 9, 13};
  const auto x = Randoms(k.groups, {k.r, k.c}, DType::kF32, 1);
  const auto row = Randoms(k.groups, {k.r}, DType::kF32, 2);
  const auto col = Randoms(k.groups, {k.c}, DType::kF32, 3);
  const auto out = Randoms(k.groups, {k.r, k.c}, DType::kBF16, 4);
  ops::ScaleRowsColsGroup(ctx, ops::MakeMatrixGroup(ctx, x), VectorGroup(ctx, row),
                          VectorGroup(ctx, col), ops::MakeMatrixGroup(ctx, out));
  for (int64_t g = 0; g < k.groups; ++g) {
    Tensor folded = Tensor::Empty({k.r, k.c}, DType::kF32);
    ops::ScaleRowsCols(ctx, x[g], row[g], col[g], folded);
    Tensor ref = Tensor::Empty({k.r, k.c}, DType::kBF16);
    ops::Copy(ctx, folded, ref);
    EXPECT_TRUE(SameBits(out[g], ref)) << "group " << g;
  }
}

TEST(ScaleRowsColsGroupTest, BackwardEqualsOneCallPerGroup) {
  const ExecContext ctx;
  for (DType dtype : kFloats) {
    for (const Case& k : kCases) {
      // bits 0-1: row, col defined; bits 2-4: d_x, d_row, d_col requested.
      for (int mask : {0b11111, 0b11100, 0b00111, 0b10011, 0b01011, 0b11001, 0b10110}) {
        const std::string what =
            absl::StrCat(DTypeName(dtype), " ", k.groups, " x [", k.r, ", ", k.c, "] mask ", mask);
        const int64_t n = k.groups;
        const std::vector<Tensor> none;
        const auto x = Randoms(n, {k.r, k.c}, dtype, 1);
        const auto row = mask & 1 ? Randoms(n, {k.r}, dtype, 2) : none;
        const auto col = mask & 2 ? Randoms(n, {k.c}, dtype, 3) : none;
        const auto d_out = Randoms(n, {k.r, k.c}, dtype, 4);
        const auto d_x = mask & 4 ? Randoms(n, {k.r, k.c}, dtype, 5) : none;  // overwritten
        const auto d_row = mask & 8 ? Randoms(n, {k.r}, dtype, 6) : none;     // accumulated
        const auto d_col = mask & 16 ? Randoms(n, {k.c}, dtype, 7) : none;
        const auto d_row_ref = Clones(d_row), d_col_ref = Clones(d_col);
        ops::ScaleRowsColsBackwardGroup(ctx, ops::MakeMatrixGroup(ctx, x), VectorGroup(ctx, row),
                                        VectorGroup(ctx, col), ops::MakeMatrixGroup(ctx, d_out),
                                        ops::MakeMatrixGroup(ctx, d_x), VectorGroup(ctx, d_row),
                                        VectorGroup(ctx, d_col));
        for (int64_t g = 0; g < n; ++g) {
          Tensor d_x_ref = d_x.empty() ? Tensor() : Tensor::Empty({k.r, k.c}, dtype);
          ops::ScaleRowsColsBackward(ctx, x[g], At(row, g), At(col, g), d_out[g], d_x_ref,
                                     At(d_row_ref, g), At(d_col_ref, g));
          if (!d_x.empty()) {
            EXPECT_TRUE(SameBits(d_x[g], d_x_ref)) << "d_x " << what << " " << g;
          }
          if (!d_row.empty()) {
            EXPECT_TRUE(SameBits(d_row[g], d_row_ref[g])) << "d_row " << what << " " << g;
          }
          if (!d_col.empty()) {
            EXPECT_TRUE(SameBits(d_col[g], d_col_ref[g])) << "d_col " << what << " " << g;
          }
        }
      }
    }
  }
}

// The fold's unfold: d_x is d_out itself (W's gradient turned into dW in
// place), the vectors' sums read it first.
TEST(ScaleRowsColsGroupTest, BackwardInPlaceEqualsOneCallPerGroup) {
  const ExecContext ctx;
  const Case k{3, 21, 10};
  const auto x = Randoms(k.groups, {k.r, k.c}, DType::kF32, 1);
  const auto row = Randoms(k.groups, {k.r}, DType::kF32, 2);
  const auto col = Randoms(k.groups, {k.c}, DType::kF32, 3);
  const auto grad = Randoms(k.groups, {k.r, k.c}, DType::kF32, 4);
  const auto d_row = Randoms(k.groups, {k.r}, DType::kF32, 5);
  const auto d_col = Randoms(k.groups, {k.c}, DType::kF32, 6);
  const auto grad_ref = Clones(grad), d_row_ref = Clones(d_row), d_col_ref = Clones(d_col);
  const ops::MatrixGroup grads = ops::MakeMatrixGroup(ctx, grad);
  ops::ScaleRowsColsBackwardGroup(ctx, ops::MakeMatrixGroup(ctx, x), VectorGroup(ctx, row),
                                  VectorGroup(ctx, col), grads, grads, VectorGroup(ctx, d_row),
                                  VectorGroup(ctx, d_col));
  for (int64_t g = 0; g < k.groups; ++g) {
    ops::ScaleRowsColsBackward(ctx, x[g], row[g], col[g], grad_ref[g], grad_ref[g], d_row_ref[g],
                               d_col_ref[g]);
    EXPECT_TRUE(SameBits(grad[g], grad_ref[g])) << g;
    EXPECT_TRUE(SameBits(d_row[g], d_row_ref[g])) << g;
    EXPECT_TRUE(SameBits(d_col[g], d_col_ref[g])) << g;
  }
}

// One d_col for every group (a γ shared by the maps): the groups' sums add
// into it in group order, the bits of one call per group in that order.
TEST(ScaleRowsColsGroupTest, BackwardSharedColEqualsOneCallPerGroupInOrder) {
  const ExecContext ctx;
  for (DType dtype : kFloats) {
    const Case k{4, 19, 11};
    const auto x = Randoms(k.groups, {k.r, k.c}, dtype, 1);
    const auto row = Randoms(k.groups, {k.r}, dtype, 2);
    const Tensor col = Randoms(1, {k.c}, dtype, 3)[0];
    const auto grad = Randoms(k.groups, {k.r, k.c}, dtype, 4);
    const auto d_row = Randoms(k.groups, {k.r}, dtype, 5);
    const Tensor d_col = Randoms(1, {k.c}, dtype, 6)[0];
    const auto grad_ref = Clones(grad), d_row_ref = Clones(d_row);
    const Tensor d_col_ref = d_col.Clone();
    const ops::MatrixGroup grads = ops::MakeMatrixGroup(ctx, grad);
    const std::vector<Tensor> cols(k.groups, col), d_cols(k.groups, d_col);
    ops::ScaleRowsColsBackwardGroup(ctx, ops::MakeMatrixGroup(ctx, x), VectorGroup(ctx, row),
                                    VectorGroup(ctx, cols), grads, grads, VectorGroup(ctx, d_row),
                                    VectorGroup(ctx, d_cols));
    for (int64_t g = 0; g < k.groups; ++g) {
      ops::ScaleRowsColsBackward(ctx, x[g], row[g], col, grad_ref[g], grad_ref[g], d_row_ref[g],
                                 d_col_ref);
      EXPECT_TRUE(SameBits(grad[g], grad_ref[g])) << DTypeName(dtype) << " " << g;
      EXPECT_TRUE(SameBits(d_row[g], d_row_ref[g])) << DTypeName(dtype) << " " << g;
    }
    EXPECT_TRUE(SameBits(d_col, d_col_ref)) << DTypeName(dtype);
  }
}

// A d_col shared by some groups but not all is refused (which order?).
TEST(ScaleRowsColsGroupDeathTest, BackwardPartlySharedColFails) {
  const ExecContext ctx;
  const Case k{3, 4, 5};
  const auto x = Randoms(k.groups, {k.r, k.c}, DType::kF32, 1);
  const auto d_out = Randoms(k.groups, {k.r, k.c}, DType::kF32, 2);
  const auto own = Randoms(2, {k.c}, DType::kF32, 3);
  const std::vector<Tensor> d_cols = {own[0], own[1], own[0]};
  EXPECT_DEATH(ops::ScaleRowsColsBackwardGroup(ctx, ops::MakeMatrixGroup(ctx, x), {}, {},
                                               ops::MakeMatrixGroup(ctx, d_out), {}, {},
                                               VectorGroup(ctx, d_cols)),
               "share a vector");
}

}  // namespace
}  // namespace scalemoe
