// The whole model (MoeTransformer): f64 gradients w.r.t. every parameter for
// every scale-vector variant (dense and MoE), function preservation at init,
// fold vs per-token paths, one GEMM for gate|up and for q|k|v against
// separate ones, micro-batch accumulation, determinism, sandwich norms,
// batch validation and the parameter counts.
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/op_timer.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using SV = config::ScaleVectorConfig;

struct Variant {
  std::string name;
  std::function<void(config::RunConfig&)> apply;
  bool function_preserving = true;
};

void AllProjections(SV* sv) {
  for (auto p : {SV::Q, SV::K, SV::V, SV::O, SV::GATE, SV::UP, SV::DOWN}) {
    sv->add_dual_projections(p);
  }
}

std::vector<Variant> Variants() {
  return {
      {"NONE", [](config::RunConfig& c) { c.mutable_scale_vectors()->set_mode(SV::NONE); }},
      {"SHARED", [](config::RunConfig&) {}},
      {"PER_BRANCH",
       [](config::RunConfig& c) { c.mutable_scale_vectors()->set_mode(SV::PER_BRANCH); }},
      {"DUAL", [](config::RunConfig& c) { c.mutable_scale_vectors()->set_placement(SV::DUAL); }},
      {"DUAL_NORMALIZED",
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_placement(SV::DUAL_NORMALIZED);
       }},
      {"MAGNITUDE_DIRECTION",
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_reparam(SV::MAGNITUDE_DIRECTION);
       }},
      {"MAGNITUDE_DIRECTION_NORMALIZED",
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_reparam(SV::MAGNITUDE_DIRECTION_NORMALIZED);
       }},
      {"UNION_DUAL",
       [](config::RunConfig& c) {
         SV* sv = c.mutable_scale_vectors();
         sv->set_mode(SV::PER_BRANCH);
         sv->set_placement(SV::DUAL);
         AllProjections(sv);
         sv->set_reparam(SV::MAGNITUDE_DIRECTION_NORMALIZED);
         c.mutable_model()->set_qk_norm(true);
         c.mutable_model()->set_sandwich_norm(true);
       }},
      {"UNION_DNP",
       [](config::RunConfig& c) {
         SV* sv = c.mutable_scale_vectors();
         sv->set_mode(SV::PER_BRANCH);
         sv->set_placement(SV::DUAL_NORMALIZED);
         AllProjections(sv);
         sv->set_reparam(SV::MAGNITUDE_DIRECTION);
         sv->set_dnp_normalize_v(true);  // changes the function: no init check
         c.mutable_model()->set_sandwich_norm(true);
       },
       /*function_preserving=*/false},
  };
}

Tensor Tokens(uint64_t stream, int64_t vocab = 16) {
  std::vector<double> ids(10);
  for (int i = 0; i < 10; ++i) {
    ids[i] = static_cast<double>(Philox4x32_10({{static_cast<uint32_t>(i), 0, 0, 0}},
                                               static_cast<uint32_t>(stream), 3)
                                     .v[0] %
                                 vocab);
  }
  return Tensor::FromVector({2, 5}, ids, DType::kI32);
}

// A materialized model with its registry.
struct Built {
  std::unique_ptr<ParamRegistry> registry = std::make_unique<ParamRegistry>();
  std::unique_ptr<MoeTransformer> model;
};

Built Build(const config::RunConfig& cfg, DType dtype) {
  Built b;
  b.model = std::make_unique<MoeTransformer>(*b.registry, cfg);
  SM_CHECK_OK(b.registry->Materialize(cfg.train().seed(), dtype, Device::kCPU));
  return b;
}

// Full step: grads of loss_grad_scale · total loss.
LossBreakdown Step(Built& b, const Tensor& tokens, const Tensor& targets) {
  const ExecContext ctx;
  b.registry->ZeroGrads();
  Must(b.model->PrepareStep(ctx));
  LossBreakdown loss = Must(b.model->Forward(ctx, tokens, targets));
  Must(b.model->Backward(ctx, 1.0));
  Must(b.model->FinishBackward(ctx));
  return loss;
}

