// A failed collective anywhere in a training step (TP all-reduces and
// gathers, the EP all-to-all, router statistics, the gradient sums over TP)
// comes back from the model as a Status on every rank, naming where in the
// model it happened — never an abort and never a hang. FakeWorld kills one
// rank at its k-th communication call, for every k a step makes.
#include <string>

#include "gtest/gtest.h"
#include "model/model.h"
#include "parallel/fake_communicator.h"
#include "tests/model/model_test_util.h"

namespace scalemoe {
namespace {

// TP2 (sequence parallel) x EP2 on two ranks: every kind of model collective.
config::RunConfig TwoRankMoe() {
  config::RunConfig cfg = testing::TinyConfig(/*num_experts=*/4);
  cfg.mutable_model()->set_seq_length(4);
  cfg.mutable_model()->set_num_kv_heads(2);
  cfg.mutable_model()->set_tied_embeddings(false);
  cfg.mutable_scale_vectors()->set_mode(config::ScaleVectorConfig::PER_BRANCH);
  cfg.mutable_scale_vectors()->set_placement(config::ScaleVectorConfig::DUAL);
  cfg.mutable_scale_vectors()->set_reparam(
      config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED);
  cfg.mutable_parallel()->set_tp(2);
  cfg.mutable_parallel()->set_ep(2);
  cfg.mutable_parallel()->set_sequence_parallel(true);
  return cfg;
}

Tensor Tokens(int64_t offset, int64_t b, int64_t t, int64_t vocab) {
  Tensor x = Tensor::Empty({b, t}, DType::kI32);
  for (int64_t i = 0; i < b * t; ++i) {
    x.data<int32_t>()[i] = static_cast<int32_t>((i * 5 + offset) % vocab);
  }
  return x;
}

// One training step: prepare, forward, backward, finish.
Status Step(const config::RunConfig& cfg, ProcessGroups& g) {
  ParamRegistry registry(ShardCoords{.tp_rank = g.coords.tp, .tp_size = 2});
  MoeTransformer model(registry, cfg, &g);
  SM_RETURN_IF_ERROR(registry.Materialize(3, DType::kF64, Device::kCPU));
  const ExecContext ctx = ExecContext::Cpu();
  const int64_t v = cfg.model().vocab_size(), t = cfg.model().seq_length();
  SM_RETURN_IF_ERROR(model.PrepareStep(ctx));
  SM_RETURN_IF_ERROR(model.Forward(ctx, Tokens(1, 2, t, v), Tokens(2, 2, t, v)).status());
  SM_RETURN_IF_ERROR(model.Backward(ctx, 1.0));
  return model.FinishBackward(ctx);
}

// Where the model says it failed: a layer or one of the model's own parts.
bool NamesAPlace(const std::string& message) {
  for (const char* place : {"layer ", "embedding", "lm head", "final norm", "cross-entropy"}) {
    if (message.find(place) != std::string::npos) return true;
  }
  return false;
}

TEST(ModelErrorsTest, EveryFailedCollectiveOfAStepIsReturnedWithItsPlace) {
  const config::RunConfig cfg = TwoRankMoe();
  const GridSizes sizes{.tp = 2, .ep = 2};
  {
    FakeWorld healthy;
    ASSERT_TRUE(healthy.Run(2, sizes, [&](ProcessGroups& g) { return Step(cfg, g); }).ok());
  }
  int failed_runs = 0;
  for (int64_t k = 0;; ++k) {
    ASSERT_LT(k, 1000) << "a step makes fewer than 1000 communication calls";
    FakeWorld world;
    world.FailCollective(/*rank=*/1, k);
    const Status status = world.Run(2, sizes, [&](ProcessGroups& g) { return Step(cfg, g); });
    if (status.ok()) break;  // k is past the step's last call
    ++failed_runs;
    for (int r = 0; r < 2; ++r) {
      const Status& s = world.rank_statuses()[r];
      ASSERT_FALSE(s.ok()) << "call " << k << ": rank " << r
                           << " finished although its peer died";
      EXPECT_TRUE(NamesAPlace(std::string(s.message())))
          << "call " << k << ": rank " << r << ": " << s.message();
    }
    EXPECT_NE(world.rank_statuses()[1].message().find("injected failure"), std::string::npos)
        << world.rank_statuses()[1].message();
  }
  // The step communicates in every layer: prepare, forward, backward, finish.
  EXPECT_GT(failed_runs, 20);
}

}  // namespace
}  // namespace scalemoe
