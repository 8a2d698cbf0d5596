// The CPU reference ops on bf16 tensors: computed in f32 (f32 accumulation),
// rounded to nearest even on store. Each is checked against f64 math on the
// same (bf16-exact) inputs: within one rounding of the result (2^-8
// relative, plus f32 accumulation error), and where the result stays f32,
// within f32 accumulation error. These paths are the reference of the CUDA
// bf16 ops (tests/core/cuda_*_test.cc).
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"
#include "tests/testing/same_bits.h"

namespace scalemoe {
namespace {

using testing::RandomTensor;
using testing::SameBits;

constexpr double kBf16Rounding = 1.0 / 256;  // 2^-8 >= half an ulp, relative

Tensor ToF64(const Tensor& t) {
  Tensor out = Tensor::Empty(t.shape(), DType::kF64);
  out.CopyFrom(t);
  return out;
}

double MaxAbs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.At(i)));
  return m;
}

// Every element of `got` within rel * |ref| + abs_frac * max|ref| of `ref`.
void ExpectClose(const Tensor& got, const Tensor& ref, double rel, double abs_frac,
                 const std::string& what) {
  ASSERT_EQ(got.numel(), ref.numel()) << what;
  const double scale = MaxAbs(ref);
  int reported = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.At(i), r = ref.At(i);
    const bool ok = std::isfinite(g) && std::abs(g - r) <= rel * std::abs(r) + abs_frac * scale;
    if (!ok && reported++ < 5) ADD_FAILURE() << what << " element " << i << ": " << g << " vs " << r;
  }
}

TEST(Bf16OpsTest, CopyRoundsToNearestEvenBothWays) {
  const ExecContext ctx;
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even is 1. 1 + 3·2^-8 ties
  // to 1 + 2^-6. 1 + 2^-8 + 2^-20 is above the tie.
  const std::vector<double> values = {1 + 1.0 / 256, 1 + 3.0 / 256, 1 + 1.0 / 256 + 1.0 / (1 << 20),
                                      -2.5, 0.0, 1e30};
  const std::vector<double> want = {1, 1 + 1.0 / 64, 1 + 1.0 / 128, -2.5, 0.0,
                                    static_cast<float>(bf16(1e30f))};
  for (DType from : {DType::kF32, DType::kF64}) {
    Tensor x = Tensor::FromVector({6}, values, from);
    Tensor y = Tensor::Empty({6}, DType::kBF16);
    ops::Copy(ctx, x, y);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(y.At(i), want[i]) << DTypeName(from) << " " << i;
    Tensor back = Tensor::Empty({6}, from);
    ops::Copy(ctx, y, back);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(back.At(i), want[i]) << DTypeName(from) << " " << i;
  }
}

TEST(Bf16OpsTest, CopyEqualsCopyFromForEveryFloatPair) {
  const ExecContext ctx;
  for (DType from : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (DType to : {DType::kF32, DType::kF64, DType::kBF16}) {
      const Tensor x = RandomTensor({257}, 20, 3.0, from);
      Tensor fast = Tensor::Empty({257}, to);  // ops::Copy's contiguous loop
      Tensor slow = Tensor::Empty({257}, to);  // CopyFrom's element-wise path
      ops::Copy(ctx, x, fast);
      slow.CopyFrom(x);
      for (int64_t i = 0; i < 257; ++i) {
        ASSERT_EQ(fast.At(i), slow.At(i)) << DTypeName(from) << "->" << DTypeName(to) << " " << i;
      }
    }
  }
}

TEST(Bf16OpsTest, GemmBf16IntoF32AccumulatesInF32) {
  const ExecContext ctx;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const int64_t m = 7, n = 5, k = 37;
      Tensor a = RandomTensor(ta ? Shape{3, k, m} : Shape{3, m, k}, 1, 1.0, DType::kBF16);
      Tensor b = RandomTensor(tb ? Shape{n, k} : Shape{k, n}, 2, 1.0, DType::kBF16);  // shared
      Tensor c = RandomTensor({3, m, n}, 3, 1.0, DType::kF32);
      Tensor ref = ToF64(c);
      const ops::GemmOptions o{ta ? ops::Trans::kYes : ops::Trans::kNo,
                               tb ? ops::Trans::kYes : ops::Trans::kNo, 0.5, 1.0};
      ops::Gemm(ctx, ToF64(a), ToF64(b), ref, o);
      ops::Gemm(ctx, a, b, c, o);
      ExpectClose(c, ref, 0, 1e-6, "gemm bf16 -> f32");
    }
  }
}