class ModelVariantTest : public ::testing::TestWithParam<std::tuple<int, int>> {
 protected:
  Variant variant() const { return Variants()[std::get<0>(GetParam())]; }
  config::RunConfig Config() const {
    config::RunConfig cfg = testing::TinyConfig(std::get<1>(GetParam()));
    variant().apply(cfg);
    return cfg;
  }
};

TEST_P(ModelVariantTest, GradientsMatchFiniteDifferences) {
  Built b = Build(Config(), DType::kF64);
  testing::PerturbScaleVectors(*b.registry, 11);
  const Tensor tokens = Tokens(1), targets = Tokens(2);
  const LossBreakdown loss = Step(b, tokens, targets);
  EXPECT_GT(loss.cross_entropy, 0.0);
  const ExecContext ctx;
  auto total = [&] {
    Must(b.model->PrepareStep(ctx));
    return Must(b.model->Evaluate(ctx, tokens, targets)).total;
  };
  testing::ExpectAllParamGrads(*b.registry, total, 32);
}

TEST_P(ModelVariantTest, InitComputesTheSharedBaselineFunction) {
  if (!variant().function_preserving) GTEST_SKIP() << "dnp_normalize_v adds a norm on v";
  config::RunConfig cfg = Config();
  config::RunConfig base = testing::TinyConfig(std::get<1>(GetParam()));
  base.mutable_model()->CopyFrom(cfg.model());
  // DNP's output side is a QK-norm: its baseline is SHARED with QK-norm.
  if (cfg.scale_vectors().placement() == SV::DUAL_NORMALIZED) {
    base.mutable_model()->set_qk_norm(true);
  }
  const ExecContext ctx;
  const Tensor tokens = Tokens(3), targets = Tokens(4);
  for (DType dtype : {DType::kF64, DType::kF32}) {
    Built v = Build(cfg, dtype), s = Build(base, dtype);
    Must(v.model->PrepareStep(ctx));
    Must(s.model->PrepareStep(ctx));
    const double lv = Must(v.model->Evaluate(ctx, tokens, targets)).total;
    const double ls = Must(s.model->Evaluate(ctx, tokens, targets)).total;
    const std::vector<double> a = v.model->logits().ToVector(), c = s.model->logits().ToVector();
    ASSERT_EQ(a.size(), c.size());
    if (dtype == DType::kF64) {
      EXPECT_EQ(lv, ls);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], c[i]) << i;
    } else {
      EXPECT_NEAR(lv, ls, 1e-6);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], c[i], 1e-6) << i;
    }
  }
}

TEST_P(ModelVariantTest, FoldAndPerTokenPathsAgree) {
  config::RunConfig fold = Config(), per_token = Config();
  per_token.mutable_scale_vectors()->set_fold_into_weights(false);
  Built a = Build(fold, DType::kF64), b = Build(per_token, DType::kF64);
  testing::PerturbScaleVectors(*a.registry, 12);
  testing::PerturbScaleVectors(*b.registry, 12);
  const Tensor tokens = Tokens(5), targets = Tokens(6);
  const double la = Step(a, tokens, targets).total, lb = Step(b, tokens, targets).total;
  EXPECT_NEAR(la, lb, 1e-12);
  const std::vector<double> ga = a.registry->flat_grads().ToVector();
  const std::vector<double> gb = b.registry->flat_grads().ToVector();
  ASSERT_EQ(ga.size(), gb.size());
  for (size_t i = 0; i < ga.size(); ++i) ASSERT_NEAR(ga[i], gb[i], 1e-11) << i;
}

