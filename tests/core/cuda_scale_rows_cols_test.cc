// GPU test: ScaleRowsCols and ScaleRowsColsBackward against the CPU
// reference on fresh Philox data: 2-D and batched, row and/or col
// undefined, any subset of d_x, d_row, d_col requested, a single row or
// column, R large enough for many chunks of d_col's sum, f32/f64/bf16, and
// the forward's f32 row/col with bf16 x (the CPU's bits). d_x starts as NaN
// (overwritten), d_row and d_col random (accumulated). The backward's sums
// give the same bits on every run, and d_x in place of d_out gives what
// separate outputs give.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/core/cuda_test_util.h"

namespace scalemoe {
namespace {

using testing::CudaOpTest;
using testing::ExpectParity;
using testing::ParityTolerance;
using testing::RandomHost;
using testing::ReferenceInput;

struct Dims {
  int64_t b;  // 0: 2-D
  int64_t r, c;
};

const std::vector<Dims> kDims = {
    {0, 1, 768},   // one row
    {0, 37, 5},
    {0, 64, 64},
    {0, 300, 1},   // one column
    {3, 17, 24},
    {2, 1, 1},
    {0, 5000, 40},  // d_col sums 79 chunks of 64 rows
    {4, 700, 33},
    {0, 40000, 64},  // skinny (DNP's [N·H, 64]): 625 chunks per column's warp
    {2, 9000, 3},    // 141 chunks, columns fewer than a warp
};

constexpr DType kFloats[] = {DType::kF32, DType::kF64, DType::kBF16};

Shape XShape(const Dims& d) { return d.b > 0 ? Shape{d.b, d.r, d.c} : Shape{d.r, d.c}; }
Shape RowShape(const Dims& d) { return d.b > 0 ? Shape{d.b, d.r} : Shape{d.r}; }
Shape ColShape(const Dims& d) { return d.b > 0 ? Shape{d.b, d.c} : Shape{d.c}; }

class CudaScaleRowsColsTest : public CudaOpTest {};

TEST_F(CudaScaleRowsColsTest, ForwardMatchesCpu) {
  uint64_t seed = 1;
  for (DType dtype : kFloats) {
    for (const Dims& d : kDims) {
      for (int mask = 0; mask < 4; ++mask) {  // bit 0: row defined, bit 1: col defined
        ++seed;
        const Tensor x = RandomHost(XShape(d), dtype, seed, 1);
        const Tensor row = mask & 1 ? RandomHost(RowShape(d), dtype, seed, 2) : Tensor();
        const Tensor col = mask & 2 ? RandomHost(ColShape(d), dtype, seed, 3) : Tensor();
        Tensor out = Poisoned(XShape(d), dtype);
        ops::ScaleRowsCols(ctx_, Dev(x), Dev(row), Dev(col), out);
        Tensor ref = Tensor::Empty(XShape(d), ReferenceInput(x).dtype());
        ops::ScaleRowsCols(cpu_, ReferenceInput(x), ReferenceInput(row), ReferenceInput(col), ref);
        ExpectParity(Host(out), ref, ParityTolerance(dtype),
                     absl::StrCat(DTypeName(dtype), " x ", ShapeString(XShape(d)), " mask ", mask));
      }
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

// bf16 x with f32 row and/or col (routing weights on bf16 rows): the CPU's
// products in the same order, rounded once on store, so the same bits as the
// CPU's mixed-dtype path (a bf16 rounding of a weight would change them);
// also in place (out = x, TokenPermuter::UnpermuteBackward's call), on the
// packed and the element-at-a-time paths.
TEST_F(CudaScaleRowsColsTest, ForwardWithF32VectorsForBf16XIsTheCpuBits) {
  const DType bf = DType::kBF16, f32 = DType::kF32;
  // row's and col's dtypes (nullopt: undefined), f32 in one of them at least.
  using Vector = std::optional<DType>;
  const std::pair<Vector, Vector> kVectors[] = {
      {f32, std::nullopt}, {std::nullopt, f32}, {f32, f32}, {f32, bf}, {bf, f32}};
  const auto name = [](Vector v) { return v ? DTypeName(*v) : "undefined"; };
  uint64_t seed = 7000;
  for (const Dims& d : kDims) {
    for (const auto& [row_dtype, col_dtype] : kVectors) {
      ++seed;
      const std::string what = absl::StrCat("bf16 x ", ShapeString(XShape(d)), " row ",
                                            name(row_dtype), " col ", name(col_dtype));
      const Tensor x = RandomHost(XShape(d), bf, seed, 1);
      const Tensor row =
          row_dtype ? RandomHost(RowShape(d), *row_dtype, seed, 2, 0.3, 0.5) : Tensor();
      const Tensor col =
          col_dtype ? RandomHost(ColShape(d), *col_dtype, seed, 3, 0.3, 1.0) : Tensor();
      Tensor out = Poisoned(XShape(d), bf);
      ops::ScaleRowsCols(ctx_, Dev(x), Dev(row), Dev(col), out);
      Tensor in_place = Dev(x);
      ops::ScaleRowsCols(ctx_, in_place, Dev(row), Dev(col), in_place);
      Tensor ref = Tensor::Empty(XShape(d), bf);
      ops::ScaleRowsCols(cpu_, x, row, col, ref);
      const Status st = ctx_.status();
      ASSERT_TRUE(st.ok()) << st;
      const Tensor got = Host(out);
      ExpectParity(got, ref, ParityTolerance(bf), what);  // names the worst element
      EXPECT_TRUE(testing::BitwiseEqual(got, ref)) << what;
      EXPECT_TRUE(testing::BitwiseEqual(Host(in_place), ref)) << "in place, " << what;
    }
  }
}

TEST_F(CudaScaleRowsColsTest, BackwardMatchesCpu) {
  uint64_t seed = 1000;
  for (DType dtype : kFloats) {
    for (const Dims& d : kDims) {
      // bits 0-1: row, col defined; bits 2-4: d_x, d_row, d_col requested.
      for (int mask : {0b11111, 0b11100, 0b00111, 0b10011, 0b01011, 0b11001, 0b10110}) {
        ++seed;
        const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(XShape(d)),
                                              " mask ", mask);
        const Tensor x = RandomHost(XShape(d), dtype, seed, 1);
        const Tensor row = mask & 1 ? RandomHost(RowShape(d), dtype, seed, 2) : Tensor();
        const Tensor col = mask & 2 ? RandomHost(ColShape(d), dtype, seed, 3) : Tensor();
        const Tensor d_out = RandomHost(XShape(d), dtype, seed, 4);
        const bool want_dx = mask & 4, want_drow = mask & 8, want_dcol = mask & 16;
        const Tensor d_row = want_drow ? RandomHost(RowShape(d), dtype, seed, 5) : Tensor();
        const Tensor d_col = want_dcol ? RandomHost(ColShape(d), dtype, seed, 6) : Tensor();

        Tensor d_x_dev = want_dx ? Poisoned(XShape(d), dtype) : Tensor();
        Tensor d_row_dev = Dev(d_row), d_col_dev = Dev(d_col);
        ops::ScaleRowsColsBackward(ctx_, Dev(x), Dev(row), Dev(col), Dev(d_out), d_x_dev,
                                   d_row_dev, d_col_dev);
        const Status st = ctx_.status();
        ASSERT_TRUE(st.ok()) << st;

        const DType ref_dtype = ReferenceInput(x).dtype();
        Tensor d_x_ref = want_dx ? Tensor::Empty(XShape(d), ref_dtype) : Tensor();
        Tensor d_row_ref = want_drow ? ReferenceInput(d_row).Clone() : Tensor();
        Tensor d_col_ref = want_dcol ? ReferenceInput(d_col).Clone() : Tensor();
        ops::ScaleRowsColsBackward(cpu_, ReferenceInput(x), ReferenceInput(row),
                                   ReferenceInput(col), ReferenceInput(d_out), d_x_ref, d_row_ref,
                                   d_col_ref);
        const double tol = ParityTolerance(dtype);
        if (want_dx) ExpectParity(Host(d_x_dev), d_x_ref, tol, "d_x " + what);
        if (want_drow) ExpectParity(Host(d_row_dev), d_row_ref, tol, "d_row " + what);
        if (want_dcol) ExpectParity(Host(d_col_dev), d_col_ref, tol, "d_col " + what);
      }
    }
  }
}

// d_x in place of d_out (the unfold of a folded weight's gradient), with
// d_row and d_col wanted too: both sums read d_out before it is overwritten,
// and d_x is what a separate d_x gives, bit for bit.
TEST_F(CudaScaleRowsColsTest, BackwardInPlaceEqualsSeparateOutputs) {
  uint64_t seed = 5000;
  for (DType dtype : kFloats) {
    for (const Dims& d : {Dims{0, 5000, 40}, Dims{3, 17, 24}, Dims{0, 40000, 64}}) {
      ++seed;
      const Tensor x = Dev(RandomHost(XShape(d), dtype, seed, 1));
      const Tensor row = Dev(RandomHost(RowShape(d), dtype, seed, 2));
      const Tensor col = Dev(RandomHost(ColShape(d), dtype, seed, 3));
      const Tensor d_out_host = RandomHost(XShape(d), dtype, seed, 4);
      const Tensor d_row0 = RandomHost(RowShape(d), dtype, seed, 5);
      const Tensor d_col0 = RandomHost(ColShape(d), dtype, seed, 6);
      const std::string what = absl::StrCat(DTypeName(dtype), " x ", ShapeString(XShape(d)));

      Tensor d_x = Poisoned(XShape(d), dtype), d_row = Dev(d_row0), d_col = Dev(d_col0);
      ops::ScaleRowsColsBackward(ctx_, x, row, col, Dev(d_out_host), d_x, d_row, d_col);
      Tensor in_place = Dev(d_out_host), d_row_ip = Dev(d_row0), d_col_ip = Dev(d_col0);
      ops::ScaleRowsColsBackward(ctx_, x, row, col, in_place, in_place, d_row_ip, d_col_ip);
      const Status st = ctx_.status();
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_TRUE(testing::BitwiseEqual(Host(in_place), Host(d_x))) << "d_x " << what;
      EXPECT_TRUE(testing::BitwiseEqual(Host(d_row_ip), Host(d_row))) << "d_row " << what;
      EXPECT_TRUE(testing::BitwiseEqual(Host(d_col_ip), Host(d_col))) << "d_col " << what;
    }
  }
}

TEST_F(CudaScaleRowsColsTest, BackwardSumsAreTheSameBitsEveryRun) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const Shape xs{2, 4099, 96}, rs{2, 4099}, cs{2, 96};
    const Tensor x = Dev(RandomHost(xs, dtype, 77, 1));
    const Tensor row = Dev(RandomHost(rs, dtype, 77, 2));
    const Tensor col = Dev(RandomHost(cs, dtype, 77, 3));
    const Tensor d_out = Dev(RandomHost(xs, dtype, 77, 4));
    std::vector<Tensor> d_rows, d_cols;
    for (int run = 0; run < 3; ++run) {
      Tensor d_row = ctx_.Zeros(rs, dtype);
      Tensor d_col = ctx_.Zeros(cs, dtype);
      ops::ScaleRowsColsBackward(ctx_, x, row, col, d_out, Tensor(), d_row, d_col);
      d_rows.push_back(Host(d_row));
      d_cols.push_back(Host(d_col));
    }
    for (int run = 1; run < 3; ++run) {
      EXPECT_TRUE(testing::BitwiseEqual(d_rows[run], d_rows[0])) << DTypeName(dtype);
      EXPECT_TRUE(testing::BitwiseEqual(d_cols[run], d_cols[0])) << DTypeName(dtype);
    }
  }
  const Status st = ctx_.status();
  EXPECT_TRUE(st.ok()) << st;
}

}  // namespace
}  // namespace scalemoe
