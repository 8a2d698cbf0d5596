// The optimizer's multi-tensor ops (core/ops.h, "optimizer ops") on the CPU
// against direct f64 loops: segment tables with several rows and
// multipliers, the clip factor, and the non-finite skip.
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops.h"
#include "gtest/gtest.h"
#include "tests/optim/step_control_testing.h"

namespace scalemoe {
namespace {

using Values = std::vector<double>;

Tensor Table(const std::vector<std::vector<double>>& rows, DType dtype) {
  Values flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return Tensor::FromVector(
      {static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows.empty() ? 0 : rows[0].size())},
      flat, dtype);
}

Tensor Vec(const Values& v, DType dtype) {
  return Tensor::FromVector({static_cast<int64_t>(v.size())}, v, dtype);
}

Values Wave(int64_t n, double phase, double scale = 1.0) {
  Values v(n);
  for (int64_t i = 0; i < n; ++i)
    v[i] = scale * (std::sin(0.7 * i + phase) + 0.2 * std::cos(1.9 * i));
  return v;
}

// Tolerance of a dtype's result against the f64 reference.
double Tolerance(DType dtype, double value) {
  return dtype == DType::kF64 ? 1e-13 * (1 + std::abs(value)) : 2e-5 * (1 + std::abs(value));
}

const ExecContext& Ctx() {
  static const ExecContext ctx = ExecContext::Cpu();
  return ctx;
}

// ---------------------------------------------------------------- CopySegments

TEST(CopySegmentsTest, CopiesRowsAcrossDtypesAndLeavesTheRestAlone) {
  const Values src = Wave(20, 0.3, 3.0);
  const Tensor rows = Table({{2, 0, 3}, {10, 3, 5}, {17, 9, 3}}, DType::kI64);
  for (DType from : {DType::kF32, DType::kF64, DType::kBF16}) {
    for (DType to : {DType::kF32, DType::kF64, DType::kBF16}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(from) << " -> " << DTypeName(to));
      const Tensor s = Vec(src, from);
      Tensor d = Tensor::Empty({12}, to);
      d.Fill(-7);
      ops::CopySegments(Ctx(), s, d, rows);
      // Expected: the source's stored values, converted as Tensor::CopyFrom does.
      Tensor want = Tensor::Empty({12}, to);
      want.Fill(-7);
      want.Narrow(0, 0, 3).CopyFrom(s.Narrow(0, 2, 3));
      want.Narrow(0, 3, 5).CopyFrom(s.Narrow(0, 10, 5));
      want.Narrow(0, 9, 3).CopyFrom(s.Narrow(0, 17, 3));
      EXPECT_EQ(d.ToVector(), want.ToVector());
      EXPECT_EQ(d.At(8), -7);  // between rows: untouched
    }
  }
}

// ---------------------------------------------------------------- SegmentSumOfSquares