// Forming W_eff just in time runs the same ops on the same values as
// keeping it: the same bits. (A just-in-time fold runs the experts one
// map at a time, so both run their gate and up GEMMs apart: one GEMM over
// both rounds d_x in another order.)
TEST_P(ModelVariantTest, FoldJustInTimeEqualsTheKeptFold) {
  config::RunConfig kept = Config(), jit = Config();
  kept.mutable_moe()->set_fuse_gate_up(false);
  jit.mutable_moe()->set_fuse_gate_up(false);
  jit.mutable_scale_vectors()->set_fold_just_in_time(true);
  Built a = Build(kept, DType::kF32), b = Build(jit, DType::kF32);
  testing::PerturbScaleVectors(*a.registry, 12);
  testing::PerturbScaleVectors(*b.registry, 12);
  const Tensor tokens = Tokens(5), targets = Tokens(6);
  EXPECT_EQ(Step(a, tokens, targets).total, Step(b, tokens, targets).total);
  EXPECT_EQ(a.registry->flat_grads().ToVector(), b.registry->flat_grads().ToVector());
}

// The experts' gate and up as one GEMM over the stacked weights
// (moe.fuse_gate_up, the default) against two: the same model, its loss and
// every gradient to f64 rounding (d_x sums the two halves in another order).
TEST_P(ModelVariantTest, FusedGateUpAgreesWithSeparateGemms) {
  config::RunConfig fused = Config(), separate = Config();
  if (fused.moe().num_experts() == 0) GTEST_SKIP() << "dense: no experts";
  separate.mutable_moe()->set_fuse_gate_up(false);
  Built a = Build(fused, DType::kF64), b = Build(separate, DType::kF64);
  testing::PerturbScaleVectors(*a.registry, 12);
  testing::PerturbScaleVectors(*b.registry, 12);
  const Tensor tokens = Tokens(5), targets = Tokens(6);
  EXPECT_NEAR(Step(a, tokens, targets).total, Step(b, tokens, targets).total, 1e-12);
  const std::vector<double> ga = a.registry->flat_grads().ToVector();
  const std::vector<double> gb = b.registry->flat_grads().ToVector();
  ASSERT_EQ(ga.size(), gb.size());
  for (size_t i = 0; i < ga.size(); ++i) ASSERT_NEAR(ga[i], gb[i], 1e-11) << i;
}

// One step of `b` with the op timer on: its loss, and the calls of each op.
std::map<std::string, int64_t> OpCalls(Built& b, const Tensor& tokens, const Tensor& targets,
                                       LossBreakdown* loss) {
  op_timer::Collect();
  op_timer::SetEnabled(true);
  *loss = Step(b, tokens, targets);
  op_timer::SetEnabled(false);
  std::map<std::string, int64_t> calls;
  for (const op_timer::OpTime& t : op_timer::Collect()) calls[t.op] = t.calls;
  return calls;
}

// A MoE option that changes how the experts run, not what they compute:
// `set` on against off, fp32 and bf16, the same loss and gradients bit for
// bit; `check` sees both steps' op calls (on, off).
void ExpectSameBits(const config::RunConfig& base,
                    const std::function<void(config::RunConfig&)>& set,
                    const std::function<void(std::map<std::string, int64_t>&,
                                             std::map<std::string, int64_t>&, int64_t)>& check) {
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    config::RunConfig on = base, off = base;
    set(on);
    for (config::RunConfig* cfg : {&on, &off}) {
      if (bf16) cfg->mutable_train()->set_precision(config::TrainConfig::BF16);
    }
    Built a = Build(on, DType::kF32), b = Build(off, DType::kF32);
    testing::PerturbScaleVectors(*a.registry, 12);
    testing::PerturbScaleVectors(*b.registry, 12);
    const Tensor tokens = Tokens(5), targets = Tokens(6);
    LossBreakdown la, lb;
    std::map<std::string, int64_t> calls_on = OpCalls(a, tokens, targets, &la);
    std::map<std::string, int64_t> calls_off = OpCalls(b, tokens, targets, &lb);
    EXPECT_EQ(la.total, lb.total);
    EXPECT_EQ(a.registry->flat_grads().ToVector(), b.registry->flat_grads().ToVector());
    const int64_t moe_layers = static_cast<int64_t>(a.model->MoeLayerIndices().size());
    ASSERT_GT(moe_layers, 0);
    check(calls_on, calls_off, moe_layers);
  }
}