TEST(Bf16OpsTest, GemmBf16IntoBf16RoundsOnce) {
  const ExecContext ctx;
  Tensor a = RandomTensor({9, 19}, 4, 1.0, DType::kBF16);
  Tensor b = RandomTensor({11, 19}, 5, 1.0, DType::kBF16);
  for (double beta : {0.0, -1.5}) {
    Tensor c = RandomTensor({9, 11}, 6, 1.0, DType::kBF16);
    if (beta == 0.0) c.Fill(std::numeric_limits<double>::quiet_NaN());  // never read
    Tensor ref = ToF64(c);
    const ops::GemmOptions o{.trans_b = ops::Trans::kYes, .alpha = 2.0, .beta = beta};
    ops::Gemm(ctx, ToF64(a), ToF64(b), ref, o);
    ops::Gemm(ctx, a, b, c, o);
    ExpectClose(c, ref, kBf16Rounding, 1e-6, "gemm bf16 -> bf16");
  }
}

TEST(Bf16OpsTest, AxpyScaleAndSumComputeInF32) {
  const ExecContext ctx;
  Tensor x = RandomTensor({1000}, 7, 1.0, DType::kBF16);
  Tensor y = RandomTensor({1000}, 8, 1.0, DType::kBF16);
  Tensor ref = ToF64(y);
  ops::Axpy(ctx, -0.75, ToF64(x), ref);
  ops::Axpy(ctx, -0.75, x, y);
  ExpectClose(y, ref, kBf16Rounding, 1e-6, "axpy");
  ops::Scale(ctx, 3.0, ref);
  ops::Scale(ctx, 3.0, y);
  ExpectClose(y, ref, 2 * kBf16Rounding, 1e-6, "scale");

  Tensor sum64 = Tensor::Empty({1}, DType::kF64);
  Tensor sum32 = Tensor::Empty({1}, DType::kF32);
  ops::Sum(ctx, ToF64(x), sum64);
  const double want = sum64.At(0);
  ops::Sum(ctx, x, sum64);
  ops::Sum(ctx, x, sum32);
  EXPECT_EQ(sum64.At(0), want);  // bf16 values are exact in f64
  EXPECT_EQ(sum32.At(0), static_cast<float>(want));
}

TEST(Bf16OpsTest, ScaleRowsColsAndBackward) {
  const ExecContext ctx;
  const int64_t b = 2, r = 300, c = 24;  // d_col sums 300 rows
  Tensor x = RandomTensor({b, r, c}, 9, 1.0, DType::kBF16);
  Tensor row = RandomTensor({b, r}, 10, 1.0, DType::kBF16);
  Tensor col = RandomTensor({b, c}, 11, 1.0, DType::kBF16);
  Tensor d_out = RandomTensor({b, r, c}, 12, 1.0, DType::kBF16);
  Tensor out = Tensor::Empty(x.shape(), DType::kBF16);
  Tensor out_ref = Tensor::Empty(x.shape(), DType::kF64);
  ops::ScaleRowsCols(ctx, ToF64(x), ToF64(row), ToF64(col), out_ref);
  ops::ScaleRowsCols(ctx, x, row, col, out);
  ExpectClose(out, out_ref, kBf16Rounding, 1e-6, "forward");

  Tensor d_x = Tensor::Empty(x.shape(), DType::kBF16);
  Tensor d_row = RandomTensor({b, r}, 13, 1.0, DType::kBF16);
  Tensor d_col = RandomTensor({b, c}, 14, 1.0, DType::kBF16);
  Tensor d_x_ref = Tensor::Empty(x.shape(), DType::kF64);
  Tensor d_row_ref = ToF64(d_row);
  Tensor d_col_ref = ToF64(d_col);
  ops::ScaleRowsColsBackward(ctx, ToF64(x), ToF64(row), ToF64(col), ToF64(d_out), d_x_ref,
                             d_row_ref, d_col_ref);
  ops::ScaleRowsColsBackward(ctx, x, row, col, d_out, d_x, d_row, d_col);
  ExpectClose(d_x, d_x_ref, kBf16Rounding, 1e-6, "d_x");
  ExpectClose(d_row, d_row_ref, kBf16Rounding, 1e-5, "d_row");
  ExpectClose(d_col, d_col_ref, kBf16Rounding, 1e-5, "d_col");
}

