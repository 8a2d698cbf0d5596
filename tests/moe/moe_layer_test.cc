// MoeLayer: gradients of every scale-vector variant, function preservation at
// init, fold vs per-token equivalence, shared experts, determinism.
#include "moe/moe_layer.h"

#include <cstring>
#include <memory>

#include "tests/moe/moe_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

using config::ScaleVectorConfig;
using testing::kHidden;
using testing::kTokens;

struct LayerRig {
  explicit LayerRig(const config::RunConfig& cfg, DType dtype = DType::kF64)
      : dtype(dtype) {
    layer = std::make_unique<MoeLayer>(registry, cfg, 0, "layers.0.moe", "layers.0.ffn_norm");
    SM_CHECK_OK(registry.Materialize(1234, dtype, Device::kCPU));
    n = testing::RandomTensor({kTokens, kHidden}, 1, 1.0, dtype);
    w = testing::RandomTensor({kTokens, kHidden}, 2, 1.0, dtype);
  }
  Tensor Output() {
    Must(layer->PrepareStep(ctx, dtype));
    Tensor out = Tensor::Empty(n.shape(), dtype);
    Must(layer->Forward(ctx, n, out));
    return out;
  }
  double Loss() {
    const Tensor out = Output();
    return testing::WeightedSum(out, w) + layer->aux_loss().At(0) + layer->z_loss().At(0);
  }
  // Gradients of Loss() into the registry; returns d_n.
  Tensor Gradients() {
    registry.ZeroGrads();
    Output();
    Tensor d_n = Tensor::Empty(n.shape(), dtype);
    Must(layer->Backward(ctx, w, d_n, 1.0));
    Must(layer->FinishBackward(ctx));
    return d_n;
  }
  void CheckGradients() {
    const Tensor d_n = Gradients();
    auto loss = [&] { return Loss(); };
    EXPECT_LE(testing::GradError(loss, n, d_n), testing::kGradTolerance) << "d_n";
    testing::ExpectParamGradsMatch(registry, loss);
  }

  ExecContext ctx = ExecContext::Cpu();
  DType dtype;
  ParamRegistry registry;
  std::unique_ptr<MoeLayer> layer;
  Tensor n, w;
};

struct Variant {
  const char* name;
  void (*apply)(ScaleVectorConfig*);
};

void SetDualExperts(ScaleVectorConfig* sv) {
  sv->add_dual_projections(ScaleVectorConfig::GATE);
  sv->add_dual_projections(ScaleVectorConfig::UP);
  sv->add_dual_projections(ScaleVectorConfig::DOWN);
}

const Variant kVariants[] = {
    {"Shared", [](ScaleVectorConfig*) {}},
    {"None", [](ScaleVectorConfig* sv) { sv->set_mode(ScaleVectorConfig::NONE); }},
    {"PerBranch", [](ScaleVectorConfig* sv) { sv->set_mode(ScaleVectorConfig::PER_BRANCH); }},
    {"PerBranchRouterOnly",
     [](ScaleVectorConfig* sv) {
       sv->set_mode(ScaleVectorConfig::PER_BRANCH);
       sv->set_hg_experts(false);
       sv->set_hg_shared_experts(false);
     }},
    {"Dual",
     [](ScaleVectorConfig* sv) {
       sv->set_placement(ScaleVectorConfig::DUAL);
       SetDualExperts(sv);
     }},
    {"MagnitudeDirection",
     [](ScaleVectorConfig* sv) { sv->set_reparam(ScaleVectorConfig::MAGNITUDE_DIRECTION); }},
    {"MagnitudeDirectionNormalized",
     [](ScaleVectorConfig* sv) {
       sv->set_reparam(ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED);
     }},
    {"Unified",
     [](ScaleVectorConfig* sv) {
       sv->set_mode(ScaleVectorConfig::PER_BRANCH);
       sv->set_placement(ScaleVectorConfig::DUAL_NORMALIZED);
       SetDualExperts(sv);
       sv->set_reparam(ScaleVectorConfig::MAGNITUDE_DIRECTION);
     }},
};

