#include "optim/muon.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/optim/step_control_testing.h"

namespace scalemoe {
namespace {

using Matrix = std::vector<std::vector<double>>;

Matrix MatMul(const Matrix& a, const Matrix& b) {
  Matrix c(a.size(), std::vector<double>(b[0].size(), 0.0));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t k = 0; k < b.size(); ++k)
      for (size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][k] * b[k][j];
  return c;
}

Matrix Transpose(const Matrix& a) {
  Matrix t(a[0].size(), std::vector<double>(a.size()));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < a[0].size(); ++j) t[j][i] = a[i][j];
  return t;
}

// Keller Jordan's zeropower_via_newtonschulz5, as naive loops in f64.
Matrix ReferenceNewtonSchulz(Matrix x, int steps) {
  const bool transposed = x.size() > x[0].size();
  if (transposed) x = Transpose(x);
  double norm = 0.0;
  for (const auto& row : x)
    for (double v : row) norm += v * v;
  norm = std::sqrt(norm) + 1e-7;
  for (auto& row : x)
    for (double& v : row) v /= norm;
  for (int s = 0; s < steps; ++s) {
    const Matrix a = MatMul(x, Transpose(x));
    const Matrix aa = MatMul(a, a);
    Matrix b = a;
    for (size_t i = 0; i < b.size(); ++i)
      for (size_t j = 0; j < b.size(); ++j) b[i][j] = -4.7750 * a[i][j] + 2.0315 * aa[i][j];
    const Matrix bx = MatMul(b, x);
    for (size_t i = 0; i < x.size(); ++i)
      for (size_t j = 0; j < x[0].size(); ++j) x[i][j] = 3.4445 * x[i][j] + bx[i][j];
  }
  return transposed ? Transpose(x) : x;
}

Matrix ToMatrix(const Tensor& t) {
  Matrix m(t.dim(0), std::vector<double>(t.dim(1)));
  for (int64_t i = 0; i < t.dim(0); ++i)
    for (int64_t j = 0; j < t.dim(1); ++j) m[i][j] = t.At(i * t.dim(1) + j);
  return m;
}

Tensor TestMatrix(int64_t rows, int64_t cols, double phase) {
  std::vector<double> v(rows * cols);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(1.1 * i + phase) + 0.3 * std::cos(0.3 * i);
  return Tensor::FromVector({rows, cols}, v, DType::kF64);
}

TEST(NewtonSchulzTest, MatchesNaiveReferenceForWideTallAndSquare) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{3, 5}, {6, 4}, {4, 4}, {1, 7}}) {
    SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
    const Tensor g = TestMatrix(rows, cols, 0.5);
    Tensor out = Tensor::Empty({rows, cols}, DType::kF64);
    Muon::NewtonSchulz(ExecContext::Cpu(), g, out, 5);
    const Matrix expected = ReferenceNewtonSchulz(ToMatrix(g), 5);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        EXPECT_NEAR(out.At(i * cols + j), expected[i][j], 1e-12);
  }
}

// The iteration pushes every singular value towards ~1 (into roughly
// [0.7, 1.2] after 5 steps): the Gram matrix on the small side has a
// diagonal near 1 even for a badly scaled input.
TEST(NewtonSchulzTest, OrthogonalisesAnIllConditionedMatrix) {
  std::vector<double> v = {100, 0, 0, 0, 1, 0, 0, 0, 0.5};  // diag(100, 1, 0.5), rows 3, cols 3
  const Tensor g = Tensor::FromVector({3, 3}, v, DType::kF64);
  Tensor out = Tensor::Empty({3, 3}, DType::kF64);
  Muon::NewtonSchulz(ExecContext::Cpu(), g, out, 10);
  for (int i = 0; i < 3; ++i) {
    EXPECT_GT(out.At(i * 3 + i), 0.6) << i;
    EXPECT_LT(out.At(i * 3 + i), 1.3) << i;
  }
}