TEST(Bf16OpsTest, SwiGluAndBackward) {
  const ExecContext ctx;
  Tensor g = RandomTensor({31, 17}, 15, 2.0, DType::kBF16);
  Tensor u = RandomTensor({31, 17}, 16, 1.0, DType::kBF16);
  Tensor d_h = RandomTensor({31, 17}, 17, 1.0, DType::kBF16);
  Tensor h = Tensor::Empty(g.shape(), DType::kBF16);
  Tensor h_ref = Tensor::Empty(g.shape(), DType::kF64);
  ops::SwiGlu(ctx, ToF64(g), ToF64(u), h_ref);
  ops::SwiGlu(ctx, g, u, h);
  ExpectClose(h, h_ref, kBf16Rounding, 1e-6, "h");
  Tensor d_g = Tensor::Empty(g.shape(), DType::kBF16);
  Tensor d_u = Tensor::Empty(g.shape(), DType::kBF16);
  Tensor d_g_ref = Tensor::Empty(g.shape(), DType::kF64);
  Tensor d_u_ref = Tensor::Empty(g.shape(), DType::kF64);
  ops::SwiGluBackward(ctx, ToF64(g), ToF64(u), ToF64(d_h), d_g_ref, d_u_ref);
  ops::SwiGluBackward(ctx, g, u, d_h, d_g, d_u);
  ExpectClose(d_g, d_g_ref, kBf16Rounding, 1e-6, "d_gate");
  ExpectClose(d_u, d_u_ref, kBf16Rounding, 1e-6, "d_up");
}

// ---------------------------------------------------------------- bf16 activations, f32 statistics
// The ops the bf16 residual stream meets (train.precision BF16): on
// bf16-exact inputs each gives the f32 op's result on the same values,
// rounded to bf16 once where the contract stores bf16 (bit for bit: the
// CPU's bf16 path is its f32 arithmetic), and f64 math within a rounding.

// t converted to dtype by ops::Copy (to bf16: rounded to nearest even).
Tensor As(const Tensor& t, DType dtype) {
  if (!t.defined()) return t;
  Tensor out = Tensor::Empty(t.shape(), dtype);
  ops::Copy(ExecContext(), t, out);
  return out;
}

int64_t RowsOf(const Shape& shape) { return NumElements(shape) / shape.back(); }

const std::vector<Shape> kNormShapes = {{1, 64}, {5, 33}, {3, 4, 128}, {17, 1000}};

TEST(Bf16OpsTest, RmsNormalizeIsTheF32PathRoundedOnce) {
  const ExecContext ctx;
  uint64_t stream = 30;
  for (const Shape& shape : kNormShapes) {
    const std::string what = ShapeString(shape);
    const Tensor x = RandomTensor(shape, ++stream, 1.5, DType::kBF16, 0.3);
    Tensor n = Tensor::Empty(shape, DType::kBF16);
    Tensor rstd = Tensor::Empty({RowsOf(shape)}, DType::kF32);
    ops::RmsNormalize(ctx, x, 1e-5, n, rstd);
    Tensor n32 = Tensor::Empty(shape, DType::kF32);
    Tensor rstd32 = Tensor::Empty({RowsOf(shape)}, DType::kF32);
    ops::RmsNormalize(ctx, As(x, DType::kF32), 1e-5, n32, rstd32);
    EXPECT_TRUE(SameBits(rstd, rstd32)) << what;  // the statistic stays f32
    EXPECT_TRUE(SameBits(n, As(n32, DType::kBF16))) << what;

    Tensor n64 = Tensor::Empty(shape, DType::kF64);
    Tensor rstd64 = Tensor::Empty({RowsOf(shape)}, DType::kF64);
    ops::RmsNormalize(ctx, ToF64(x), 1e-5, n64, rstd64);
    ExpectClose(n, n64, kBf16Rounding, 1e-6, "n " + what);
    ExpectClose(rstd, rstd64, 1e-6, 0, "rstd " + what);
  }
}

