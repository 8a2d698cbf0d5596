#include "optim/optimizer.h"

#include <cmath>
#include <limits>
#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "optim/optimizer_config.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

config::RunConfig Config(config::OptimizerConfig::Type type) {
  config::RunConfig c;
  c.mutable_optimizer()->set_type(type);
  c.mutable_optimizer()->set_lr(1e-2);
  c.mutable_optimizer()->set_min_lr(1e-3);
  c.mutable_optimizer()->set_grad_clip(0.0);
  c.mutable_schedule()->set_warmup_steps(2);
  c.mutable_train()->set_train_steps(10);
  return c;
}

struct Model {
  explicit Model(DType dtype = DType::kF32) {
    reg.Create({"emb", {6, 4}, ParamRole::kEmbedding, InitSpec::Normal(0.5), {}});
    reg.Create({"gamma", {4}, ParamRole::kInputNormScale, InitSpec::Ones(), {}});
    reg.Create({"w", {4, 3}, ParamRole::kLinear, InitSpec::Normal(0.5), {}});
    reg.Create({"u", {3}, ParamRole::kOutputNormScale, InitSpec::Ones(), {}});
    reg.Create({"e", {5, 3}, ParamRole::kExpertLinear, InitSpec::Normal(0.5), {}});
    SM_CHECK_OK(reg.Materialize(3, dtype, Device::kCPU));
  }
  // Every parameter's elements; the padding before aligned matrices
  // (core/params.h) stays zero, as in training.
  void SetGrads(int t) {
    const int64_t n = reg.total_local_numel();
    std::vector<double> g(n, 0.0);
    for (const auto& p : reg.params()) {
      for (int64_t i = p->flat_offset; i < p->flat_offset + p->local_numel(); ++i) {
        g[i] = std::sin(0.37 * i + 0.9 * t) * (1 + i % 5);
      }
    }
    Tensor(reg.flat_grads()).CopyFrom(Tensor::FromVector({n}, g, DType::kF64));
  }
  ParamRegistry reg;
};

TEST(OptimizerTest, StepUsesAndReportsTheScheduledRate) {
  Model m;
  auto opt = Optimizer::Create(Config(config::OptimizerConfig::MUON), m.reg);
  ASSERT_TRUE(opt.ok()) << opt.status();
  const std::vector<double> before = m.reg.flat_values().ToVector();
  m.SetGrads(0);
  const ExecContext ctx = ExecContext::Cpu();
  const StepStats stats = ReadStepStats(ctx, (*opt)->Step(ctx, 0));
  EXPECT_TRUE(stats.applied);
  EXPECT_DOUBLE_EQ(stats.lr, 0.5e-2);       // warm-up step 0 of 2
  EXPECT_DOUBLE_EQ(stats.muon_lr, 0.01);    // muon_lr 0.02 on the same curve
  EXPECT_DOUBLE_EQ(stats.lr, (*opt)->LearningRateAt(0));
  EXPECT_EQ((*opt)->num_updates(), 1);
  EXPECT_NE(m.reg.flat_values().ToVector(), before);
  // Adam's first step moves every AdamW element by about lr (|m̂/sqrt(v̂)| = 1).
  const Param* gamma = m.reg.Find("gamma");
  for (int64_t i = 0; i < gamma->local_numel(); ++i) {
    const double decayed = 1.0 * (1 - 0.5e-2 * 0.1);
    EXPECT_NEAR(std::abs(gamma->value.At(i) - decayed), 0.5e-2, 1e-6);
  }
}

// Clipping scales the gradients inside the update: the step equals an
// unclipped step on gradients scaled to the max norm, the grad buffer keeps
// its values, and the pre-clip norm is reported.
TEST(OptimizerTest, ClipsBeforeTheUpdateAndReportsThePreClipNorm) {
  Model clipped, prescaled;
  config::RunConfig c = Config(config::OptimizerConfig::ADAMW);
  c.mutable_optimizer()->set_grad_clip(0.5);
  auto opt = Optimizer::Create(c, clipped.reg);
  auto reference = Optimizer::Create(Config(config::OptimizerConfig::ADAMW), prescaled.reg);
  ASSERT_TRUE(opt.ok());
  ASSERT_TRUE(reference.ok());
  clipped.SetGrads(1);
  const std::vector<double> grads = clipped.reg.flat_grads().ToVector();
  double sum = 0;
  for (double g : grads) sum += g * g;
  const double norm = std::sqrt(sum);
  ASSERT_GT(norm, 0.5);
  std::vector<double> scaled = grads;
  for (double& g : scaled) g *= 0.5 / norm;
  Tensor(prescaled.reg.flat_grads())
      .CopyFrom(Tensor::FromVector({static_cast<int64_t>(scaled.size())}, scaled, DType::kF64));
  const ExecContext ctx = ExecContext::Cpu();
  const StepStats stats = ReadStepStats(ctx, (*opt)->Step(ctx, 3));
  (*reference)->Step(ctx, 3);
  EXPECT_NEAR(stats.grad_norm, norm, 1e-6 * norm);
  EXPECT_EQ(clipped.reg.flat_grads().ToVector(), grads);
  const std::vector<double> got = clipped.reg.flat_values().ToVector();
  const std::vector<double> want = prescaled.reg.flat_values().ToVector();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << i;
}