config::RunConfig VariantConfig(const Variant& v, bool fold) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_num_shared_experts(1);
  cfg.mutable_moe()->set_shared_expert_ffn_hidden_size(5);
  v.apply(cfg.mutable_scale_vectors());
  cfg.mutable_scale_vectors()->set_fold_into_weights(fold);
  return cfg;
}

class MoeLayerVariantTest : public ::testing::TestWithParam<int> {
 protected:
  const Variant& variant() const { return kVariants[GetParam()]; }
};

TEST_P(MoeLayerVariantTest, FoldedGradientsMatchFiniteDifferences) {
  LayerRig rig(VariantConfig(variant(), /*fold=*/true));
  testing::PerturbScaleVectors(rig.registry, 11);
  rig.CheckGradients();
}

TEST_P(MoeLayerVariantTest, PerTokenGradientsMatchFiniteDifferences) {
  LayerRig rig(VariantConfig(variant(), /*fold=*/false));
  testing::PerturbScaleVectors(rig.registry, 11);
  rig.CheckGradients();
}

TEST_P(MoeLayerVariantTest, FoldAndPerTokenAgree) {
  LayerRig folded(VariantConfig(variant(), true));
  LayerRig per_token(VariantConfig(variant(), false));
  testing::PerturbScaleVectors(folded.registry, 11);
  testing::PerturbScaleVectors(per_token.registry, 11);
  const Tensor d_a = folded.Gradients();
  const Tensor d_b = per_token.Gradients();
  EXPECT_LE(testing::RelativeError(folded.Output(), per_token.Output()), 1e-13);
  EXPECT_LE(testing::RelativeError(d_a, d_b), 1e-12);
  const auto& pa = folded.registry.params();
  const auto& pb = per_token.registry.params();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    ASSERT_EQ(pa[i]->spec.name, pb[i]->spec.name);
    EXPECT_LE(testing::RelativeError(pa[i]->grad, pb[i]->grad), 1e-12) << pa[i]->spec.name;
  }
}

// Against the baseline on the same path: folded (grouped GEMMs, gate|up as
// one), or per token. The two call the BLAS on different shapes, and
// OpenBLAS's Haswell/Zen kernels round such products differently
// (FoldAndPerTokenAgree bounds that). Without scale vectors (NONE) there is
// nothing to keep per token: that variant runs folded either way.
TEST_P(MoeLayerVariantTest, InitEqualsSharedBaselineBitForBitInF64) {
  for (bool fold : {true, false}) {
    const config::RunConfig cfg = VariantConfig(variant(), fold);
    const bool runs_folded = fold || cfg.scale_vectors().mode() == ScaleVectorConfig::NONE;
    LayerRig base(VariantConfig(kVariants[0], runs_folded));
    LayerRig rig(cfg);
    const Tensor a = base.Output(), b = rig.Output();
    ASSERT_EQ(a.nbytes(), b.nbytes());
    EXPECT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0) << "fold=" << fold;
    EXPECT_EQ(base.layer->aux_loss().At(0), rig.layer->aux_loss().At(0));
    EXPECT_EQ(base.layer->z_loss().At(0), rig.layer->z_loss().At(0));
  }
}

TEST_P(MoeLayerVariantTest, InitEqualsSharedBaselineInF32) {
  LayerRig base(VariantConfig(kVariants[0], true), DType::kF32);
  LayerRig rig(VariantConfig(variant(), true), DType::kF32);
  const Tensor a = base.Output(), b = rig.Output();
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_NEAR(a.At(i), b.At(i), 1e-6) << i;
}

INSTANTIATE_TEST_SUITE_P(AllVariants, MoeLayerVariantTest,
                         ::testing::Range(0, static_cast<int>(std::size(kVariants))),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::string(kVariants[info.param].name);
                         });

// One shared expert runs on n itself and as dense GEMMs; two run on the
// tiled copy of n as a grouped GEMM over two groups. Both paths' gradients.
TEST(MoeLayerTest, TwoSharedExpertsGradientsMatchFiniteDifferences) {
  config::RunConfig cfg = VariantConfig(kVariants[7], /*fold=*/true);
  cfg.mutable_moe()->set_num_shared_experts(2);
  LayerRig rig(cfg);
  testing::PerturbScaleVectors(rig.registry, 11);
  rig.CheckGradients();
}