TEST(Bf16OpsTest, RmsNormalizeBackwardIsTheF32PathRoundedOnce) {
  const ExecContext ctx;
  uint64_t stream = 40;
  for (const Shape& shape : kNormShapes) {
    const std::string what = ShapeString(shape);
    const Tensor n = RandomTensor(shape, ++stream, 1.0, DType::kBF16);
    const Tensor rstd = RandomTensor({RowsOf(shape)}, ++stream, 0.2, DType::kF32, 1.0);
    const Tensor d_n = RandomTensor(shape, ++stream, 1.0, DType::kBF16);
    Tensor d_x = Tensor::Empty(shape, DType::kBF16);
    ops::RmsNormalizeBackward(ctx, n, rstd, d_n, d_x);
    Tensor d_x32 = Tensor::Empty(shape, DType::kF32);
    ops::RmsNormalizeBackward(ctx, As(n, DType::kF32), rstd, As(d_n, DType::kF32), d_x32);
    EXPECT_TRUE(SameBits(d_x, As(d_x32, DType::kBF16))) << what;

    Tensor d_x64 = Tensor::Empty(shape, DType::kF64);
    ops::RmsNormalizeBackward(ctx, ToF64(n), ToF64(rstd), ToF64(d_n), d_x64);
    ExpectClose(d_x, d_x64, kBf16Rounding, 1e-6, "d_x " + what);
  }
}

// The sum x + residual is rounded to bf16 (and stored in x) before it is
// squared: the GPU kernel's rounding point.
TEST(Bf16OpsTest, AddRmsNormalizeRoundsTheSumBeforeTheNorm) {
  const ExecContext ctx;
  uint64_t stream = 50;
  for (const Shape& shape : kNormShapes) {
    const std::string what = ShapeString(shape);
    const Tensor x = RandomTensor(shape, ++stream, 1.5, DType::kBF16, 0.3);
    const Tensor residual = RandomTensor(shape, ++stream, 2.0, DType::kBF16);
    Tensor sum = Tensor::Empty(shape, DType::kBF16);  // the f32 add, rounded once
    for (int64_t i = 0; i < sum.numel(); ++i) {
      sum.data<bf16>()[i] = bf16(static_cast<float>(x.data<bf16>()[i]) +
                                 static_cast<float>(residual.data<bf16>()[i]));
    }
    Tensor x_fused = x.Clone();
    Tensor n = Tensor::Empty(shape, DType::kBF16);
    Tensor rstd = Tensor::Empty({RowsOf(shape)}, DType::kF32);
    ops::AddRmsNormalize(ctx, residual, x_fused, 1e-5, n, rstd);
    EXPECT_TRUE(SameBits(x_fused, sum)) << what;

    Tensor n32 = Tensor::Empty(shape, DType::kF32);
    Tensor rstd32 = Tensor::Empty({RowsOf(shape)}, DType::kF32);
    ops::RmsNormalize(ctx, As(sum, DType::kF32), 1e-5, n32, rstd32);
    EXPECT_TRUE(SameBits(rstd, rstd32)) << what;
    EXPECT_TRUE(SameBits(n, As(n32, DType::kBF16))) << what;

    // The norm of the unrounded f32 sum has other statistics: the rounding
    // point is observable, and this test would see it move.
    Tensor unrounded = As(x, DType::kF32);
    ops::Axpy(ctx, 1.0, As(residual, DType::kF32), unrounded);
    ops::RmsNormalize(ctx, unrounded, 1e-5, n32, rstd32);
    EXPECT_FALSE(SameBits(rstd, rstd32)) << what;
  }
}

