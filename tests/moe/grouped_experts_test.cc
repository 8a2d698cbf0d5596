// GroupedExperts: SwiGLU experts over expert-grouped rows, folded and
// per-token scale vectors, an expert without tokens.
#include "moe/grouped_experts.h"

#include <memory>

#include "core/forward_cache.h"
#include "core/ops.h"
#include "tests/moe/moe_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

constexpr int kE = 4;
constexpr int64_t kC = 8, kF = 6, kRows = 12;  // 10 grouped rows + 2 padding
const std::vector<int64_t> kCounts = {3, 0, 4, 3};

struct ExpertsRig {
  explicit ExpertsRig(bool fold, bool fuse_gate_up = true) {
    config::ScaleVectorConfig sv;
    sv.set_fold_into_weights(fold);
    sv.set_placement(config::ScaleVectorConfig::DUAL);
    sv.add_dual_projections(config::ScaleVectorConfig::GATE);
    sv.add_dual_projections(config::ScaleVectorConfig::DOWN);
    sv.set_mode(config::ScaleVectorConfig::PER_BRANCH);
    // Every expert's own γ_gate "g<e>" and γ_up "u<e>": branches 2e, 2e+1.
    std::vector<BranchSpec> branches;
    for (int e = 0; e < kE; ++e) {
      ParamLayout l;
      l.expert = e;
      branches.push_back({absl::StrCat("g", e), l});
      branches.push_back({absl::StrCat("u", e), l});
    }
    scales = std::make_unique<BranchScales>(registry, ScaleOptions(sv), "unused", ParamLayout{},
                                            kC, branches, /*own_vectors=*/true);
    ExpertGroupOptions o;
    o.prefix = "moe.experts";
    o.num_experts = kE;
    o.hidden = kC;
    o.ffn = kF;
    o.init_std = 0.5;
    o.down_init_std = 0.4;
    o.fuse_gate_up = fuse_gate_up;
    for (int e = 0; e < kE; ++e) {
      o.gate_gamma.push_back({scales.get(), 2 * e});
      o.up_gamma.push_back({scales.get(), 2 * e + 1});
    }
    experts = std::make_unique<GroupedExperts>(registry, ScaleOptions(sv), o);
    SM_CHECK_OK(registry.Materialize(5, DType::kF64, Device::kCPU));
    testing::PerturbScaleVectors(registry, 21);
    x = testing::RandomTensor({kRows, kC}, 1);
    w = testing::RandomTensor({kRows, kC}, 2);
  }
  Tensor Output() {
    Must(scales->Forward(ctx, DType::kF64));
    Must(experts->PrepareStep(ctx, DType::kF64));
    Tensor y = Tensor::Empty(x.shape(), DType::kF64);
    experts->Forward(ctx, x, kCounts, y);
    return y;
  }
  Tensor Gradients() {
    registry.ZeroGrads();
    Output();
    Tensor d_x = Tensor::Empty(x.shape(), DType::kF64);
    experts->Backward(ctx, w, d_x);
    Must(experts->FinishBackward(ctx));
    Must(scales->Backward(ctx));
    return d_x;
  }

  ExecContext ctx = ExecContext::Cpu();
  ParamRegistry registry;
  std::unique_ptr<BranchScales> scales;
  std::unique_ptr<GroupedExperts> experts;
  Tensor x, w;
};

TEST(GroupedExpertsTest, GradientsMatchFiniteDifferences) {
  for (bool fold : {true, false}) {
    ExpertsRig rig(fold);
    const Tensor d_x = rig.Gradients();
    auto loss = [&] { return testing::WeightedSum(rig.Output(), rig.w); };
    EXPECT_LE(testing::GradError(loss, rig.x, d_x), testing::kGradTolerance) << fold;
    testing::ExpectParamGradsMatch(rig.registry, loss);
  }
}