TEST(MoeLayerTest, VariantsRegisterTheirOwnVectors) {
  LayerRig unified(VariantConfig(kVariants[7], true));
  EXPECT_NE(unified.registry.Find("layers.0.moe.router.gamma.alpha"), nullptr);
  EXPECT_NE(unified.registry.Find("layers.0.moe.experts.3.gamma_up.beta"), nullptr);
  EXPECT_NE(unified.registry.Find("layers.0.moe.experts.2.u_down.alpha"), nullptr);
  EXPECT_NE(unified.registry.Find("layers.0.moe.shared_experts.0.gamma_gate.alpha"), nullptr);
  EXPECT_EQ(unified.registry.Find("layers.0.ffn_norm.scale.alpha"), nullptr);
  const Param* u = unified.registry.Find("layers.0.moe.experts.2.u_down.alpha");
  EXPECT_EQ(u->spec.role, ParamRole::kOutputNormScale);
  EXPECT_EQ(u->spec.layout.expert, 2);

  LayerRig shared(VariantConfig(kVariants[0], true));
  EXPECT_NE(shared.registry.Find("layers.0.ffn_norm.scale"), nullptr);
  EXPECT_EQ(shared.registry.Find("layers.0.moe.router.gamma"), nullptr);
  LayerRig none(VariantConfig(kVariants[1], true));
  for (const auto& p : none.registry.params()) EXPECT_FALSE(IsScaleVector(p->spec.role));

  // hg_router only: the router gets its own γ, experts keep the shared one.
  LayerRig router_only(VariantConfig(kVariants[3], true));
  EXPECT_NE(router_only.registry.Find("layers.0.moe.router.gamma"), nullptr);
  EXPECT_NE(router_only.registry.Find("layers.0.ffn_norm.scale"), nullptr);
  EXPECT_EQ(router_only.registry.Find("layers.0.moe.experts.0.gamma_gate"), nullptr);
}

TEST(MoeLayerTest, SameSeedGivesIdenticalBits) {
  LayerRig a(VariantConfig(kVariants[7], true));
  LayerRig b(VariantConfig(kVariants[7], true));
  const Tensor ya = a.Output(), yb = b.Output(), ya2 = a.Output();
  EXPECT_EQ(std::memcmp(ya.raw_data(), yb.raw_data(), ya.nbytes()), 0);
  EXPECT_EQ(std::memcmp(ya.raw_data(), ya2.raw_data(), ya.nbytes()), 0);
  const Tensor da = a.Gradients(), db = b.Gradients();
  EXPECT_EQ(std::memcmp(da.raw_data(), db.raw_data(), da.nbytes()), 0);
  EXPECT_EQ(std::memcmp(a.registry.flat_grads().raw_data(), b.registry.flat_grads().raw_data(),
                        a.registry.flat_grads().nbytes()),
            0);
}

TEST(MoeLayerTest, MicroBatchGradientsAccumulate) {
  // Two micro-batches in one step give the sum of their separate gradients
  // (folded-weight gradients are accumulated and unfolded once).
  const config::RunConfig cfg = VariantConfig(kVariants[7], true);
  LayerRig rig(cfg);
  testing::PerturbScaleVectors(rig.registry, 3);
  const Tensor n2 = testing::RandomTensor({kTokens, kHidden}, 9);
  std::vector<double> separate(rig.registry.total_local_numel(), 0.0);
  for (const Tensor& input : {rig.n, n2}) {
    rig.n = input;
    rig.Gradients();
    for (size_t i = 0; i < separate.size(); ++i) separate[i] += rig.registry.flat_grads().At(i);
  }
  const Tensor n1 = testing::RandomTensor({kTokens, kHidden}, 1);
  rig.registry.ZeroGrads();
  Must(rig.layer->PrepareStep(rig.ctx, DType::kF64));
  for (const Tensor& input : {n1, n2}) {
    Tensor out = Tensor::Empty(input.shape(), DType::kF64);
    Tensor d_n = Tensor::Empty(input.shape(), DType::kF64);
    Must(rig.layer->Forward(rig.ctx, input, out));
    Must(rig.layer->Backward(rig.ctx, rig.w, d_n, 1.0));
  }
  Must(rig.layer->FinishBackward(rig.ctx));
  for (size_t i = 0; i < separate.size(); ++i) {
    EXPECT_NEAR(rig.registry.flat_grads().At(i), separate[i], 1e-12 * (1 + std::abs(separate[i])));
  }
}