// The backward's result is rounded to bf16 before d_res is added: the GPU
// kernel's rounding point, and RmsNormalizeBackward then Axpy's.
TEST(Bf16OpsTest, RmsNormalizeBackwardAddRoundsTheBackwardBeforeTheAdd) {
  const ExecContext ctx;
  uint64_t stream = 60;
  for (const Shape& shape : kNormShapes) {
    const std::string what = ShapeString(shape);
    const Tensor n = RandomTensor(shape, ++stream, 1.0, DType::kBF16);
    const Tensor rstd = RandomTensor({RowsOf(shape)}, ++stream, 0.2, DType::kF32, 1.0);
    const Tensor d_n = RandomTensor(shape, ++stream, 1.0, DType::kBF16);
    const Tensor d_res = RandomTensor(shape, ++stream, 0.5, DType::kBF16);
    Tensor d_x = Tensor::Empty(shape, DType::kBF16);
    ops::RmsNormalizeBackwardAdd(ctx, n, rstd, d_n, d_res, d_x);

    Tensor back32 = Tensor::Empty(shape, DType::kF32);
    ops::RmsNormalizeBackward(ctx, As(n, DType::kF32), rstd, As(d_n, DType::kF32), back32);
    const Tensor back = As(back32, DType::kBF16);
    Tensor want = Tensor::Empty(shape, DType::kBF16);
    Tensor unrounded = Tensor::Empty(shape, DType::kBF16);  // the add on the f32 backward
    for (int64_t i = 0; i < want.numel(); ++i) {
      const float r = static_cast<float>(d_res.data<bf16>()[i]);
      want.data<bf16>()[i] = bf16(static_cast<float>(back.data<bf16>()[i]) + r);
      unrounded.data<bf16>()[i] = bf16(back32.data<float>()[i] + r);
    }
    EXPECT_TRUE(SameBits(d_x, want)) << what;
    if (NumElements(shape) >= 128) {
      EXPECT_FALSE(SameBits(d_x, unrounded)) << what;
    }

    Tensor d_x64 = Tensor::Empty(shape, DType::kF64);
    ops::RmsNormalizeBackwardAdd(ctx, ToF64(n), ToF64(rstd), ToF64(d_n), ToF64(d_res), d_x64);
    // Two roundings: the backward's (relative to it, not to the sum) and the sum's.
    ExpectClose(d_x, d_x64, kBf16Rounding, kBf16Rounding, "d_x " + what);
  }
}

TEST(Bf16OpsDeathTest, RmsNormalizeOfBf16RowsWantsAnF32Rstd) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({4, 8}, 80, 1.0, DType::kBF16);
  EXPECT_DEATH(ops::RmsNormalize(ctx, x, 1e-5, x.Clone(), Tensor::Empty({4}, DType::kBF16)),
               "want 4 f32");
}

// slot_row [N, K] i32 into M rows, about one slot in seven dropped (−1).
Tensor SlotRows(int64_t n, int64_t k, int64_t m) {
  Tensor t = Tensor::Empty({n, k}, DType::kI32);
  for (int64_t i = 0; i < n * k; ++i) {
    t.data<int32_t>()[i] = i % 7 == 3 ? -1 : static_cast<int32_t>((i * 37) % m);
  }
  return t;
}

TEST(Bf16OpsTest, CombineSlotsTakesF32WeightsWithBf16Rows) {
  const ExecContext ctx;
  const int64_t n = 40, k = 4, c = 37, m = 120;
  const Tensor slot_row = SlotRows(n, k, m);
  const Tensor rows = RandomTensor({m, c}, 70, 1.0, DType::kBF16);
  const Tensor w = RandomTensor({n, k}, 71, 0.5, DType::kF32, 0.2);  // not bf16-exact
  const Tensor out0 = RandomTensor({n, c}, 72, 1.0, DType::kBF16);
  Tensor out = out0.Clone();
  ops::CombineSlots(ctx, rows, slot_row, w, out);

  Tensor out32 = As(out0, DType::kF32);
  ops::CombineSlots(ctx, As(rows, DType::kF32), slot_row, w, out32);
  EXPECT_TRUE(SameBits(out, As(out32, DType::kBF16)));
  // The weights enter unrounded: bf16-rounded ones give other bits.
  Tensor rounded_w = out0.Clone();
  ops::CombineSlots(ctx, rows, slot_row, As(w, DType::kBF16), rounded_w);
  EXPECT_FALSE(SameBits(out, rounded_w));

  Tensor ref = ToF64(out0);
  ops::CombineSlots(ctx, ToF64(rows), slot_row, ToF64(w), ref);
  ExpectClose(out, ref, kBf16Rounding, 1e-6, "CombineSlots");
}