struct MuonFixture {
  explicit MuonFixture(bool nesterov_in) : nesterov(nesterov_in) {
    reg.Create({"wide", {3, 5}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
    reg.Create({"gamma", {5}, ParamRole::kInputNormScale, InitSpec::Ones(), {}});
    reg.Create({"tall", {6, 4}, ParamRole::kExpertLinear, InitSpec::Normal(0.5), {}});
    reg.Create({"router", {2, 5}, ParamRole::kRouter, InitSpec::Normal(0.5), {}});
    SM_CHECK_OK(reg.Materialize(11, DType::kF64, Device::kCPU));
    config::OptimizerConfig opt;
    opt.set_type(config::OptimizerConfig::MUON);
    auto* m = opt.add_role_multipliers();
    m->set_role("expert_linear");
    m->set_lr_mult(0.5);
    groups = std::make_unique<ParamGroups>(
        ParamGroups::Create(reg, opt, config::ScaleVectorConfig::IWD).value());
  }
  void SetGrads(int t) {
    const int64_t n = reg.total_local_numel();
    std::vector<double> g(n);
    for (int64_t i = 0; i < n; ++i) g[i] = std::cos(0.9 * i - 0.4 * t) * (1 + (i + t) % 4);
    Tensor(reg.flat_grads()).CopyFrom(Tensor::FromVector({n}, g, DType::kF64));
  }
  bool nesterov;
  ParamRegistry reg;
  std::unique_ptr<ParamGroups> groups;
};

TEST(MuonTest, MatchesFloat64ReferenceOverSeveralSteps) {
  constexpr double kMomentum = 0.9, kWd = 0.1;
  const double lrs[] = {0.02, 0.01, 0.015};
  for (bool nesterov : {true, false}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "plain momentum");
    MuonFixture f(nesterov), ref(nesterov);
    Muon muon({.momentum = kMomentum, .nesterov = nesterov, .ns_steps = 5, .weight_decay = kWd},
              *f.groups, DType::kF64);
    const std::vector<double> initial = f.reg.flat_values().ToVector();
    // Reference state per matrix.
    struct RefMatrix {
      const char* name;
      double lr_mult;
      Matrix w, buf;
    };
    std::vector<RefMatrix> mats = {{"wide", 1.0, {}, {}}, {"tall", 0.5, {}, {}}};
    for (auto& m : mats) {
      m.w = ToMatrix(ref.reg.Find(m.name)->value);
      m.buf = Matrix(m.w.size(), std::vector<double>(m.w[0].size(), 0.0));
    }
    for (int t = 1; t <= 3; ++t) {
      f.SetGrads(t);
      muon.Step(ExecContext::Cpu(), f.reg.flat_values(), f.reg.flat_grads(), lrs[t - 1],
                TestControl(t));
      ref.SetGrads(t);
      for (auto& m : mats) {
        const Matrix g = ToMatrix(ref.reg.Find(m.name)->grad);
        Matrix u = g;
        for (size_t i = 0; i < g.size(); ++i)
          for (size_t j = 0; j < g[0].size(); ++j) {
            m.buf[i][j] = kMomentum * m.buf[i][j] + g[i][j];
            u[i][j] = nesterov ? g[i][j] + kMomentum * m.buf[i][j] : m.buf[i][j];
          }
        const Matrix o = ReferenceNewtonSchulz(u, 5);
        const double lr = lrs[t - 1] * m.lr_mult;
        const double scale = std::sqrt(std::max(1.0, double(g.size()) / double(g[0].size())));
        for (size_t i = 0; i < g.size(); ++i)
          for (size_t j = 0; j < g[0].size(); ++j)
            m.w[i][j] = m.w[i][j] * (1 - lr * kWd) - lr * scale * o[i][j];
      }
    }
    for (const auto& m : mats) {
      const Matrix got = ToMatrix(f.reg.Find(m.name)->value);
      for (size_t i = 0; i < got.size(); ++i)
        for (size_t j = 0; j < got[0].size(); ++j)
          EXPECT_NEAR(got[i][j], m.w[i][j], 1e-12) << m.name << " " << i << "," << j;
    }
    // AdamW's parameters (γ, router) are not Muon's to touch.
    for (const char* name : {"gamma", "router"}) {
      const Param* p = f.reg.Find(name);
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        EXPECT_EQ(p->value.At(i), initial[p->flat_offset + i]) << name;
        EXPECT_EQ(muon.momentum().At(p->flat_offset + i), 0.0) << name;
      }
    }
  }
}

}  // namespace
}  // namespace scalemoe