TEST(OptimizerTest, NonFiniteGradientLeavesEverythingUntouched) {
  Model m;
  auto opt = Optimizer::Create(Config(config::OptimizerConfig::MUON), m.reg);
  ASSERT_TRUE(opt.ok());
  const std::vector<double> before = m.reg.flat_values().ToVector();
  m.SetGrads(0);
  m.reg.flat_grads().data<float>()[7] = std::numeric_limits<float>::infinity();
  const ExecContext ctx = ExecContext::Cpu();
  const StepStats stats = ReadStepStats(ctx, (*opt)->Step(ctx, 0));
  EXPECT_FALSE(stats.applied);
  EXPECT_TRUE(std::isinf(stats.grad_norm));
  EXPECT_EQ(m.reg.flat_values().ToVector(), before);
  EXPECT_EQ((*opt)->num_updates(), 0);
  for (const auto& [name, t] : (*opt)->StateTensors()) {
    for (double v : t.ToVector()) EXPECT_EQ(v, 0.0) << name;
  }
}

// A non-finite step after good ones (state no longer zero) leaves values,
// state and the update count bit-identical, so the next good step is the one
// a run without the bad step takes.
TEST(OptimizerTest, NonFiniteStepIsSkippedOnTheDevice) {
  for (auto type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    SCOPED_TRACE(config::OptimizerConfig::Type_Name(type));
    config::RunConfig c = Config(type);
    c.mutable_optimizer()->set_grad_clip(1.0);
    Model a, b;
    auto opt_a = Optimizer::Create(c, a.reg);
    auto opt_b = Optimizer::Create(c, b.reg);
    ASSERT_TRUE(opt_a.ok() && opt_b.ok());
    const ExecContext ctx = ExecContext::Cpu();
    for (int t = 0; t < 2; ++t) {
      a.SetGrads(t);
      b.SetGrads(t);
      (*opt_a)->Step(ctx, t);
      (*opt_b)->Step(ctx, t);
    }
    const std::vector<double> values = a.reg.flat_values().ToVector();
    std::vector<std::vector<double>> state;
    for (const auto& [name, t] : (*opt_a)->StateTensors()) state.push_back(t.ToVector());
    a.SetGrads(2);
    a.reg.flat_grads().data<float>()[3] = std::numeric_limits<float>::quiet_NaN();
    const StepStats bad = ReadStepStats(ctx, (*opt_a)->Step(ctx, 2));
    EXPECT_FALSE(bad.applied);
    EXPECT_TRUE(std::isnan(bad.grad_norm));
    EXPECT_EQ(a.reg.flat_values().ToVector(), values);
    size_t i = 0;
    for (const auto& [name, t] : (*opt_a)->StateTensors()) {
      EXPECT_EQ(t.ToVector(), state[i++]) << name;
    }
    EXPECT_EQ((*opt_a)->num_updates(), 2);
    a.SetGrads(3);
    b.SetGrads(3);
    EXPECT_TRUE(ReadStepStats(ctx, (*opt_a)->Step(ctx, 3)).applied);
    (*opt_b)->Step(ctx, 3);
    EXPECT_EQ(a.reg.flat_values().ToVector(), b.reg.flat_values().ToVector());
  }
}

// The step stays on the context: no device-to-host read, finite or not.
TEST(OptimizerTest, StepReadsNothingOnTheHost) {
  for (auto type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    Model m;
    const ExecContext ctx = ExecContext::Cpu();
    auto opt = Optimizer::Create(Config(type), m.reg, ctx);
    ASSERT_TRUE(opt.ok());
    const int64_t before = ctx.counters().host_reads.load();
    m.SetGrads(0);
    (*opt)->Step(ctx, 0);
    m.reg.flat_grads().data<float>()[1] = std::numeric_limits<float>::infinity();
    (*opt)->Step(ctx, 1);
    EXPECT_EQ(ctx.counters().host_reads.load(), before);
  }
}