TEST(SegmentSumOfSquaresTest, AddsPerRowOrInTotal) {
  const Tensor rows = Table({{0, 4}, {6, 13}, {15, 16}}, DType::kI64);
  for (DType dtype : {DType::kF32, DType::kF64, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    const Tensor x = Vec(Wave(18, 1.1, 2.0), dtype);
    const Values stored = x.ToVector();
    Values want(3, 0.0);
    for (int64_t i = 0; i < 4; ++i) want[0] += stored[i] * stored[i];
    for (int64_t i = 6; i < 13; ++i) want[1] += stored[i] * stored[i];
    want[2] = stored[15] * stored[15];
    Tensor per_row = Vec({1, 2, 3}, DType::kF64);  // accumulates
    ops::SegmentSumOfSquares(Ctx(), x, rows, per_row);
    for (int s = 0; s < 3; ++s) EXPECT_NEAR(per_row.At(s), want[s] + (s + 1), 1e-14) << s;
    Tensor total = Vec({0.5}, DType::kF64);
    ops::SegmentSumOfSquares(Ctx(), x, rows, total);
    EXPECT_NEAR(total.At(0), 0.5 + want[0] + want[1] + want[2], 1e-13);
  }
}

// ---------------------------------------------------------------- GradNormControl

TEST(GradNormControlTest, NormClipFactorFlagAndCount) {
  struct Case {
    double sum, max_norm, norm, clip;
    bool nonfinite;
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (const Case& c :
       {Case{25, 2, 5, 0.4, false}, Case{25, 10, 5, 1, false}, Case{25, 5, 5, 1, false},
        Case{25, 0, 5, 1, false}, Case{0, 1, 0, 1, false}, Case{inf, 1, inf, 1, true}}) {
    SCOPED_TRACE(::testing::Message() << "sum " << c.sum << " max " << c.max_norm);
    ops::StepControl control = TestControl(3, /*clip_factor=*/-1, /*nonfinite=*/true);
    Tensor norm = Tensor::Empty({1}, DType::kF64);
    ops::GradNormControl(Ctx(), Vec({c.sum}, DType::kF64), c.max_norm, norm, control);
    EXPECT_EQ(norm.At(0), c.norm);
    EXPECT_DOUBLE_EQ(control.clip_factor.At(0), c.clip);
    EXPECT_EQ(control.nonfinite.At(0), c.nonfinite ? 1 : 0);
    EXPECT_EQ(control.num_updates.At(0), c.nonfinite ? 3 : 4);
  }
  ops::StepControl control = TestControl(3);
  Tensor norm = Tensor::Empty({1}, DType::kF64);
  ops::GradNormControl(Ctx(), Vec({NAN}, DType::kF64), 1.0, norm, control);
  EXPECT_TRUE(std::isnan(norm.At(0)));
  EXPECT_EQ(control.nonfinite.At(0), 1);
  EXPECT_EQ(control.num_updates.At(0), 3);
}

// ---------------------------------------------------------------- AdamWUpdate

constexpr int64_t kAdamN = 40;
// Rows (begin, end) with (lr multiplier, weight decay); 10, 11, 31, 32 are in no row.
const std::vector<std::vector<double>> kAdamRows = {{0, 10}, {12, 20}, {20, 31}, {33, 40}};
const std::vector<std::vector<double>> kAdamCoeffs = {{1, 0.1}, {0.5, 0.2}, {2, 0}, {0.3, 0.05}};
const ops::AdamWUpdateOptions kAdamOptions{.lr = 0, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8};
const double kAdamLr[] = {1e-2, 3e-2, 2e-2, 5e-3};
const double kAdamClip[] = {1.0, 0.5, 1.0, 0.25};

struct AdamState {
  Values p, m, v;
};

// The f64 reference: PyTorch's AdamW (m̂, v̂ form) per element.
void ReferenceAdamW(AdamState& s, const Values& grad, double lr, double clip, int t) {
  for (size_t r = 0; r < kAdamRows.size(); ++r) {
    const double lr_r = lr * kAdamCoeffs[r][0], wd = kAdamCoeffs[r][1];
    for (int64_t k = kAdamRows[r][0]; k < kAdamRows[r][1]; ++k) {
      const double g = grad[k] * clip;
      s.p[k] -= lr_r * wd * s.p[k];
      s.m[k] = 0.9 * s.m[k] + 0.1 * g;
      s.v[k] = 0.95 * s.v[k] + 0.05 * g * g;
      const double m_hat = s.m[k] / (1 - std::pow(0.9, t));
      const double v_hat = s.v[k] / (1 - std::pow(0.95, t));
      s.p[k] -= lr_r * m_hat / (std::sqrt(v_hat) + 1e-8);
    }
  }
}

struct AdamTensors {
  explicit AdamTensors(DType dtype)
      : p(Vec(Wave(kAdamN, 0.2), dtype)),
        m(Tensor::Zeros({kAdamN}, dtype)),
        v(Tensor::Zeros({kAdamN}, dtype)) {}
  void Step(const Tensor& grad, double lr, const ops::StepControl& control) {
    ops::AdamWUpdate(Ctx(), p, grad, m, v, Table(kAdamRows, DType::kI64),
                     Table(kAdamCoeffs, DType::kF64),
                     {.lr = lr, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8}, control);
  }
  Tensor p, m, v;
};

TEST(AdamWUpdateTest, MatchesTheReferenceOverSeveralRowsStepsAndClipFactors) {
  for (DType dtype : {DType::kF64, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    AdamTensors got(dtype);
    AdamState want{got.p.ToVector(), Values(kAdamN, 0.0), Values(kAdamN, 0.0)};
    const Values initial = want.p;
    for (int t = 1; t <= 4; ++t) {
      const Tensor grad = Vec(Wave(kAdamN, 1.3 * t, 1 + t), dtype);
      got.Step(grad, kAdamLr[t - 1], TestControl(t, kAdamClip[t - 1]));
      ReferenceAdamW(want, grad.ToVector(), kAdamLr[t - 1], kAdamClip[t - 1], t);
    }
    const Values p = got.p.ToVector(), m = got.m.ToVector(), v = got.v.ToVector();
    for (int64_t k = 0; k < kAdamN; ++k) {
      EXPECT_NEAR(p[k], want.p[k], Tolerance(dtype, want.p[k])) << k;
      EXPECT_NEAR(m[k], want.m[k], Tolerance(dtype, want.m[k])) << k;
      EXPECT_NEAR(v[k], want.v[k], Tolerance(dtype, want.v[k])) << k;
    }
    for (int64_t k : {10, 11, 31, 32}) {  // in no row: untouched
      EXPECT_EQ(p[k], initial[k]) << k;
      EXPECT_EQ(m[k], 0.0) << k;
      EXPECT_EQ(v[k], 0.0) << k;
    }
  }
}

TEST(AdamWUpdateTest, NonFiniteStepLeavesParamsAndStateBitIdentical) {
  AdamTensors adam(DType::kF32);
  for (int t = 1; t <= 2; ++t) adam.Step(Vec(Wave(kAdamN, t), DType::kF32), 1e-2, TestControl(t));
  const Values p = adam.p.ToVector(), m = adam.m.ToVector(), v = adam.v.ToVector();
  Values bad = Wave(kAdamN, 3);
  bad[5] = NAN;
  bad[14] = std::numeric_limits<double>::infinity();
  adam.Step(Vec(bad, DType::kF32), 1e-2, TestControl(3, 1.0, /*nonfinite=*/true));
  EXPECT_EQ(adam.p.ToVector(), p);
  EXPECT_EQ(adam.m.ToVector(), m);
  EXPECT_EQ(adam.v.ToVector(), v);
}

// bf16 gradients (the GPU path's) are the f32 step on their values.
TEST(AdamWUpdateTest, Bf16GradientsStepLikeTheirF32Values) {
  AdamTensors a(DType::kF32), b(DType::kF32);
  for (int t = 1; t <= 3; ++t) {
    const Tensor g16 = Vec(Wave(kAdamN, 0.4 * t, 2), DType::kBF16);
    const Tensor g32 = Vec(g16.ToVector(), DType::kF32);
    a.Step(g16, 1e-2, TestControl(t, 0.7));
    b.Step(g32, 1e-2, TestControl(t, 0.7));
  }
  EXPECT_EQ(a.p.ToVector(), b.p.ToVector());
  EXPECT_EQ(a.m.ToVector(), b.m.ToVector());
  EXPECT_EQ(a.v.ToVector(), b.v.ToVector());
}

// ---------------------------------------------------------------- Muon's elementwise ops

constexpr int64_t kMuonN = 30;
constexpr int64_t kPackedN = 14;
// (begin, end, packed_begin): packed out of flat order; 6-9, 16-19, 24-29 in no row.
const std::vector<std::vector<double>> kMuonRows = {{0, 6, 8}, {10, 16, 2}, {20, 24, 4}};
// Gaps in the packed buffer: [0, 2) is in no row.
const std::vector<std::vector<double>> kMuonCoeffs = {{1, 0.1, 1}, {0.5, 0.2, 2}, {2, 0, 1.5}};

TEST(MuonMomentumTest, MomentumAndNesterovIntoThePackedUpdate) {
  constexpr double kMu = 0.9;
  for (DType dtype : {DType::kF64, DType::kF32}) {
    for (bool nesterov : {true, false}) {
      SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << (nesterov ? " nesterov" : ""));
      Tensor momentum = Tensor::Zeros({kMuonN}, dtype);
      Tensor update = Tensor::Empty({kPackedN}, dtype);
      update.Fill(-5);
      Values buf(kMuonN, 0.0), want(kPackedN, -5);
      for (int t = 1; t <= 3; ++t) {
        const double clip = t == 2 ? 0.5 : 1.0;
        const Tensor grad = Vec(Wave(kMuonN, 0.8 * t, t), dtype);
        ops::MuonMomentum(Ctx(), grad, momentum, update, Table(kMuonRows, DType::kI64),
                          {.momentum = kMu, .nesterov = nesterov}, TestControl(t, clip));
        const Values g = grad.ToVector();
        for (const auto& r : kMuonRows) {
          for (int64_t k = r[0]; k < r[1]; ++k) {
            const double gk = g[k] * clip;
            buf[k] = kMu * buf[k] + gk;
            want[r[2] + k - r[0]] = nesterov ? gk + kMu * buf[k] : buf[k];
          }
        }
      }
      const Values b = momentum.ToVector(), u = update.ToVector();
      for (int64_t k = 0; k < kMuonN; ++k) EXPECT_NEAR(b[k], buf[k], Tolerance(dtype, buf[k])) << k;
      for (int64_t k = 0; k < kPackedN; ++k)
        EXPECT_NEAR(u[k], want[k], Tolerance(dtype, want[k])) << k;
      EXPECT_EQ(u[0], -5);  // no row writes it
      EXPECT_EQ(b[7], 0.0);
    }
  }
}

TEST(MuonMomentumTest, NonFiniteStepLeavesMomentumAndUpdateAlone) {
  Tensor momentum = Vec(Wave(kMuonN, 0.1), DType::kF64);
  Tensor update = Vec(Wave(kPackedN, 0.9), DType::kF64);
  const Values b = momentum.ToVector(), u = update.ToVector();
  Values bad = Wave(kMuonN, 2);
  bad[3] = NAN;
  ops::MuonMomentum(Ctx(), Vec(bad, DType::kF64), momentum, update, Table(kMuonRows, DType::kI64),
                    {.momentum = 0.95, .nesterov = true}, TestControl(1, 1.0, true));
  EXPECT_EQ(momentum.ToVector(), b);
  EXPECT_EQ(update.ToVector(), u);
}

TEST(FrobeniusNormalizeTest, EachMatrixOfABatchToUnitNorm) {
  for (DType dtype : {DType::kF64, DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dtype));
    Tensor x = Tensor::FromVector({3, 2, 4}, Wave(24, 0.5, 3), dtype);
    const Values before = x.ToVector();
    ops::FrobeniusNormalize(Ctx(), x, 1e-7);
    const Values after = x.ToVector();
    for (int b = 0; b < 3; ++b) {
      double sum = 0;
      for (int i = 0; i < 8; ++i) sum += before[b * 8 + i] * before[b * 8 + i];
      const double scale = 1 / (std::sqrt(sum) + 1e-7);
      for (int i = 0; i < 8; ++i) {
        const double want = before[b * 8 + i] * scale;
        const double tol = dtype == DType::kBF16 ? 4e-3 * std::abs(want) : Tolerance(dtype, want);
        EXPECT_NEAR(after[b * 8 + i], want, tol) << b << "," << i;
      }
    }
  }
  // A 2-D matrix is a batch of one.
  Tensor m = Tensor::FromVector({2, 2}, {3, 0, 0, 4}, DType::kF64);
  ops::FrobeniusNormalize(Ctx(), m, 0.0);
  const Values want = {0.6, 0, 0, 0.8};
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(m.At(i), want[i]) << i;
}

TEST(MuonApplyTest, DecayAndScaledStepPerRow) {
  constexpr double kLr = 0.02;
  for (DType dtype : {DType::kF64, DType::kF32}) {
    SCOPED_TRACE(DTypeName(dtype));
    Tensor params = Vec(Wave(kMuonN, 0.3), dtype);
    const Tensor ortho = Vec(Wave(kPackedN, 1.7), dtype);
    Values want = params.ToVector();
    const Values o = ortho.ToVector();
    ops::MuonApply(Ctx(), params, ortho, Table(kMuonRows, DType::kI64),
                   Table(kMuonCoeffs, DType::kF64), kLr, TestControl(1));
    for (size_t r = 0; r < kMuonRows.size(); ++r) {
      const double lr = kLr * kMuonCoeffs[r][0];
      for (int64_t k = kMuonRows[r][0]; k < kMuonRows[r][1]; ++k) {
        want[k] = want[k] * (1 - lr * kMuonCoeffs[r][1]) -
                  lr * kMuonCoeffs[r][2] * o[kMuonRows[r][2] + k - kMuonRows[r][0]];
      }
    }
    const Values got = params.ToVector();
    for (int64_t k = 0; k < kMuonN; ++k)
      EXPECT_NEAR(got[k], want[k], Tolerance(dtype, want[k])) << k;
    // Non-finite: nothing moves.
    ops::MuonApply(Ctx(), params, ortho, Table(kMuonRows, DType::kI64),
                   Table(kMuonCoeffs, DType::kF64), kLr, TestControl(2, 1.0, true));
    EXPECT_EQ(params.ToVector(), got);
  }
}

}  // namespace
}  // namespace scalemoe
