// Whole-model steps with the routing held fixed (MoeTransformer::ForceRouting,
// Router::ForceSelection), through the step the GPU precision check uses
// (tests/model/whole_model_step.h): forcing a run's own routing reproduces
// it bit for bit; forced ids send the tokens to those experts; and the
// reason the hook exists: a bf16-operand run moves near-tie tokens to other
// experts, so against the fp32 run its gradients' cosine falls below 0.999,
// while with the fp32 run's routing forced it reaches 0.999.
#include <cstdio>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "tests/model/whole_model_step.h"

using scalemoe::testing::ExpectBf16Tracks;
using scalemoe::testing::Must;
using scalemoe::testing::StartValues;
using scalemoe::testing::StepResult;
using scalemoe::testing::WholeModelStep;

namespace scalemoe {
namespace {

using SV = config::ScaleVectorConfig;

// The tiny MoE model (2 MoE layers, E = 4, K = 2), or its fine-grained
// form: sigmoid scores, normalised top-k, the expert bias, a shared expert,
// a dense first layer.
config::RunConfig Tiny(bool fine_grained) {
  config::RunConfig cfg = testing::TinyConfig(4);
  cfg.mutable_model()->set_init_std(0.1);
  cfg.mutable_moe()->set_aux_loss_coeff(0.01);
  cfg.mutable_moe()->set_z_loss_coeff(0.001);
  if (fine_grained) {
    cfg.mutable_moe()->set_score_function(config::MoEConfig::SIGMOID);
    cfg.mutable_moe()->set_normalize_topk(true);
    cfg.mutable_moe()->set_expert_bias(true);
    cfg.mutable_moe()->set_num_shared_experts(1);
    cfg.mutable_moe()->set_first_dense_layers(1);
    cfg.mutable_model()->set_num_layers(3);
  }
  cfg.mutable_scale_vectors()->set_mode(SV::PER_BRANCH);
  cfg.mutable_scale_vectors()->set_placement(SV::DUAL);
  return cfg;
}

bool SameBits(const StepResult& a, const StepResult& b) {
  if (a.loss != b.loss || a.grads.size() != b.grads.size()) return false;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    // f32 converts to double exactly: equal vectors are equal bits.
    if (a.grads[i].ToVector() != b.grads[i].ToVector()) return false;
  }
  return true;
}

TEST(ForcedRoutingTest, ForcingARunsOwnRoutingReproducesItBitForBit) {
  for (bool fine_grained : {false, true}) {
    SCOPED_TRACE(fine_grained ? "fine-grained" : "tiny");
    const config::RunConfig cfg = Tiny(fine_grained);
    const ExecContext ctx;
    const Tensor values = StartValues(cfg);
    const StepResult own = WholeModelStep(cfg, ctx, values);
    ASSERT_EQ(own.routing.size(), 2u);
    const StepResult forced = WholeModelStep(cfg, ctx, values, 5, 16, DType::kF32, own.routing);
    EXPECT_EQ(testing::MovedAssignments(own.routing, forced.routing), 0);
    EXPECT_TRUE(SameBits(own, forced));
  }
}

// Every token of every MoE layer forced onto experts 1 and 2 (in either
// order): experts 0 and 3 get no token, so all their parameters (weights,
// γ's, u's) get exactly zero gradient, and 1 and 2 get the whole load.
TEST(ForcedRoutingTest, ForcedTokensGoToTheForcedExperts) {
  const config::RunConfig cfg = Tiny(false);
  const ExecContext ctx;
  const Tensor values = StartValues(cfg);
  std::vector<double> pick;
  for (int t = 0; t < 10; ++t) {
    pick.push_back(t % 2 == 0 ? 1 : 2);
    pick.push_back(t % 2 == 0 ? 2 : 1);
  }
  const Tensor ids = Tensor::FromVector({10, 2}, pick, DType::kI32);
  const StepResult own = WholeModelStep(cfg, ctx, values);
  const StepResult forced = WholeModelStep(cfg, ctx, values, 5, 16, DType::kF32, {ids, ids});
  ASSERT_GT(testing::MovedAssignments(own.routing, forced.routing), 0);  // a real change
  for (const Tensor& layer : forced.routing) EXPECT_EQ(layer.ToVector(), pick);
  int idle_params = 0;
  for (size_t i = 0; i < forced.names.size(); ++i) {
    const std::string& name = forced.names[i];
    for (int layer = 0; layer < 2; ++layer) {
      for (int e = 0; e < 4; ++e) {
        const std::string prefix =
            "layers." + std::to_string(layer) + ".moe.experts." + std::to_string(e) + ".";
        if (name.rfind(prefix, 0) != 0) continue;
        if (e == 0 || e == 3) {
          ++idle_params;
          EXPECT_EQ(testing::Norm(forced.grads[i]), 0.0) << name;
        } else if (name.find(".w_") != std::string::npos) {
          EXPECT_GT(testing::Norm(forced.grads[i]), 0.0) << name;
        }
      }
    }
  }
  EXPECT_GE(idle_params, 2 * 2 * 3);  // at least w_gate, w_up, w_down per idle expert
}

TEST(ForcedRoutingTest, ForceRoutingNeedsOneSelectionPerMoeLayer) {
  const config::RunConfig cfg = Tiny(false);
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  const Tensor ids = Tensor::FromVector({10, 2}, std::vector<double>(20, 0), DType::kI32);
  const Status one = model.ForceRouting(ExecContext(), {ids});
  EXPECT_THAT(std::string(one.message()), ::testing::HasSubstr("1 selections for 2 MoE layers"));
  const Status repeated = model.ForceRouting(ExecContext(), {ids, ids});  // expert 0 twice
  EXPECT_THAT(std::string(repeated.message()),
              ::testing::HasSubstr("layer 0: moe: Router::ForceSelection: token 0 slot 1"));
  Must(model.ForceRouting(ExecContext(), {}));  // clearing always works
}

// A small MoE model with many near-tie tokens (init_std 0.02: router
// logits near 0, 512 tokens over 16 experts), two MoE layers: bf16 must
// flip a few picks (with one layer and 128 tokens it flipped one, then
// none once q, k and v became bf16; two layers of 512 flip 4).
config::RunConfig NearTies() {
  config::RunConfig cfg = testing::TinyConfig(16);
  config::ModelConfig& m = *cfg.mutable_model();
  m.set_num_layers(2);
  m.set_hidden_size(64);
  m.set_num_heads(4);
  m.set_num_kv_heads(2);
  m.set_vocab_size(128);
  m.set_seq_length(256);
  m.set_init_std(0.02);
  cfg.mutable_moe()->set_expert_ffn_hidden_size(32);
  cfg.mutable_moe()->set_aux_loss_coeff(0.01);
  cfg.mutable_moe()->set_z_loss_coeff(0.001);
  cfg.mutable_scale_vectors()->set_mode(SV::PER_BRANCH);
  cfg.mutable_scale_vectors()->set_placement(SV::DUAL_NORMALIZED);
  cfg.mutable_scale_vectors()->set_reparam(SV::MAGNITUDE_DIRECTION);
  return cfg;
}

TEST(ForcedRoutingTest, Bf16WithTheFp32RoutingTracksTheFp32Run) {
  config::RunConfig cfg = NearTies();
  const ExecContext ctx;
  const Tensor values = StartValues(cfg);
  const int seq = cfg.model().seq_length(), vocab = cfg.model().vocab_size();
  const StepResult fp32 = WholeModelStep(cfg, ctx, values, seq, vocab);
  cfg.mutable_train()->set_precision(config::TrainConfig::BF16);
  const StepResult own = WholeModelStep(cfg, ctx, values, seq, vocab);
  const StepResult forced = WholeModelStep(cfg, ctx, values, seq, vocab, DType::kF32, fp32.routing);
  const int64_t moved = testing::MovedAssignments(fp32.routing, own.routing);
  const testing::MinCosine without = testing::SmallestCosine(fp32, own);
  const testing::MinCosine with = testing::SmallestCosine(fp32, forced);
  std::printf(
      "bf16 vs fp32, smallest gradient cosine: own routing %.6f (%s, %lld of %lld assignments "
      "moved); fp32 routing forced %.6f (%s)\n",
      without.cosine, without.name.c_str(), static_cast<long long>(moved),
      static_cast<long long>(fp32.routing.front().numel()), with.cosine, with.name.c_str());
  // The case must hold near ties that bf16 flips, else it shows nothing.
  ASSERT_GT(moved, 0);
  EXPECT_EQ(testing::MovedAssignments(fp32.routing, forced.routing), 0);
  ExpectBf16Tracks(fp32, forced);
}

}  // namespace
}  // namespace scalemoe