TEST(Bf16OpsTest, SlotRowDotGivesAnF32OutForBf16Rows) {
  const ExecContext ctx;
  const int64_t n = 40, k = 4, c = 300, m = 120;
  const Tensor slot_row = SlotRows(n, k, m);
  const Tensor x = RandomTensor({n, c}, 73, 1.0, DType::kBF16);
  const Tensor rows = RandomTensor({m, c}, 74, 1.0, DType::kBF16);
  Tensor dot = Tensor::Empty({n, k}, DType::kF32);
  ops::SlotRowDot(ctx, x, slot_row, rows, dot);

  Tensor dot32 = Tensor::Empty({n, k}, DType::kF32);
  ops::SlotRowDot(ctx, As(x, DType::kF32), slot_row, As(rows, DType::kF32), dot32);
  EXPECT_TRUE(SameBits(dot, dot32));
  // Stored without a bf16 rounding: not every dot is a bf16 value.
  EXPECT_FALSE(SameBits(dot, As(As(dot, DType::kBF16), DType::kF32)));
  for (int64_t i = 0; i < n * k; ++i) {
    if (slot_row.data<int32_t>()[i] < 0) {
      EXPECT_EQ(dot.At(i), 0.0) << i;
    }
  }

  Tensor ref = Tensor::Empty({n, k}, DType::kF64);
  ops::SlotRowDot(ctx, ToF64(x), slot_row, ToF64(rows), ref);
  ExpectClose(dot, ref, 0, 1e-6, "SlotRowDot");
}

TEST(Bf16OpsDeathTest, CombineSlotsTakesF32WeightsOnlyWithBf16Rows) {
  const ExecContext ctx;
  const Tensor rows = RandomTensor({4, 8}, 81, 1.0, DType::kF32);
  const Tensor w = RandomTensor({4, 2}, 82, 1.0, DType::kBF16);
  EXPECT_DEATH(ops::CombineSlots(ctx, rows, SlotRows(4, 2, 4), w, rows.Clone()),
               "weights take the rows' dtype, or f32 for bf16 rows");
}

TEST(Bf16OpsDeathTest, SlotRowDotGivesAnF32OutOnlyForBf16X) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({4, 8}, 83, 1.0, DType::kBF16);
  EXPECT_DEATH(ops::SlotRowDot(ctx, x, SlotRows(4, 2, 4), x, Tensor::Empty({4, 2}, DType::kF64)),
               "out takes x's dtype, or f32 for bf16 x");
}

TEST(Bf16OpsTest, ScaleRowsColsTakesF32VectorsWithBf16X) {
  const ExecContext ctx;
  const int64_t b = 2, r = 30, c = 24;
  const Tensor x = RandomTensor({b, r, c}, 75, 1.0, DType::kBF16);
  const Tensor row32 = RandomTensor({b, r}, 76, 0.5, DType::kF32, 0.2);
  const Tensor col32 = RandomTensor({b, c}, 77, 0.5, DType::kF32, 1.0);
  const Tensor row16 = RandomTensor({b, r}, 78, 0.5, DType::kBF16, 0.2);
  const Tensor col16 = RandomTensor({b, c}, 79, 0.5, DType::kBF16, 1.0);
  struct Case {
    Tensor row, col;
    const char* what;
  };
  const Case cases[] = {{row32, Tensor(), "f32 row"},
                        {Tensor(), col32, "f32 col"},
                        {row32, col32, "f32 row and col"},
                        {row32, col16, "f32 row, bf16 col"},
                        {row16, col32, "bf16 row, f32 col"}};
  for (const Case& k : cases) {
    Tensor out = Tensor::Empty(x.shape(), DType::kBF16);
    ops::ScaleRowsCols(ctx, x, k.row, k.col, out);
    Tensor out32 = Tensor::Empty(x.shape(), DType::kF32);
    ops::ScaleRowsCols(ctx, As(x, DType::kF32), As(k.row, DType::kF32), As(k.col, DType::kF32),
                       out32);
    EXPECT_TRUE(SameBits(out, As(out32, DType::kBF16))) << k.what;
    // In place (TokenPermuter::UnpermuteBackward's call): the same bits.
    Tensor in_place = x.Clone();
    ops::ScaleRowsCols(ctx, in_place, k.row, k.col, in_place);
    EXPECT_TRUE(SameBits(in_place, out)) << k.what;
    // The f32 vectors enter unrounded: bf16-rounded ones give other bits.
    Tensor rounded = Tensor::Empty(x.shape(), DType::kBF16);
    ops::ScaleRowsCols(ctx, x, As(k.row, DType::kBF16), As(k.col, DType::kBF16), rounded);
    EXPECT_FALSE(SameBits(out, rounded)) << k.what;

    Tensor ref = Tensor::Empty(x.shape(), DType::kF64);
    ops::ScaleRowsCols(ctx, ToF64(x), As(k.row, DType::kF64), As(k.col, DType::kF64), ref);
    ExpectClose(out, ref, kBf16Rounding, 1e-6, k.what);
  }
}

