// The scale-vector variants the whole-model precision checks run (the GPU's
// tests/model/cuda_model_test.cc and the CPU's precision_test.cc share the
// list), on a small model of head dim 16.
//
// Why head dim 16, not the 4 of testing::TinyConfig: under DNP the input-side
// γ of q and k feeds a per-head RMSNorm, which makes the loss invariant to
// γ's scale, so dγ is only its component across γ — a difference of terms
// that cancel. Over a 4-wide head that cancellation is so deep that bf16
// operands alone (on the CPU as on the GPU) take dγ_k's cosine with the fp32
// run down to 0.9976; from head dim 16 up it is ≥ 0.9998 for every variant
// (CPU, Dec 2), as real head dims (64, 128) are.
#pragma once

#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "tests/model/model_test_util.h"

namespace scalemoe::testing {

struct VariantCase {
  std::string name;
  int experts;
  void (*apply)(config::RunConfig&);
};

inline std::vector<VariantCase> VariantCases() {
  using SV = config::ScaleVectorConfig;
  return {
      {"dense_shared", 0, [](config::RunConfig&) {}},
      {"moe_shared", 4, [](config::RunConfig&) {}},
      {"moe_hg_dual", 4,
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_mode(SV::PER_BRANCH);
         c.mutable_scale_vectors()->set_placement(SV::DUAL);
       }},
      {"moe_hg_dnp_or", 4,
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_mode(SV::PER_BRANCH);
         c.mutable_scale_vectors()->set_placement(SV::DUAL_NORMALIZED);
         c.mutable_scale_vectors()->set_reparam(SV::MAGNITUDE_DIRECTION);
       }},
      {"moe_per_token_or_normalized", 4,
       [](config::RunConfig& c) {
         c.mutable_scale_vectors()->set_mode(SV::PER_BRANCH);
         c.mutable_scale_vectors()->set_placement(SV::DUAL);
         c.mutable_scale_vectors()->set_reparam(SV::MAGNITUDE_DIRECTION_NORMALIZED);
         c.mutable_scale_vectors()->set_fold_into_weights(false);
       }},
      {"moe_sigmoid_bias_shared_expert_jit", 4,
       [](config::RunConfig& c) {
         c.mutable_moe()->set_score_function(config::MoEConfig::SIGMOID);
         c.mutable_moe()->set_expert_bias(true);
         c.mutable_moe()->set_num_shared_experts(1);
         c.mutable_moe()->set_first_dense_layers(1);
         c.mutable_scale_vectors()->set_fold_just_in_time(true);
         c.mutable_model()->set_tied_embeddings(false);
       }},
  };
}

// TinyConfig (2 layers, 2 query heads on 1 kv head, 5 tokens a sequence)
// widened to head dim 16, init_std 0.1, with the variant applied.
inline config::RunConfig VariantConfig(const VariantCase& c) {
  config::RunConfig cfg = TinyConfig(c.experts);
  cfg.mutable_model()->set_hidden_size(32);
  cfg.mutable_model()->set_ffn_hidden_size(48);
  cfg.mutable_moe()->set_expert_ffn_hidden_size(24);
  cfg.mutable_model()->set_init_std(0.1);
  c.apply(cfg);
  return cfg;
}

}  // namespace scalemoe::testing