// Exact resume: save the state after 3 steps, load it into a fresh optimizer
// over a registry holding the same values; the next steps are bit-identical.
TEST(OptimizerTest, StateRoundTripGivesBitIdenticalNextSteps) {
  for (auto type : {config::OptimizerConfig::ADAMW, config::OptimizerConfig::MUON}) {
    SCOPED_TRACE(config::OptimizerConfig::Type_Name(type));
    Model a;
    auto opt_a = Optimizer::Create(Config(type), a.reg);
    ASSERT_TRUE(opt_a.ok());
    for (int t = 0; t < 3; ++t) {
      a.SetGrads(t);
      (*opt_a)->Step(ExecContext::Cpu(), t);
    }
    NamedTensors saved;
    for (const auto& [name, tensor] : (*opt_a)->StateTensors()) {
      saved.emplace_back(name, tensor.Clone());
    }
    EXPECT_EQ(saved.size(), type == config::OptimizerConfig::MUON ? 4u : 3u);

    Model b;
    Tensor(b.reg.flat_values()).CopyFrom(a.reg.flat_values());
    auto opt_b = Optimizer::Create(Config(type), b.reg);
    ASSERT_TRUE(opt_b.ok());
    ASSERT_TRUE((*opt_b)->LoadStateTensors(saved).ok());
    EXPECT_EQ((*opt_b)->num_updates(), 3);
    for (int t = 3; t < 5; ++t) {
      a.SetGrads(t);
      b.SetGrads(t);
      (*opt_a)->Step(ExecContext::Cpu(), t);
      (*opt_b)->Step(ExecContext::Cpu(), t);
    }
    const float* va = a.reg.flat_values().data<float>();
    const float* vb = b.reg.flat_values().data<float>();
    for (int64_t i = 0; i < a.reg.total_local_numel(); ++i) ASSERT_EQ(va[i], vb[i]) << i;
  }
}

TEST(OptimizerTest, LoadRejectsMissingExtraAndMisSizedState) {
  Model m;
  auto opt = Optimizer::Create(Config(config::OptimizerConfig::ADAMW), m.reg);
  ASSERT_TRUE(opt.ok());
  NamedTensors state;
  for (const auto& [name, t] : (*opt)->StateTensors()) state.emplace_back(name, t.Clone());

  NamedTensors missing(state.begin() + 1, state.end());
  Status s = (*opt)->LoadStateTensors(missing);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("optimizer.adam_m"));

  NamedTensors extra = state;
  extra.emplace_back("optimizer.muon_momentum", state[0].second);
  s = (*opt)->LoadStateTensors(extra);
  EXPECT_THAT(std::string(s.message()), HasSubstr("optimizer.muon_momentum"));

  NamedTensors small = state;
  small[1].second = Tensor::Zeros({3}, DType::kF32);
  s = (*opt)->LoadStateTensors(small);
  EXPECT_THAT(std::string(s.message()), HasSubstr("optimizer.adam_v"));
}

// The config rules are the validator's (one validation path); Create
// checks only what it needs of the registry, and ParamGroups' role names.
TEST(OptimizerTest, ValidatorNamesTheFieldAndCreateRejectsWhatItCannotRun) {
  auto problems = [](const config::RunConfig& c) {
    ConfigProblems p;
    ValidateOptimizerConfig(c, p);
    return std::string(p.ToStatus("optimizer").message());
  };
  EXPECT_EQ(problems(Config(config::OptimizerConfig::MUON)), "");
  config::RunConfig c = Config(config::OptimizerConfig::ADAMW);
  c.mutable_optimizer()->set_beta2(1.0);
  EXPECT_THAT(problems(c), HasSubstr("optimizer.beta2=1"));
  c = Config(config::OptimizerConfig::MUON);
  c.mutable_optimizer()->set_muon_ns_steps(0);
  EXPECT_THAT(problems(c), HasSubstr("optimizer.muon_ns_steps=0"));
  c = Config(config::OptimizerConfig::ADAMW);
  c.mutable_optimizer()->add_role_multipliers()->set_role("expert_bias");
  EXPECT_THAT(problems(c), HasSubstr("role='expert_bias' is not a parameter role"));

  Model m;
  c = Config(config::OptimizerConfig::ADAMW);
  c.mutable_optimizer()->add_role_multipliers()->set_role("gamma");
  EXPECT_THAT(std::string(Optimizer::Create(c, m.reg).status().message()), HasSubstr("'gamma'"));

  ParamRegistry unmaterialized;
  EXPECT_EQ(Optimizer::Create(Config(config::OptimizerConfig::ADAMW), unmaterialized).status().code(),
            absl::StatusCode::kFailedPrecondition);

  ParamRegistry bf16;
  bf16.Create({"w", {2, 2}, ParamRole::kLinear, InitSpec::Ones(), {}});
  ASSERT_TRUE(bf16.Materialize(1, DType::kBF16, Device::kCPU).ok());
  EXPECT_EQ(Optimizer::Create(Config(config::OptimizerConfig::ADAMW), bf16).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace scalemoe
