#include "optim/adamw.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/optim/step_control_testing.h"

namespace scalemoe {
namespace {

using config::ScaleVectorConfig;

// Registry: a matrix (decayed), an input γ (decayed, lr×0.5, wd×2), an
// output γ (exempt), an expert bias (never trained), a bias (exempt).
struct Fixture {
  explicit Fixture(DType dtype) {
    reg.Create({"w", {3, 4}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
    reg.Create({"gamma_in", {5}, ParamRole::kInputNormScale, InitSpec::Normal(1.0), {}});
    reg.Create({"u_out", {4}, ParamRole::kOutputNormScale, InitSpec::Normal(1.0), {}});
    reg.Create({"expert_bias", {2}, ParamRole::kExpertBias, InitSpec::Normal(1.0), {}});
    reg.Create({"b", {3}, ParamRole::kBias, InitSpec::Normal(1.0), {}});
    SM_CHECK_OK(reg.Materialize(7, dtype, Device::kCPU));
    auto* m = opt.add_role_multipliers();
    m->set_role("input_norm_scale");
    m->set_lr_mult(0.5);
    m->set_wd_mult(2.0);
    groups = std::make_unique<ParamGroups>(
        ParamGroups::Create(reg, opt, ScaleVectorConfig::IWD).value());
  }
  void SetGrads(int t) {
    const int64_t n = reg.total_local_numel();
    std::vector<double> g(n);
    for (int64_t i = 0; i < n; ++i) g[i] = std::sin(0.7 * i + 1.3 * t) * (1 + i % 3);
    Tensor(reg.flat_grads()).CopyFrom(Tensor::FromVector({n}, g, DType::kF64));
  }
  ParamRegistry reg;
  config::OptimizerConfig opt;
  std::unique_ptr<ParamGroups> groups;
};

constexpr AdamWOptions kOptions{.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
const double kLr[] = {1e-2, 3e-2, 2e-2, 5e-3, 1e-2};

// Plain f64 loop, written from the PyTorch AdamW docs (m̂, v̂ form), with the
// per-element lr/wd taken from the role table of the test, not from groups.
std::vector<double> Reference(Fixture& f, int steps) {
  std::vector<double> p = f.reg.flat_values().ToVector();
  const size_t n = p.size();
  std::vector<double> m(n, 0.0), v(n, 0.0), lr_mult(n, 1.0), wd(n, 0.0);
  std::vector<bool> trained(n, true);
  for (const auto& param : f.reg.params()) {
    for (int64_t i = 0; i < param->local_numel(); ++i) {
      const int64_t k = param->flat_offset + i;
      switch (param->spec.role) {
        case ParamRole::kLinear: wd[k] = 0.1; break;
        case ParamRole::kInputNormScale: wd[k] = 0.2; lr_mult[k] = 0.5; break;
        case ParamRole::kExpertBias: trained[k] = false; break;
        default: break;
      }
    }
  }
  for (int t = 1; t <= steps; ++t) {
    f.SetGrads(t);
    const std::vector<double> g = f.reg.flat_grads().ToVector();
    for (size_t k = 0; k < n; ++k) {
      if (!trained[k]) continue;
      const double lr = kLr[t - 1] * lr_mult[k];
      p[k] = p[k] - lr * wd[k] * p[k];
      m[k] = 0.9 * m[k] + 0.1 * g[k];
      v[k] = 0.95 * v[k] + 0.05 * g[k] * g[k];
      const double m_hat = m[k] / (1 - std::pow(0.9, t));
      const double v_hat = v[k] / (1 - std::pow(0.95, t));
      p[k] = p[k] - lr * m_hat / (std::sqrt(v_hat) + 1e-8);
    }
  }
  return p;
}

void RunAdamW(Fixture& f, int steps) {
  AdamW adamw(kOptions, *f.groups, 0, f.reg.total_local_numel(), f.reg.flat_values().dtype());
  for (int t = 1; t <= steps; ++t) {
    f.SetGrads(t);
    adamw.Step(ExecContext::Cpu(), f.reg.flat_values(), f.reg.flat_grads(), kLr[t - 1],
               TestControl(t));
  }
}

TEST(AdamWTest, MatchesFloat64ReferenceOverSeveralSteps) {
  Fixture ref_f(DType::kF64), f(DType::kF64);
  const std::vector<double> initial = f.reg.flat_values().ToVector();
  const std::vector<double> expected = Reference(ref_f, 5);
  RunAdamW(f, 5);
  const std::vector<double> got = f.reg.flat_values().ToVector();
  for (size_t k = 0; k < got.size(); ++k) {
    EXPECT_NEAR(got[k], expected[k], 1e-13 * (1 + std::abs(expected[k]))) << k;
  }
  // The untrained expert bias did not move; everything else did.
  const Param* eb = f.reg.Find("expert_bias");
  for (int64_t k = 0; k < static_cast<int64_t>(got.size()); ++k) {
    const bool frozen = k >= eb->flat_offset && k < eb->flat_offset + eb->local_numel();
    if (frozen) {
      EXPECT_EQ(got[k], initial[k]);
    } else {
      EXPECT_NE(got[k], initial[k]);
    }
  }
}

TEST(AdamWTest, Float32StaysCloseToTheFloat64Reference) {
  Fixture ref_f(DType::kF64), f(DType::kF32);
  const std::vector<double> expected = Reference(ref_f, 5);
  RunAdamW(f, 5);
  const std::vector<double> got = f.reg.flat_values().ToVector();
  for (size_t k = 0; k < got.size(); ++k) EXPECT_NEAR(got[k], expected[k], 2e-5) << k;
}

// The ZeRO contract: stepping shards [a, b) separately (cuts inside γ and
// inside the matrix) gives bit-identical values to one whole-range step.
TEST(AdamWTest, ShardStepsEqualTheWholeRangeStep) {
  Fixture whole(DType::kF32), sharded(DType::kF32);
  const int64_t total = whole.reg.total_local_numel();
  const int64_t gin = whole.reg.Find("gamma_in")->flat_offset;
  const std::vector<int64_t> cuts = {0, 5, gin + 2, gin + 7, total};
  std::vector<std::unique_ptr<AdamW>> shards;
  for (size_t s = 0; s + 1 < cuts.size(); ++s) {
    shards.push_back(std::make_unique<AdamW>(kOptions, *sharded.groups, cuts[s], cuts[s + 1],
                                             DType::kF32));
  }
  AdamW full(kOptions, *whole.groups, 0, total, DType::kF32);
  for (int t = 1; t <= 3; ++t) {
    whole.SetGrads(t);
    sharded.SetGrads(t);
    full.Step(ExecContext::Cpu(), whole.reg.flat_values(), whole.reg.flat_grads(), kLr[t - 1],
              TestControl(t));
    for (auto& shard : shards) {
      const int64_t len = shard->end() - shard->begin();
      shard->Step(ExecContext::Cpu(), sharded.reg.flat_values().Narrow(0, shard->begin(), len),
                  sharded.reg.flat_grads().Narrow(0, shard->begin(), len), kLr[t - 1],
                  TestControl(t));
    }
  }
  const float* a = whole.reg.flat_values().data<float>();
  const float* b = sharded.reg.flat_values().data<float>();
  for (int64_t k = 0; k < total; ++k) ASSERT_EQ(a[k], b[k]) << k;
  // Shard state is the matching slice of the whole-range state.
  for (auto& shard : shards) {
    for (int64_t k = shard->begin(); k < shard->end(); ++k) {
      ASSERT_EQ(shard->exp_avg().At(k - shard->begin()), full.exp_avg().At(k));
      ASSERT_EQ(shard->exp_avg_sq().At(k - shard->begin()), full.exp_avg_sq().At(k));
    }
  }
}

// A matrix behind a scalar starts off a 256-byte line: its row's head up
// to the line is a row of its own, and the update is the same, bit for bit,
// as two optimizers that cut the range at that line.
TEST(AdamWTest, ARowOffALineSplitsThereWithTheSameUpdate) {
  auto make = [](ParamRegistry& reg) {
    reg.Create({"beta", {1}, ParamRole::kOutputNormScale, InitSpec::Normal(1.0), {}});
    reg.Create({"w", {8, 40}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
    SM_CHECK_OK(reg.Materialize(7, DType::kF32, Device::kCPU));
  };
  ParamRegistry whole_reg, cut_reg;
  make(whole_reg);
  make(cut_reg);
  const config::OptimizerConfig opt;
  const ParamGroups whole_groups =
      ParamGroups::Create(whole_reg, opt, ScaleVectorConfig::IWD).value();
  const ParamGroups cut_groups = ParamGroups::Create(cut_reg, opt, ScaleVectorConfig::IWD).value();
  const int64_t w_begin = whole_reg.Find("w")->flat_offset, total = whole_reg.total_local_numel();
  ASSERT_GT(w_begin % AdamW::kLineElements, 0);
  const int64_t line = AdamW::kLineElements;
  ASSERT_LT(line, total);

  const float w0 = whole_reg.flat_values().data<float>()[w_begin];
  AdamW whole(kOptions, whole_groups, 0, total, DType::kF32);
  EXPECT_EQ(whole.num_segments(), 3);  // β; w's head to the line; the rest
  AdamW head(kOptions, cut_groups, 0, line, DType::kF32);
  AdamW tail(kOptions, cut_groups, line, total, DType::kF32);
  EXPECT_EQ(head.num_segments() + tail.num_segments(), 3);
  for (int t = 1; t <= 3; ++t) {
    std::vector<double> g(total);
    for (int64_t i = 0; i < total; ++i) g[i] = std::sin(0.7 * i + 1.3 * t);
    for (ParamRegistry* reg : {&whole_reg, &cut_reg}) {
      Tensor(reg->flat_grads()).CopyFrom(Tensor::FromVector({total}, g, DType::kF64));
    }
    whole.Step(ExecContext::Cpu(), whole_reg.flat_values(), whole_reg.flat_grads(), kLr[t - 1],
               TestControl(t));
    head.Step(ExecContext::Cpu(), cut_reg.flat_values().Narrow(0, 0, line),
              cut_reg.flat_grads().Narrow(0, 0, line), kLr[t - 1], TestControl(t));
    tail.Step(ExecContext::Cpu(), cut_reg.flat_values().Narrow(0, line, total - line),
              cut_reg.flat_grads().Narrow(0, line, total - line), kLr[t - 1], TestControl(t));
  }
  const float* a = whole_reg.flat_values().data<float>();
  const float* b = cut_reg.flat_values().data<float>();
  for (int64_t k = 0; k < total; ++k) ASSERT_EQ(a[k], b[k]) << k;
  EXPECT_NE(a[w_begin], w0);  // the row's head was updated
}

}  // namespace
}  // namespace scalemoe
