// Shared helpers for the MoE tests: the tiny config (C=8, F=6, E=4, K=2,
// N=10) and whole-registry gradient checks.
#pragma once

#include <functional>
#include <string>

#include "configs/scalemoe.pb.h"
#include "core/params.h"
#include "gtest/gtest.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe::testing {

constexpr int64_t kTokens = 10;
constexpr int64_t kHidden = 8;

inline config::RunConfig TinyConfig() {
  config::RunConfig cfg;
  cfg.mutable_model()->set_hidden_size(kHidden);
  cfg.mutable_model()->set_num_layers(2);
  cfg.mutable_model()->set_init_std(0.5);
  auto* moe = cfg.mutable_moe();
  moe->set_num_experts(4);
  moe->set_top_k(2);
  moe->set_expert_ffn_hidden_size(6);
  moe->set_aux_loss_coeff(0.1);
  moe->set_z_loss_coeff(0.05);
  return cfg;
}

// The strategy the multi-rank MoE tests train: PER_BRANCH γ's (router and
// routed experts their own), DUAL u on gate/up/down, β·α (`reparam`), one
// shared expert of F = 5, the expert bias.
inline config::RunConfig DualExpertsConfig(int num_experts,
                                           config::ScaleVectorConfig::Reparam reparam) {
  using Sv = config::ScaleVectorConfig;
  config::RunConfig cfg = TinyConfig();
  cfg.mutable_moe()->set_num_experts(num_experts);
  cfg.mutable_moe()->set_num_shared_experts(1);
  cfg.mutable_moe()->set_shared_expert_ffn_hidden_size(5);
  cfg.mutable_moe()->set_expert_bias(true);
  Sv* sv = cfg.mutable_scale_vectors();
  sv->set_mode(Sv::PER_BRANCH);
  sv->set_placement(Sv::DUAL);
  sv->add_dual_projections(Sv::GATE);
  sv->add_dual_projections(Sv::UP);
  sv->add_dual_projections(Sv::DOWN);
  sv->set_reparam(reparam);
  return cfg;
}

// Moves every scale vector away from its init (all ones) so that the
// variants' gradients are not checked only at the trivial point.
inline void PerturbScaleVectors(ParamRegistry& registry, uint64_t stream) {
  for (const auto& p : registry.params()) {
    if (!IsScaleVector(p->spec.role)) continue;
    double* v = p->value.data<double>();
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      v[i] += 0.2 * PhiloxNormal(7, stream++, i);
    }
  }
}

// Central-difference check of every trainable parameter's gradient (already
// accumulated in the registry) against `loss`.
inline void ExpectParamGradsMatch(const ParamRegistry& registry,
                                  const std::function<double()>& loss) {
  for (const auto& p : registry.params()) {
    if (!IsTrainable(p->spec.role)) continue;
    const Tensor analytic = p->grad.Clone();
    const double err = GradError(loss, p->value, analytic);
    EXPECT_LE(err, kGradTolerance) << p->spec.name;
  }
}

}  // namespace scalemoe::testing
