// The CPU grouped GEMMs (the reference the CUDA kernels are checked against)
// against naive loops: each group's rows times its own matrix, rows outside
// every group untouched, a group without rows scaled by beta, and bad
// offsets rejected.
#include <vector>

#include "core/ops.h"
#include "core/philox.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

Tensor Random(const Shape& shape, uint64_t stream) {
  Tensor t = Tensor::Empty(shape, DType::kF64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = PhiloxNormal(7, stream, i);
  return t;
}

Tensor Offsets(const std::vector<int64_t>& off) {
  Tensor t = Tensor::Empty({static_cast<int64_t>(off.size())}, DType::kI64);
  for (size_t i = 0; i < off.size(); ++i) t.data<int64_t>()[i] = off[i];
  return t;
}

class GroupedGemmTest : public ::testing::Test {
 protected:
  ExecContext ctx_ = ExecContext::Cpu({.poison = false});
};

TEST_F(GroupedGemmTest, EachGroupsRowsUseItsOwnMatrix) {
  const std::vector<int64_t> off{2, 5, 5, 9};  // rows 0-1 and 9-10 outside; group 1 empty
  const int64_t m = 11, k = 4, n = 3;
  for (bool trans : {true, false}) {
    const Tensor a = Random({m, trans ? k : n}, 1);
    std::vector<Tensor> w;
    for (int g = 0; g < 3; ++g) w.push_back(Random({n, k}, 10 + g));
    const Tensor c0 = Random({m, trans ? n : k}, 2);
    for (double beta : {0.0, 1.0}) {
      Tensor c = c0.Clone();
      ops::GroupedGemm(ctx_, a, ops::MakeMatrixGroup(ctx_, w), Offsets(off), c,
                       {.trans_b = trans ? ops::Trans::kYes : ops::Trans::kNo, .beta = beta});
      const int64_t cols = c.dim(1), inner = a.dim(1);
      for (int64_t r = 0; r < m; ++r) {
        int g = -1;
        for (int i = 0; i < 3; ++i) {
          if (r >= off[i] && r < off[i + 1]) g = i;
        }
        for (int64_t j = 0; j < cols; ++j) {
          const double old = c0.data<double>()[r * cols + j];
          double want = old;
          if (g >= 0) {
            double s = 0;
            for (int64_t q = 0; q < inner; ++q) {
              const double wv = trans ? w[g].data<double>()[j * k + q]   // W[j, q]
                                      : w[g].data<double>()[q * k + j];  // W[q, j]
              s += a.data<double>()[r * inner + q] * wv;
            }
            want = s + beta * old;
          }
          EXPECT_NEAR(c.data<double>()[r * cols + j], want, 1e-12)
              << "trans " << trans << " beta " << beta << " row " << r << " col " << j;
        }
      }
    }
  }
}

TEST_F(GroupedGemmTest, WeightGradSumsEachGroupsRows) {
  const std::vector<int64_t> off{0, 3, 3, 7};
  const int64_t m = 7, n = 3, k = 2;
  const Tensor a = Random({m, n}, 3), b = Random({m, k}, 4);
  std::vector<Tensor> c0, c;
  for (int g = 0; g < 3; ++g) {
    c0.push_back(Random({n, k}, 20 + g));
    c.push_back(c0.back().Clone());
  }
  ops::GroupedGemmWeightGrad(ctx_, a, b, Offsets(off), ops::MakeMatrixGroup(ctx_, c), 0.5);
  for (int g = 0; g < 3; ++g) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) {
        double s = 0;
        for (int64_t r = off[g]; r < off[g + 1]; ++r) {
          s += a.data<double>()[r * n + i] * b.data<double>()[r * k + j];
        }
        EXPECT_NEAR(c[g].data<double>()[i * k + j], s + 0.5 * c0[g].data<double>()[i * k + j],
                    1e-12)
            << "group " << g;
      }
    }
  }
}

TEST_F(GroupedGemmTest, RejectsOffsetsPastTheRows) {
  const Tensor a = Random({4, 2}, 1), c = Random({4, 2}, 2);
  const ops::MatrixGroup w = ops::MakeMatrixGroup(ctx_, {Random({2, 2}, 3)});
  EXPECT_DEATH(ops::GroupedGemm(ctx_, a, w, Offsets({0, 5}), c, {}), "offsets");
  EXPECT_DEATH(ops::GroupedGemm(ctx_, a, w, Offsets({3, 1}), c, {}), "offsets");
}

}  // namespace
}  // namespace scalemoe