// The permutation read by the experts' first GEMMs through its index
// (moe.fuse_permute) against the permuted copy: the same bits, the forward's
// GEMMs gathered in every MoE layer and its GatherRows moved to the backward
// (the weight gradient's input), once per layer.
TEST_P(ModelVariantTest, FusedPermuteGivesTheSameBits) {
  if (Config().moe().num_experts() == 0) GTEST_SKIP() << "dense: no experts";
  ExpectSameBits(
      Config(), [](config::RunConfig& c) { c.mutable_moe()->set_fuse_permute(true); },
      [](auto& on, auto& off, int64_t moe_layers) {
        EXPECT_EQ(on["GatherRows"], off["GatherRows"]);
        EXPECT_EQ(on["GroupedGemmGathered"], off["GroupedGemm"] - on["GroupedGemm"]);
        EXPECT_GE(on["GroupedGemmGathered"], moe_layers);
        EXPECT_EQ(on["GroupedGemmWeightGradGathered"], 0);
        EXPECT_EQ(on["GroupedGemmWeightGrad"], off["GroupedGemmWeightGrad"]);
      });
}

// SwiGLU in the experts' gate|up GEMM and its backward in the down
// projection's data gradient (moe.fuse_swiglu) against the SwiGluPacked
// passes, alone and with moe.fuse_permute: the same bits, one op for two in
// every MoE layer both ways (gate and up are one GEMM in every variant).
TEST_P(ModelVariantTest, FusedSwiGluGivesTheSameBits) {
  if (Config().moe().num_experts() == 0) GTEST_SKIP() << "dense: no experts";
  for (const bool permute : {false, true}) {
    SCOPED_TRACE(permute ? "with moe.fuse_permute" : "alone");
    config::RunConfig base = Config();
    base.mutable_moe()->set_fuse_permute(permute);
    ExpectSameBits(
        base, [](config::RunConfig& c) { c.mutable_moe()->set_fuse_swiglu(true); },
        [](auto& on, auto& off, int64_t moe_layers) {
          EXPECT_EQ(on["GroupedGemmSwiGlu"], moe_layers);
          EXPECT_EQ(on["GroupedGemmSwiGlu"], off["SwiGluPacked"] - on["SwiGluPacked"]);
          EXPECT_EQ(on["GroupedGemmSwiGluBackward"], moe_layers);
          EXPECT_EQ(on["GroupedGemmSwiGluBackward"],
                    off["SwiGluPackedBackward"] - on["SwiGluPackedBackward"]);
          // The forward's gate|up product and the backward's d_h product.
          EXPECT_EQ(on["GroupedGemmSwiGlu"] + on["GroupedGemmSwiGluBackward"] + on["GroupedGemm"] +
                        on["GroupedGemmGathered"],
                    off["GroupedGemm"] + off["GroupedGemmGathered"]);
        });
  }
}

// Gemm calls of one step (the op timer counts every ops:: call).
int64_t GemmCalls(Built& b, const Tensor& tokens, const Tensor& targets, LossBreakdown* loss) {
  op_timer::Collect();
  op_timer::SetEnabled(true);
  *loss = Step(b, tokens, targets);
  op_timer::SetEnabled(false);
  int64_t calls = 0;
  for (const op_timer::OpTime& t : op_timer::Collect()) {
    if (t.op == "Gemm") calls = t.calls;
  }
  return calls;
}

