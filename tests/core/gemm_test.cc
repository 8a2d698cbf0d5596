#include "core/ops.h"

#include "core/philox.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

Tensor Random(const Shape& shape, DType dtype, uint64_t stream) {
  Tensor t = Tensor::Empty(shape, dtype);
  std::vector<double> v(t.numel());
  for (size_t i = 0; i < v.size(); ++i) v[i] = PhiloxNormal(1, stream, i);
  t.CopyFrom(Tensor::FromVector(shape, v, DType::kF64));
  return t;
}

// Naive triple loop, f64.
double Ref(const Tensor& a, const Tensor& b, bool ta, bool tb, int64_t i, int64_t j) {
  const int64_t k = ta ? a.dim(0) : a.dim(1);
  double s = 0;
  for (int64_t p = 0; p < k; ++p) {
    double x = ta ? a.At(p * a.dim(1) + i) : a.At(i * a.dim(1) + p);
    double y = tb ? b.At(j * b.dim(1) + p) : b.At(p * b.dim(1) + j);
    s += x * y;
  }
  return s;
}

TEST(GemmTest, AllTransposeCombinationsMatchNaiveLoop) {
  const ExecContext ctx;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Tensor a = Random(ta ? Shape{5, 3} : Shape{3, 5}, DType::kF64, 1);
      Tensor b = Random(tb ? Shape{4, 5} : Shape{5, 4}, DType::kF64, 2);
      Tensor c = Random({3, 4}, DType::kF64, 3);
      Tensor c0 = c.Clone();
      ops::Gemm(ctx, a, b, c,
                {ta ? ops::Trans::kYes : ops::Trans::kNo, tb ? ops::Trans::kYes : ops::Trans::kNo,
                 2.0, 1.0});
      for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 4; ++j) {
          EXPECT_NEAR(c.At(i * 4 + j), 2.0 * Ref(a, b, ta, tb, i, j) + c0.At(i * 4 + j), 1e-12);
        }
      }
    }
  }
}

TEST(GemmTest, BatchedWithSharedOperand) {
  const ExecContext ctx;
  Tensor a = Random({2, 3, 5}, DType::kF32, 4);
  Tensor b = Random({5, 4}, DType::kF32, 5);
  Tensor c = Tensor::Empty({2, 3, 4}, DType::kF32);
  ops::Gemm(ctx, a, b, c);
  for (int bt = 0; bt < 2; ++bt) {
    Tensor ab = a.Narrow(0, bt, 1).View({3, 5});
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 4; ++j) {
        EXPECT_NEAR(c.At(bt * 12 + i * 4 + j), Ref(ab, b, false, false, i, j), 1e-5);
      }
    }
  }
}

TEST(GemmTest, EmptyInnerDimensionScalesByBeta) {
  const ExecContext ctx;
  Tensor a = Tensor::Empty({2, 0}, DType::kF32);
  Tensor b = Tensor::Empty({0, 3}, DType::kF32);
  Tensor c = Tensor::Empty({2, 3}, DType::kF32);
  c.Fill(4.0);
  ops::Gemm(ctx, a, b, c, {ops::Trans::kNo, ops::Trans::kNo, 1.0, 0.5});
  EXPECT_EQ(c.At(5), 2.0);
}

}  // namespace
}  // namespace scalemoe