TEST(GroupedExpertsTest, MatchesAReferenceSwiGlu) {
  ExpertsRig rig(true);
  const Tensor y = rig.Output();
  // Expert 2 owns rows [3, 7). Reference: u_down ⊙ W_down(u_gate ⊙ silu(W_g(γ_g⊙x)) * W_u(γ_u⊙x)).
  auto val = [&](const std::string& name, int64_t i) {
    return rig.registry.Find(name)->value.At(i);
  };
  for (int64_t row = 3; row < 7; ++row) {
    std::vector<double> h(kF);
    for (int64_t f = 0; f < kF; ++f) {
      double g = 0, u = 0;
      for (int64_t c = 0; c < kC; ++c) {
        g += val("moe.experts.2.w_gate", f * kC + c) * val("g2", c) * rig.x.At(row * kC + c);
        u += val("moe.experts.2.w_up", f * kC + c) * val("u2", c) * rig.x.At(row * kC + c);
      }
      g *= val("moe.experts.2.u_gate", f);
      h[f] = g / (1 + std::exp(-g)) * u;
    }
    for (int64_t c = 0; c < kC; ++c) {
      double acc = 0;
      for (int64_t f = 0; f < kF; ++f) acc += val("moe.experts.2.w_down", c * kF + f) * h[f];
      EXPECT_NEAR(y.At(row * kC + c), acc * val("moe.experts.2.u_down", c), 1e-13);
    }
  }
  for (int64_t i = 10 * kC; i < kRows * kC; ++i) EXPECT_EQ(y.At(i), 0.0);  // padding rows
}

TEST(GroupedExpertsTest, ExpertWithoutTokensGetsZeroGradient) {
  for (bool fold : {true, false}) {
    ExpertsRig rig(fold);
    rig.Gradients();
    for (const auto& p : rig.registry.params()) {
      if (p->spec.layout.expert != 1) continue;
      for (int64_t i = 0; i < p->grad.numel(); ++i) EXPECT_EQ(p->grad.At(i), 0.0) << p->spec.name;
    }
    // and expert 2's do not vanish
    Tensor sum = rig.ctx.Empty({1}, DType::kF64);
    ops::Sum(rig.ctx, rig.registry.Find("moe.experts.2.w_up")->grad, sum);
    EXPECT_NE(rig.ctx.ToHost(sum).At(0), 0.0);
  }
}

// Folded, the experts' gate and up run as one GEMM over [2F, C] (the
// forward keeps one [M, 2F] gate|up activation); with fuse_gate_up off, or
// per token (no grouped GEMMs), they run apart. The fused path gives the
// same output and gradients to f64 rounding: the BLAS may round the columns
// of one [M, 2F] product unlike those of two [M, F] ones (OpenBLAS's
// Haswell/Zen kernels do; its SkylakeX kernels gave the same bits).
TEST(GroupedExpertsTest, GateAndUpRunAsOneGemmWhenFolded) {
  auto packed_activations = [](ExpertsRig& rig) {
    ForwardCacheStash stash;
    rig.experts->VisitForwardCache(stash);
    int packed = 0;
    stash.ForEachTensor([&](const Tensor& t) {
      if (t.defined() && t.ndim() == 2 && t.dim(1) == 2 * kF) ++packed;
    });
    return packed;
  };
  ExpertsRig fused(true), separate(true, /*fuse_gate_up=*/false), per_token(false);
  for (ExpertsRig* rig : {&fused, &separate, &per_token}) rig->Output();
  EXPECT_EQ(packed_activations(fused), 1);
  EXPECT_EQ(packed_activations(separate), 0);
  EXPECT_EQ(packed_activations(per_token), 0);
  const std::vector<double> y_fused = fused.Output().ToVector();
  const std::vector<double> y_separate = separate.Output().ToVector();
  ASSERT_EQ(y_fused.size(), y_separate.size());
  for (size_t i = 0; i < y_fused.size(); ++i) EXPECT_NEAR(y_fused[i], y_separate[i], 1e-13) << i;
  const std::vector<double> dx_fused = fused.Gradients().ToVector();
  const std::vector<double> dx_separate = separate.Gradients().ToVector();
  for (size_t i = 0; i < dx_fused.size(); ++i) EXPECT_NEAR(dx_fused[i], dx_separate[i], 1e-13) << i;
  const std::vector<double> g_fused = fused.registry.flat_grads().ToVector();
  const std::vector<double> g_separate = separate.registry.flat_grads().ToVector();
  ASSERT_EQ(g_fused.size(), g_separate.size());
  for (size_t i = 0; i < g_fused.size(); ++i) EXPECT_NEAR(g_fused[i], g_separate[i], 1e-13) << i;
}

}  // namespace
}  // namespace scalemoe