// q, k and v as one GEMM over their stacked weights (model.fuse_qkv)
// against three: the same model, its loss and every gradient to f64
// rounding (d_n sums the three in another order), in every layer (one
// GEMM for three in the forward, the weight gradient and d_n: six fewer),
// and with bf16 operands to their rounding, the per-head norms reading
// their input in fp32 or in bf16 (train.fp32_head_norm_input).
TEST_P(ModelVariantTest, FusedQkvAgreesWithSeparateGemms) {
  struct Case {
    bool bf16, fp32_head_norm_input;
  };
  for (const Case c : {Case{false, true}, Case{true, true}, Case{true, false}}) {
    const bool bf16 = c.bf16;
    SCOPED_TRACE(!bf16 ? "fp32" : c.fp32_head_norm_input ? "bf16" : "bf16, bf16 head-norm input");
    config::RunConfig fused = Config(), separate = Config();
    fused.mutable_model()->set_fuse_qkv(true);
    for (config::RunConfig* cfg : {&fused, &separate}) {
      if (bf16) cfg->mutable_train()->set_precision(config::TrainConfig::BF16);
      cfg->mutable_train()->set_fp32_head_norm_input(c.fp32_head_norm_input);
    }
    const DType master = bf16 ? DType::kF32 : DType::kF64;
    Built a = Build(fused, master), b = Build(separate, master);
    testing::PerturbScaleVectors(*a.registry, 12);
    testing::PerturbScaleVectors(*b.registry, 12);
    const Tensor tokens = Tokens(5), targets = Tokens(6);
    LossBreakdown la, lb;
    const int64_t calls_a = GemmCalls(a, tokens, targets, &la);
    const int64_t calls_b = GemmCalls(b, tokens, targets, &lb);
    // Five fewer where v keeps a forward GEMM of its own (DNP's q and k
    // norms read f32, v is bf16); six when they read bf16.
    const int64_t layers = fused.model().num_layers();
    EXPECT_TRUE(calls_b - calls_a == 6 * layers ||
                (bf16 && c.fp32_head_norm_input && calls_b - calls_a == 5 * layers))
        << calls_b << " GEMMs against " << calls_a;
    const std::vector<double> ga = a.registry->flat_grads().ToVector();
    const std::vector<double> gb = b.registry->flat_grads().ToVector();
    ASSERT_EQ(ga.size(), gb.size());
    if (!bf16) {
      EXPECT_NEAR(la.total, lb.total, 1e-12);
      for (size_t i = 0; i < ga.size(); ++i) ASSERT_NEAR(ga[i], gb[i], 1e-11) << i;
      continue;
    }
    // bf16: d_n's f32 sums in another order round into the bf16 residual
    // stream's gradient a unit apart here and there (2^-8 relative), which
    // this small model carries far. Each run against the fp32 one: one GEMM
    // is no further from it than three are, give or take that rounding.
    config::RunConfig exact = separate;
    exact.mutable_train()->set_precision(config::TrainConfig::FP32);
    Built c = Build(exact, master);
    testing::PerturbScaleVectors(*c.registry, 12);
    Step(c, tokens, targets);
    const std::vector<double> gc = c.registry->flat_grads().ToVector();
    auto distance = [&](const std::vector<double>& g) {
      double diff = 0, norm = 0;
      for (size_t i = 0; i < g.size(); ++i) {
        diff += (g[i] - gc[i]) * (g[i] - gc[i]);
        norm += gc[i] * gc[i];
      }
      return std::sqrt(diff / norm);
    };
    const double one = distance(ga), three = distance(gb);
    std::printf("bf16 gradients against fp32: one q|k|v GEMM %.3g, three %.3g\n", one, three);
    EXPECT_NEAR(la.total, lb.total, 1e-4 * std::abs(lb.total));
    EXPECT_LE(one, 1.5 * three);
  }
}

std::string VariantName(const ::testing::TestParamInfo<std::tuple<int, int>>& info) {
  return Variants()[std::get<0>(info.param)].name +
         (std::get<1>(info.param) > 0 ? "_moe" : "_dense");
}

