// The CPU grouped GEMMs (the reference the CUDA kernels are checked against)
// against naive loops: each group's rows times its own matrix, rows outside
// every group untouched, a group without rows scaled by beta, the gathered
// forms' rows read through their index, and bad offsets rejected.
#include <cmath>
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

// The gathered forms read row i of the row-stacked operand from x[rows[i] /
// divisor] (the MoE permutation, slot t·K + j of token t): against naive
// loops over the gathered rows, the forward x·W_gᵀ and the weight gradient
// d_gᵀ·x_g.
TEST_F(GroupedGemmTest, GatheredOpsReadTheRowsThroughTheIndex) {
  const std::vector<int64_t> off{1, 4, 4, 7};  // row 0 and 7 outside; group 1 empty
  const int64_t m = 8, tokens = 4, k = 3, n = 2;
  const int divisor = 2;
  const std::vector<int32_t> slots{-1, 5, 0, 7, 2, 3, 6, -1};
  Tensor rows = Tensor::Empty({m}, DType::kI32);
  for (int64_t i = 0; i < m; ++i) rows.data<int32_t>()[i] = slots[i];
  const Tensor x = Random({tokens, k}, 5);
  auto gathered = [&](int64_t r, int64_t q) {
    return x.data<double>()[(slots[r] / divisor) * k + q];
  };
  auto group_of = [&](int64_t r) {
    for (int g = 0; g < 3; ++g) {
      if (r >= off[g] && r < off[g + 1]) return g;
    }
    return -1;
  };
  std::vector<Tensor> w;
  for (int g = 0; g < 3; ++g) w.push_back(Random({n, k}, 30 + g));
  const Tensor c0 = Random({m, n}, 6);
  Tensor c = c0.Clone();
  ops::GroupedGemmGathered(ctx_, x, rows, divisor, ops::MakeMatrixGroup(ctx_, w), Offsets(off), c,
                           {.trans_b = ops::Trans::kYes, .beta = 1.0});
  for (int64_t r = 0; r < m; ++r) {
    const int g = group_of(r);
    for (int64_t j = 0; j < n; ++j) {
      double want = c0.data<double>()[r * n + j];
      if (g >= 0) {
        for (int64_t q = 0; q < k; ++q) want += gathered(r, q) * w[g].data<double>()[j * k + q];
      }
      EXPECT_NEAR(c.data<double>()[r * n + j], want, 1e-12) << "row " << r << " col " << j;
    }
  }

  const Tensor d = Random({m, n}, 7);
  std::vector<Tensor> grads;
  for (int g = 0; g < 3; ++g) grads.push_back(Random({n, k}, 40 + g));
  std::vector<Tensor> g0;
  for (const Tensor& t : grads) g0.push_back(t.Clone());
  ops::GroupedGemmWeightGradGathered(ctx_, d, x, rows, divisor, Offsets(off),
                                     ops::MakeMatrixGroup(ctx_, grads), 1.0);
  for (int g = 0; g < 3; ++g) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t q = 0; q < k; ++q) {
        double want = g0[g].data<double>()[i * k + q];
        for (int64_t r = off[g]; r < off[g + 1]; ++r) {
          want += d.data<double>()[r * n + i] * gathered(r, q);
        }
        EXPECT_NEAR(grads[g].data<double>()[i * k + q], want, 1e-12) << "group " << g;
      }
    }
  }
}

// The gate|up forward with its SwiGLU (GroupedGemmSwiGlu): gate_up = the
// rows (gathered or not) times each group's stacked [2F, C] weights, h =
// g·σ(g)·u of each row's halves.
TEST_F(GroupedGemmTest, SwiGluFormsGateUpAndItsActivation) {
  const std::vector<int64_t> off{0, 3, 3, 6};  // every row in a group; group 1 empty
  const int64_t m = 6, k = 3, f = 2;
  const std::vector<int32_t> slots{5, 0, 4, 2, 3, 1};
  Tensor rows = Tensor::Empty({m}, DType::kI32);
  for (int64_t i = 0; i < m; ++i) rows.data<int32_t>()[i] = slots[i];
  const Tensor tokens = Random({3, k}, 8), x = Random({m, k}, 9);
  std::vector<Tensor> w;
  for (int g = 0; g < 3; ++g) w.push_back(Random({2 * f, k}, 50 + g));
  for (const bool gathered : {false, true}) {
    SCOPED_TRACE(gathered ? "gathered" : "rows as they are");
    Tensor gate_up = Tensor::Empty({m, 2 * f}, DType::kF64), h = Tensor::Empty({m, f}, DType::kF64);
    ops::GroupedGemmSwiGlu(ctx_, gathered ? tokens : x, gathered ? rows : Tensor(), 2,
                           ops::MakeMatrixGroup(ctx_, w), Offsets(off), gate_up, h);
    for (int64_t r = 0; r < m; ++r) {
      const int g = r < 3 ? 0 : 2;
      auto in = [&](int64_t q) {
        return gathered ? tokens.data<double>()[(slots[r] / 2) * k + q]
                        : x.data<double>()[r * k + q];
      };
      for (int64_t j = 0; j < 2 * f; ++j) {
        double want = 0;
        for (int64_t q = 0; q < k; ++q) want += in(q)*w[g].data<double>()[j * k + q];
        EXPECT_NEAR(gate_up.data<double>()[r * 2 * f + j], want, 1e-12) << "row " << r;
      }
      for (int64_t j = 0; j < f; ++j) {
        const double gv = gate_up.data<double>()[r * 2 * f + j];
        const double uv = gate_up.data<double>()[r * 2 * f + f + j];
        EXPECT_NEAR(h.data<double>()[r * f + j], gv / (1 + std::exp(-gv)) * uv, 1e-12)
            << "row " << r;
      }
    }
  }
}

// Its backward through the down projection (GroupedGemmSwiGluBackward):
// d_h = d_y·W_g of each group's [C, F] weights, then d_gate = d_h·u·σ'…,
// d_up = d_h·g·σ(g) from the forward's gate|up rows.
TEST_F(GroupedGemmTest, SwiGluBackwardFormsGateUpsGradient) {
  const std::vector<int64_t> off{0, 2, 2, 5};  // every row in a group; group 1 empty
  const int64_t m = 5, c = 3, f = 2;
  const Tensor d_y = Random({m, c}, 11), gate_up = Random({m, 2 * f}, 12);
  std::vector<Tensor> w;
  for (int g = 0; g < 3; ++g) w.push_back(Random({c, f}, 60 + g));
  Tensor d_gate_up = Tensor::Empty({m, 2 * f}, DType::kF64);
  ops::GroupedGemmSwiGluBackward(ctx_, d_y, ops::MakeMatrixGroup(ctx_, w), Offsets(off), gate_up,
                                 d_gate_up);
  for (int64_t r = 0; r < m; ++r) {
    const int g = r < 2 ? 0 : 2;
    for (int64_t j = 0; j < f; ++j) {
      double dh = 0;
      for (int64_t q = 0; q < c; ++q)
        dh += d_y.data<double>()[r * c + q] * w[g].data<double>()[q * f + j];
      const double gv = gate_up.data<double>()[r * 2 * f + j];
      const double uv = gate_up.data<double>()[r * 2 * f + f + j];
      const double s = 1 / (1 + std::exp(-gv));
      EXPECT_NEAR(d_gate_up.data<double>()[r * 2 * f + j], dh * uv * s * (1 + gv * (1 - s)), 1e-12)
          << "row " << r;
      EXPECT_NEAR(d_gate_up.data<double>()[r * 2 * f + f + j], dh * gv * s, 1e-12) << "row " << r;
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