TEST(MoeLayerTest, AllTokensToOneExpertAndAnIdleExpert) {
  config::RunConfig cfg = VariantConfig(kVariants[7], true);
  cfg.mutable_moe()->set_expert_bias(true);
  LayerRig rig(cfg);
  testing::PerturbScaleVectors(rig.registry, 5);
  double* bias = rig.registry.Find("layers.0.moe.router.expert_bias")->value.data<double>();
  bias[0] = 100;   // every token's first choice
  bias[3] = -100;  // never chosen
  rig.CheckGradients();
  rig.Gradients();  // one training micro-batch for the step statistics
  const MoeLayerStats s = Must(rig.layer->step_stats(rig.ctx));
  EXPECT_EQ(s.tokens_per_expert[0], kTokens);
  EXPECT_EQ(s.tokens_per_expert[3], 0);
  for (const auto& p : rig.registry.params()) {
    if (p->spec.layout.expert != 3 || p->spec.name.find(".experts.3.w_") == std::string::npos) {
      continue;
    }
    for (int64_t i = 0; i < p->grad.numel(); ++i) EXPECT_EQ(p->grad.At(i), 0.0) << p->spec.name;
  }
}

TEST(MoeLayerTest, CapacityDropsAreCountedAndDifferentiable) {
  config::RunConfig cfg = VariantConfig(kVariants[2], true);
  cfg.mutable_moe()->set_capacity_factor(0.5);  // capacity ceil(0.5*10*2/4) = 3
  cfg.mutable_moe()->set_expert_bias(true);
  LayerRig rig(cfg);
  rig.registry.Find("layers.0.moe.router.expert_bias")->value.data<double>()[1] = 100;
  rig.CheckGradients();
  rig.Gradients();
  const MoeLayerStats s = Must(rig.layer->step_stats(rig.ctx));
  int64_t kept = 0;
  for (int64_t c : s.tokens_per_expert) {
    EXPECT_LE(c, 3);
    kept += c;
  }
  EXPECT_EQ(s.tokens_per_expert[1], 3);
  EXPECT_EQ(s.dropped_tokens, 2 * kTokens - kept);
  EXPECT_GE(s.dropped_tokens, kTokens - 3);
}

TEST(MoeLayerTest, StatsDescribeTheRouting) {
  LayerRig rig(testing::TinyConfig());
  rig.Gradients();
  const MoeLayerStats s = Must(rig.layer->step_stats(rig.ctx));
  ASSERT_EQ(s.tokens_per_expert.size(), 4u);
  int64_t total = 0;
  for (int64_t c : s.tokens_per_expert) total += c;
  EXPECT_EQ(total, kTokens * 2);
  EXPECT_EQ(s.dropped_tokens, 0);
  EXPECT_GT(s.aux_loss, 0);
  EXPECT_GT(s.z_loss, 0);
  EXPECT_EQ(s.aux_loss, rig.layer->aux_loss().At(0));
  EXPECT_EQ(s.z_loss, rig.layer->z_loss().At(0));
  // Balanced routing would give aux = coeff (=0.1) for softmax scores; CV >= 0.
  EXPECT_GE(s.load_cv, 0);
}