// The LM head and its loss in chunks of tokens (train.loss_chunk_tokens:
// 3 of 10 leaves a chunk of 1; 5 halves them) against the whole
// micro-batch: the same losses and every gradient to f64 rounding (the
// chunks' means weighted, the head's weight gradient summed over them),
// over two micro-batches of loss_grad_scale 1/2; no logits are kept.
TEST_P(ModelVariantTest, ChunkedLossAgreesWithTheWholeMicroBatch) {
  const ExecContext ctx;
  const Tensor t1 = Tokens(7), y1 = Tokens(8), t2 = Tokens(9), y2 = Tokens(10);
  auto run = [&](int chunk, std::vector<double>* losses) {
    config::RunConfig cfg = Config();
    cfg.mutable_train()->set_loss_chunk_tokens(chunk);
    Built b = Build(cfg, DType::kF64);
    testing::PerturbScaleVectors(*b.registry, 14);
    b.registry->ZeroGrads();
    Must(b.model->PrepareStep(ctx));
    for (const auto& [t, y] : {std::pair{t1, y1}, std::pair{t2, y2}}) {
      const LossBreakdown l = Must(b.model->Forward(ctx, t, y));
      losses->push_back(l.total);
      losses->push_back(l.cross_entropy);
      EXPECT_EQ(b.model->logits().defined(), chunk == 0);
      Must(b.model->Backward(ctx, 0.5));
    }
    Must(b.model->FinishBackward(ctx));
    losses->push_back(Must(b.model->Evaluate(ctx, t1, y1)).cross_entropy);
    return b.registry->flat_grads().ToVector();
  };
  std::vector<double> whole_losses;
  const std::vector<double> whole = run(0, &whole_losses);
  for (int chunk : {3, 5}) {
    SCOPED_TRACE(chunk);
    std::vector<double> losses;
    const std::vector<double> grads = run(chunk, &losses);
    ASSERT_EQ(losses.size(), whole_losses.size());
    for (size_t i = 0; i < losses.size(); ++i) {
      EXPECT_NEAR(losses[i], whole_losses[i], 1e-14 * std::abs(whole_losses[i])) << i;
    }
    ASSERT_EQ(grads.size(), whole.size());
    for (size_t i = 0; i < grads.size(); ++i) ASSERT_NEAR(grads[i], whole[i], 1e-13) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllVariants, ModelVariantTest,
                         ::testing::Combine(::testing::Range(0, 9), ::testing::Values(0, 4)),
                         VariantName);

// Two micro-batches with loss_grad_scale 1/2 give the gradient of the mean.
TEST(ModelTest, MicroBatchesAccumulateScaledGradients) {
  config::RunConfig cfg = testing::TinyConfig(4);
  Variants()[7].apply(cfg);
  Built b = Build(cfg, DType::kF64);
  testing::PerturbScaleVectors(*b.registry, 13);
  const ExecContext ctx;
  const Tensor t1 = Tokens(7), y1 = Tokens(8), t2 = Tokens(9), y2 = Tokens(10);
  b.registry->ZeroGrads();
  Must(b.model->PrepareStep(ctx));
  Must(b.model->Forward(ctx, t1, y1));
  Must(b.model->Backward(ctx, 0.5));
  Must(b.model->Forward(ctx, t2, y2));
  Must(b.model->Backward(ctx, 0.5));
  Must(b.model->FinishBackward(ctx));
  auto mean = [&] {
    Must(b.model->PrepareStep(ctx));
    return 0.5 * (Must(b.model->Evaluate(ctx, t1, y1)).total +
                  Must(b.model->Evaluate(ctx, t2, y2)).total);
  };
  testing::ExpectAllParamGrads(*b.registry, mean, 6);
}

TEST(ModelTest, DeterministicAcrossRuns) {
  config::RunConfig cfg = testing::TinyConfig(4);
  Variants()[7].apply(cfg);
  std::vector<double> grads[2];
  double losses[2];
  for (int run = 0; run < 2; ++run) {
    Built b = Build(cfg, DType::kF32);
    losses[run] = Step(b, Tokens(1), Tokens(2)).total;
    grads[run] = b.registry->flat_grads().ToVector();
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(grads[0], grads[1]);
}

TEST(ModelTest, SandwichNormsAreOutputNormScalesAndChangeTheFunction) {
  config::RunConfig cfg = testing::TinyConfig(0);
  cfg.mutable_model()->set_sandwich_norm(true);
  Built b = Build(cfg, DType::kF64);
  for (const char* name : {"layers.0.post_attn_norm.scale", "layers.1.post_ffn_norm.scale"}) {
    const Param* p = b.registry->Find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->spec.role, ParamRole::kOutputNormScale);
  }
  config::RunConfig none = cfg;
  none.mutable_scale_vectors()->set_mode(SV::NONE);
  ParamRegistry probe;
  MoeTransformer no_scales(probe, none);
  for (const auto& p : probe.params()) EXPECT_FALSE(IsScaleVector(p->spec.role)) << p->spec.name;
  Built plain = Build(testing::TinyConfig(0), DType::kF64);
  const ExecContext ctx;
  Must(b.model->PrepareStep(ctx));
  Must(plain.model->PrepareStep(ctx));
  EXPECT_NE(Must(b.model->Evaluate(ctx, Tokens(1), Tokens(2))).total,
            Must(plain.model->Evaluate(ctx, Tokens(1), Tokens(2))).total);
}

TEST(ModelTest, ParameterNamesFollowTheScheme) {
  config::RunConfig cfg = testing::TinyConfig(0);
  Variants()[7].apply(cfg);  // UNION_DUAL
  cfg.mutable_model()->set_tied_embeddings(false);
  ParamRegistry r;
  MoeTransformer model(r, cfg);
  for (const char* name :
       {"embedding.weight", "lm_head.weight", "layers.1.attn.w_q", "layers.1.attn.w_o",
        "layers.0.attn.gamma_q.alpha", "layers.0.attn.u_o.beta", "layers.0.mlp.gamma_up.alpha",
        "layers.0.mlp.u_down.alpha", "layers.0.attn.q_norm.scale.alpha", "final_norm.scale.beta",
        "layers.0.mlp.w_down"}) {
    EXPECT_NE(r.Find(name), nullptr) << name;
  }
  EXPECT_EQ(r.Find("layers.0.attn_norm.scale.alpha"), nullptr);  // PER_BRANCH: no shared γ
  EXPECT_EQ(r.Find("lm_head.weight")->spec.role, ParamRole::kLmHead);
}

TEST(ModelTest, BadBatchIsAClearError) {
  config::RunConfig cfg = testing::TinyConfig(0);
  ParamRegistry r;
  MoeTransformer model(r, cfg);
  Tensor bad = Tensor::FromVector({1, 2}, {3, 16}, DType::kI32);
  const Status s = model.CheckBatch(bad, bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("vocab_size"), std::string::npos) << s;
  Tensor long_seq = Tensor::Zeros({1, 6}, DType::kI32);
  EXPECT_NE(std::string(model.CheckBatch(long_seq, long_seq).message()).find("seq_length"),
            std::string::npos);
  EXPECT_TRUE(model.CheckBatch(Tokens(1), Tokens(2)).ok());
}

TEST(ModelTest, CountsOfTheDenseModel) {
  config::RunConfig cfg = testing::TinyConfig(0);
  ParamRegistry r;
  MoeTransformer model(r, cfg);
  const ModelCounts c = model.Counts();
  // embedding 16·8; per layer: q 8·8, k 4·8, v 4·8, o 8·8, mlp 3·12·8, γ 8 + 8.
  const int64_t per_layer = 64 + 32 + 32 + 64 + 3 * 96 + 16;
  EXPECT_EQ(c.total_params, 128 + 2 * per_layer + 8);
  EXPECT_EQ(c.active_params_per_token, c.total_params);
  EXPECT_EQ(c.scale_vector_params, 2 * 16 + 8);
  const double matmul = 128 + 2 * (per_layer - 16);
  EXPECT_DOUBLE_EQ(c.train_flops_per_token, 6 * matmul + 12.0 * 2 * 8 * 5);
  EXPECT_FALSE(r.materialized());
}

TEST(ModelTest, CountsOfTheMoeModelActivateTopKExperts) {
  config::RunConfig cfg = testing::TinyConfig(4);
  ParamRegistry r;
  MoeTransformer model(r, cfg);
  const ModelCounts c = model.Counts();
  int64_t routed = 0;
  for (const auto& p : r.params()) {
    if (p->spec.layout.expert >= 0) routed += NumElements(p->spec.shape);
  }
  ASSERT_GT(routed, 0);
  EXPECT_EQ(c.active_params_per_token, c.total_params - routed / 2);  // k/E = 2/4
}

}  // namespace
}  // namespace scalemoe