// The forward only, and only for bf16 x; the backward keeps one dtype.
TEST(Bf16OpsDeathTest, ScaleRowsColsTakesF32VectorsOnlyForBf16X) {
  const ExecContext ctx;
  const Tensor x16 = RandomTensor({4, 8}, 84, 1.0, DType::kBF16);
  const Tensor x32 = As(x16, DType::kF32);
  const Tensor row32 = RandomTensor({4}, 85, 1.0, DType::kF32);
  EXPECT_DEATH(ops::ScaleRowsCols(ctx, x32, As(row32, DType::kBF16), Tensor(), x32.Clone()),
               "row and col take x's dtype, or f32 for bf16 x");
  EXPECT_DEATH(ops::ScaleRowsCols(ctx, x16, As(row32, DType::kF64), Tensor(), x16.Clone()),
               "row and col take x's dtype, or f32 for bf16 x");
  EXPECT_DEATH(
      ops::ScaleRowsColsBackward(ctx, x16, row32, Tensor(), x16, x16.Clone(), Tensor(), Tensor()),
      "row and col take x's dtype\\)");
}

// Each f32 value splits into three bf16 parts that add up to it exactly,
// the largest first, each block repeated `reps` times in its place.
TEST(Bf16PartsTest, SplitBf16PartsAddUpToTheValueExactly) {
  const ExecContext ctx;
  Tensor x = RandomTensor({5, 7}, 301, 0.02, DType::kF32);
  x.data<float>()[0] = 1.0f + 0x1p-23f;  // hi 1, mid 2^-23: a bit below hi's
  x.data<float>()[1] = -3.0f * 0x1p-20f;  // a bf16 itself: mid and lo 0
  x.data<float>()[2] = 0.0f;
  for (int64_t reps : {1, 3}) {
    Tensor out = Tensor::Empty({5, 3 * reps * 7}, DType::kBF16);
    ops::SplitBf16(ctx, x, reps, out);
    int nonzero_lo = 0;
    for (int64_t r = 0; r < 5; ++r) {
      for (int64_t c = 0; c < 7; ++c) {
        const double v = x.At(r * 7 + c);
        double part[3];
        for (int64_t p = 0; p < 3; ++p) {
          part[p] = out.At(r * 3 * reps * 7 + p * reps * 7 + c);
          for (int64_t q = 1; q < reps; ++q) {
            EXPECT_EQ(out.At(r * 3 * reps * 7 + (p * reps + q) * 7 + c), part[p])
                << "repeat " << q << " of part " << p;
          }
        }
        EXPECT_EQ(part[0] + part[1] + part[2], v) << "row " << r << " col " << c;
        EXPECT_EQ(part[0], static_cast<double>(static_cast<float>(bf16(static_cast<float>(v)))));
        EXPECT_LE(std::abs(part[1]), std::abs(part[0]) / 128);
        EXPECT_LE(std::abs(part[2]), std::abs(part[1]) / 128);
        nonzero_lo += part[2] != 0;
      }
    }
    EXPECT_GT(nonzero_lo, 10) << "f32 values of 24 bits need all three parts";
  }
}

