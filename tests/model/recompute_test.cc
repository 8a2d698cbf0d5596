// train.recompute FULL on a single stage: each block keeps only its input
// after the forward and reruns its forward just before its backward. The
// step's gradients, losses and MoE statistics equal those of NONE (the
// rerun sees the same input and parameters; the statistics count each
// micro-batch once, in the backward), and less memory stays in use between
// the forward and the backward.
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

// Every module with a forward cache: qk-norm and sandwich norms, a dense
// layer, capacity drops, a shared expert.
config::RunConfig Config(config::TrainConfig::Recompute recompute) {
  config::RunConfig cfg = testing::TinyConfig(/*num_experts=*/4);
  cfg.mutable_model()->set_num_layers(3);
  cfg.mutable_model()->set_qk_norm(true);
  cfg.mutable_model()->set_sandwich_norm(true);
  config::MoEConfig& moe = *cfg.mutable_moe();
  moe.set_first_dense_layers(1);
  moe.set_num_shared_experts(1);
  moe.set_capacity_factor(1.0);
  cfg.mutable_train()->set_recompute(recompute);
  return cfg;
}

Tensor Tokens(int seed) {
  std::vector<double> ids(2 * 5);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = (seed * 7 + i * 5) % 16;
  return Tensor::FromVector({2, 5}, ids, DType::kI32);
}

struct Step {
  std::map<std::string, std::vector<double>> grads;
  std::vector<double> losses;  // total loss of each micro-batch
  std::vector<MoeLayerStats> moe;
  int64_t kept_bytes = 0;  // allocator bytes in use after the last forward
  // With an evaluation of the first micro-batch before the step: its total
  // loss and the allocator bytes in use after it.
  double eval_loss = 0;
  int64_t eval_kept_bytes = 0;
};

Step RunStep(config::TrainConfig::Recompute recompute, bool evaluate_first = false) {
  const config::RunConfig cfg = Config(recompute);
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  SM_CHECK_OK(registry.Materialize(cfg.train().seed(), DType::kF64, Device::kCPU));
  const ExecContext ctx;
  registry.ZeroGrads();
  Must(model.PrepareStep(ctx));
  Step step;
  if (evaluate_first) {
    step.eval_loss = Must(model.Evaluate(ctx, Tokens(0), Tokens(50))).total;
    step.eval_kept_bytes = ctx.allocator_stats().in_use_bytes;
  }
  const int m = 2;
  for (int mb = 0; mb < m; ++mb) {
    step.losses.push_back(Must(model.Forward(ctx, Tokens(mb), Tokens(50 + mb))).total);
    step.kept_bytes = ctx.allocator_stats().in_use_bytes;
    Must(model.Backward(ctx, 1.0 / m));
  }
  Must(model.FinishBackward(ctx));
  for (const auto& p : registry.params()) step.grads[p->spec.name] = p->grad.ToVector();
  step.moe = Must(model.MoeStats(ctx));
  return step;
}

TEST(RecomputeTest, FullRecomputeMatchesKeptActivations) {
  const Step kept = RunStep(config::TrainConfig::NONE);
  const Step full = RunStep(config::TrainConfig::FULL);
  EXPECT_EQ(full.losses, kept.losses);
  ASSERT_EQ(full.grads.size(), kept.grads.size());
  for (const auto& [name, want] : kept.grads) {
    const std::vector<double>& got = full.grads.at(name);
    ASSERT_EQ(got.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-12 * (1 + std::abs(want[i]))) << name << "[" << i << "]";
    }
  }
  ASSERT_EQ(full.moe.size(), 2u);
  ASSERT_EQ(full.moe.size(), kept.moe.size());
  for (size_t l = 0; l < kept.moe.size(); ++l) {
    EXPECT_EQ(full.moe[l].tokens_per_expert, kept.moe[l].tokens_per_expert) << "MoE layer " << l;
    EXPECT_EQ(full.moe[l].dropped_tokens, kept.moe[l].dropped_tokens) << "MoE layer " << l;
    EXPECT_EQ(full.moe[l].aux_loss, kept.moe[l].aux_loss) << "MoE layer " << l;
    EXPECT_EQ(full.moe[l].z_loss, kept.moe[l].z_loss) << "MoE layer " << l;
  }
  // Two micro-batches of 10 tokens, 4 experts, top 2: every assignment once.
  int64_t assigned = kept.moe[0].dropped_tokens;
  for (int64_t n : kept.moe[0].tokens_per_expert) assigned += n;
  EXPECT_EQ(assigned, 2 * 10 * 2);
  EXPECT_LT(full.kept_bytes, kept.kept_bytes);
}

// An evaluation forward (no backward follows) keeps no block's
// activations, whatever train.recompute says: less stays in use after it
// than after FULL's training forward (which keeps each block's input and the
// head's), far less than after NONE's, and the next training step is the
// same as without it.
TEST(RecomputeTest, EvaluationKeepsNoActivations) {
  const Step evaluated = RunStep(config::TrainConfig::NONE, /*evaluate_first=*/true);
  const Step full = RunStep(config::TrainConfig::FULL);
  const Step kept = RunStep(config::TrainConfig::NONE);
  EXPECT_EQ(evaluated.eval_loss, kept.losses[0]);
  EXPECT_LT(evaluated.eval_kept_bytes, full.kept_bytes);
  EXPECT_LT(2 * evaluated.eval_kept_bytes, kept.kept_bytes);
  // The evaluation changed nothing the training step reads.
  EXPECT_EQ(evaluated.losses, kept.losses);
  EXPECT_EQ(evaluated.grads, kept.grads);
  ASSERT_EQ(evaluated.moe.size(), kept.moe.size());
  for (size_t l = 0; l < kept.moe.size(); ++l) {
    EXPECT_EQ(evaluated.moe[l].tokens_per_expert, kept.moe[l].tokens_per_expert) << l;
  }
}

}  // namespace
}  // namespace scalemoe