// step_stats: the step's training micro-batches only — a forward without a
// backward (evaluation) adds nothing, each trained micro-batch adds once, and
// PrepareStep starts the next step from zero.
TEST(MoeLayerTest, StepStatsCountTrainedMicroBatchesOnce) {
  LayerRig rig(testing::TinyConfig());
  Must(rig.layer->PrepareStep(rig.ctx, rig.dtype));
  Tensor out = Tensor::Empty(rig.n.shape(), rig.dtype);
  Tensor d_n = Tensor::Empty(rig.n.shape(), rig.dtype);
  std::vector<int64_t> want(4, 0);
  double aux = 0;
  for (int m = 0; m < 2; ++m) {
    Must(rig.layer->Forward(rig.ctx, rig.n, out));
    for (int e = 0; e < 4; ++e) want[e] += rig.layer->forward_loads().At(e);
    aux += rig.layer->aux_loss().At(0) / 2;
    Must(rig.layer->Backward(rig.ctx, rig.w, d_n, 0.5));
  }
  Must(rig.layer->Forward(rig.ctx, rig.n, out));  // evaluation: no Backward
  const MoeLayerStats s = Must(rig.layer->step_stats(rig.ctx));
  EXPECT_EQ(s.tokens_per_expert, want);
  EXPECT_EQ(s.dropped_tokens, 0);
  EXPECT_NEAR(s.aux_loss, aux, 1e-15);
  int64_t total = 0;
  for (int64_t c : s.tokens_per_expert) total += c;
  EXPECT_EQ(total, 2 * kTokens * 2);
  Must(rig.layer->PrepareStep(rig.ctx, rig.dtype));
  EXPECT_EQ(Must(rig.layer->step_stats(rig.ctx)).tokens_per_expert, std::vector<int64_t>(4, 0));
}

// The step's only device->host read of a layer is its counts: exactly one
// ctx.ToHost per Forward (shared experts, capacity drops and the expert bias
// on), none in Backward or FinishBackward.
TEST(MoeLayerTest, ForwardReadsTheHostOnceAndBackwardNever) {
  config::RunConfig cfg = VariantConfig(kVariants[7], true);
  cfg.mutable_moe()->set_capacity_factor(0.5);
  cfg.mutable_moe()->set_expert_bias(true);
  LayerRig rig(cfg);
  Must(rig.layer->PrepareStep(rig.ctx, rig.dtype));
  Tensor out = Tensor::Empty(rig.n.shape(), rig.dtype);
  Tensor d_n = Tensor::Empty(rig.n.shape(), rig.dtype);
  const ExecCounters& counters = rig.ctx.counters();
  for (int m = 0; m < 2; ++m) {
    const int64_t before = counters.host_reads;
    Must(rig.layer->Forward(rig.ctx, rig.n, out));
    EXPECT_EQ(counters.host_reads - before, 1) << "forward " << m;
    const int64_t after_forward = counters.host_reads;
    Must(rig.layer->Backward(rig.ctx, rig.w, d_n, 0.5));
    EXPECT_EQ(counters.host_reads - after_forward, 0) << "backward " << m;
  }
  const int64_t before_finish = counters.host_reads;
  Must(rig.layer->FinishBackward(rig.ctx));
  Must(rig.layer->UpdateExpertBias(rig.ctx));  // reads the loads on the device
  EXPECT_EQ(counters.host_reads - before_finish, 0);
}

// The expert-bias update reads the step's loads (every trained micro-batch)
// on the device: bias_e += rate · sign(mean − load_e).
TEST(MoeLayerTest, ExpertBiasFollowsTheStepLoads) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_expert_bias(true);
  cfg.mutable_moe()->set_expert_bias_update_rate(0.25);
  LayerRig rig(cfg);
  Must(rig.layer->PrepareStep(rig.ctx, rig.dtype));
  Tensor out = Tensor::Empty(rig.n.shape(), rig.dtype);
  Tensor d_n = Tensor::Empty(rig.n.shape(), rig.dtype);
  std::vector<double> loads(4, 0);
  const Tensor n2 = testing::RandomTensor({kTokens, kHidden}, 17);
  for (const Tensor& input : {rig.n, n2}) {
    Must(rig.layer->Forward(rig.ctx, input, out));
    for (int e = 0; e < 4; ++e) loads[e] += rig.layer->forward_loads().At(e);
    Must(rig.layer->Backward(rig.ctx, rig.w, d_n, 0.5));
  }
  Must(rig.layer->Forward(rig.ctx, n2, out));  // evaluation: not counted
  Must(rig.layer->UpdateExpertBias(rig.ctx));
  const double mean = (loads[0] + loads[1] + loads[2] + loads[3]) / 4;
  const Tensor& bias = rig.registry.Find("layers.0.moe.router.expert_bias")->value;
  for (int e = 0; e < 4; ++e) {
    const double want = loads[e] < mean ? 0.25 : loads[e] > mean ? -0.25 : 0.0;
    EXPECT_EQ(bias.At(e), want) << "expert " << e;
  }
}

}  // namespace
}  // namespace scalemoe