// A bf16 GEMM over the parts is the f32 product: every partial product is
// exact, only the f32 accumulation rounds.
TEST(Bf16PartsTest, GemmOverThePartsIsTheF32Product) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({9, 40}, 302, 1.0, DType::kBF16);
  const Tensor w = RandomTensor({6, 40}, 303, 0.02, DType::kF32);
  Tensor w3 = Tensor::Empty({1, 3 * 6 * 40}, DType::kBF16);
  ops::SplitBf16(ctx, w.View({1, 6 * 40}), 1, w3);
  Tensor y3 = Tensor::Empty({9, 18}, DType::kF32);
  ops::Gemm(ctx, x, w3.View({18, 40}), y3, {.trans_b = ops::Trans::kYes});
  // y3's columns are the parts' blocks (hi's 6, mid's, lo's): AddParts'.
  Tensor y = Tensor::Empty({9, 6}, DType::kF32);
  ops::AddParts(ctx, y3, 0.0, y);
  Tensor ref = Tensor::Empty({9, 6}, DType::kF64);
  ops::Gemm(ctx, As(x, DType::kF64), As(w, DType::kF64), ref, {.trans_b = ops::Trans::kYes});
  ExpectClose(y, ref, 0, 1e-6, "x · (hi + mid + lo)ᵀ");
}

TEST(Bf16PartsTest, AddPartsSumsThePartsInOrderThenAddsThemToOut) {
  const ExecContext ctx;
  // Parts 1, 2^24, −2^24: in order (1 + 2^24) rounds to 2^24, so the sum
  // is 0, not 1; then out + 0.
  Tensor x = Tensor::FromVector({1, 6}, {1, 5, 0x1p24, -2, -0x1p24, 0.5}, DType::kF32);
  Tensor out = Tensor::FromVector({1, 2}, {7, -1}, DType::kF32);
  ops::AddParts(ctx, x, 1.0, out);
  EXPECT_EQ(out.At(0), 7.0);
  EXPECT_EQ(out.At(1), -1 + 5 - 2 + 0.5);
  Tensor fresh = Tensor::FromVector({1, 2}, {std::nan(""), 3}, DType::kF32);
  ops::AddParts(ctx, x, 0.0, fresh);
  EXPECT_EQ(fresh.At(0), 0.0);
  EXPECT_EQ(fresh.At(1), 5 - 2 + 0.5);
}

TEST(Bf16PartsDeathTest, ShapesAndDTypesAreChecked) {
  const ExecContext ctx;
  const Tensor x = RandomTensor({2, 4}, 304, 1.0, DType::kF32);
  EXPECT_DEATH(ops::SplitBf16(ctx, x, 1, Tensor::Empty({2, 8}, DType::kBF16)),
               "want f32 \\[R, C\\] into bf16 \\[R, 3·reps·C\\]");
  EXPECT_DEATH(ops::SplitBf16(ctx, x, 0, Tensor::Empty({2, 0}, DType::kBF16)), "reps >= 1");
  EXPECT_DEATH(ops::AddParts(ctx, x, 1.0, Tensor::Empty({2, 3}, DType::kF32)),
               "want f32 \\[R, P·C\\] into f32 \\[R, C\\]");
  EXPECT_DEATH(ops::AddParts(ctx, x, 0.5, Tensor::Empty({2, 2}, DType::kF32)), "beta 0 or 1");
}

TEST(SumTest, WritesTheSumIntoAOneElementTensor) {
  const ExecContext ctx;
  Tensor x = Tensor::FromVector({2, 2}, {1.5, -4, 0.25, 1e-3}, DType::kF32);
  Tensor out = ctx.Empty({1}, DType::kF64);
  ops::Sum(ctx, x, out);
  EXPECT_DOUBLE_EQ(out.At(0), 1.5 - 4 + 0.25 + static_cast<double>(1e-3f));
  ops::Sum(ctx, Tensor::Empty({0}, DType::kF32), out);
  EXPECT_EQ(out.At(0), 0.0);
}

}  // namespace
}  // namespace scalemoe
