// PipelineModelStage under the 1F1B executor (and the interleaved one, with v
// model chunks per rank) on an in-process world: a model cut into pp (x v)
// stages accumulates, over a step of m micro-batches, the same parameter
// gradients and losses as the whole model running the micro-batches one
// after another (f64; the recompute is deterministic), under either
// train.recompute: NONE keeps each in-flight micro-batch's forward caches
// and runs every chunk's forward once per micro-batch, FULL reruns it in
// the backward on every stage but the last. The MoE statistics (loads per
// expert, drops, aux and z) count each micro-batch once either way.
#include "model/pipeline_model_stage.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/philox.h"
#include "gtest/gtest.h"
#include "parallel/fake_communicator.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

config::RunConfig Config(int num_layers = 4) {
  config::RunConfig cfg = testing::TinyConfig(/*num_experts=*/4);
  cfg.mutable_model()->set_num_layers(num_layers);
  cfg.mutable_model()->set_tied_embeddings(false);
  return cfg;
}

Tensor Tokens(int64_t seed) {
  std::vector<double> ids(2 * 5);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<double>(static_cast<int>(PhiloxUniform(seed, 3, i) * 16) % 16);
  }
  return Tensor::FromVector({2, 5}, ids, DType::kI32);
}

enum class Modules { kBasic, kEvery };

// Every module with a forward cache on the path: qk-norm and sandwich norms,
// a dense layer, capacity drops, a shared expert, the expert bias.
config::RunConfig RichConfig(int num_layers) {
  config::RunConfig cfg = Config(num_layers);
  cfg.mutable_model()->set_qk_norm(true);
  cfg.mutable_model()->set_sandwich_norm(true);
  config::MoEConfig& moe = *cfg.mutable_moe();
  moe.set_first_dense_layers(1);
  moe.set_num_shared_experts(1);
  moe.set_capacity_factor(1.0);
  moe.set_expert_bias(true);
  return cfg;
}

// MoE statistics of one step by global layer.
using MoeStatsByLayer = std::map<int, MoeLayerStats>;
MoeStatsByLayer StatsOf(const ExecContext& ctx, const MoeTransformer& model) {
  MoeStatsByLayer out;
  const std::vector<MoeLayerStats> stats = Must(model.MoeStats(ctx));
  const std::vector<int> layers = model.MoeLayerIndices();
  for (size_t i = 0; i < stats.size(); ++i) out[layers[i]] = stats[i];
  return out;
}

struct Reference {
  std::map<std::string, std::vector<double>> grads;
  LossBreakdown sums;
  MoeStatsByLayer moe;
};

Reference WholeModel(const config::RunConfig& cfg, int m) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  SM_CHECK_OK(registry.Materialize(cfg.train().seed(), DType::kF64, Device::kCPU));
  const ExecContext ctx;
  registry.ZeroGrads();
  Must(model.PrepareStep(ctx));
  Reference r;
  for (int mb = 0; mb < m; ++mb) {
    const LossBreakdown l = Must(model.Forward(ctx, Tokens(mb), Tokens(100 + mb)));
    Must(model.Backward(ctx, 1.0 / m));
    r.sums.cross_entropy += l.cross_entropy;
    r.sums.aux += l.aux;
    r.sums.z += l.z;
  }
  Must(model.FinishBackward(ctx));
  for (const auto& p : registry.params()) r.grads[p->spec.name] = p->grad.ToVector();
  r.moe = StatsOf(ctx, model);
  return r;
}

void ExpectPipelineMatches(int pp, int m, int v = 1,
                           config::TrainConfig::Recompute recompute = config::TrainConfig::NONE,
                           Modules modules = Modules::kBasic, int loss_chunk_tokens = 0,
                           bool fuse_permute = false) {
  const int layers = std::max(4, pp * v);
  config::RunConfig cfg = modules == Modules::kEvery ? RichConfig(layers) : Config(layers);
  const Reference want = WholeModel(cfg, m);
  cfg.mutable_parallel()->set_virtual_stages(v);
  cfg.mutable_train()->set_recompute(recompute);
  cfg.mutable_train()->set_loss_chunk_tokens(loss_chunk_tokens);
  cfg.mutable_moe()->set_fuse_permute(fuse_permute);
  std::mutex mu;
  std::map<std::string, std::vector<double>> got;
  MoeStatsByLayer got_moe;
  LossBreakdown sums;
  FakeWorld world;
  Status status = world.Run(pp, GridSizes{.pp = pp}, [&](ProcessGroups& groups) -> Status {
    ParamRegistry registry;
    std::vector<std::unique_ptr<MoeTransformer>> chunks;
    std::vector<MoeTransformer*> views;
    for (int c = 0; c < v; ++c) {
      chunks.push_back(std::make_unique<MoeTransformer>(registry, cfg, &groups, c));
      views.push_back(chunks.back().get());
    }
    SM_RETURN_IF_ERROR(registry.Materialize(cfg.train().seed(), DType::kF64, Device::kCPU));
    const ExecContext ctx;
    registry.ZeroGrads();
    for (auto& c : chunks) Must(c->PrepareStep(ctx));
    std::vector<PipelineModelStage::Batch> batches;
    for (int mb = 0; mb < m; ++mb) batches.push_back({Tokens(mb), Tokens(100 + mb)});
    PipelineModelStage stage(views, ctx, batches, recompute);
    PipelineExecutorOptions eo;
    eo.schedule = v > 1 ? PipelineScheduleKind::kInterleaved1F1B : PipelineScheduleKind::kOneFOneB;
    eo.num_microbatches = m;
    eo.num_chunks = v;
    eo.activation_shape = {10, cfg.model().hidden_size()};
    eo.activation_dtype = DType::kF64;
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor, PipelineExecutor::Create(*groups.pp, eo));
    SM_RETURN_IF_ERROR(executor.RunStep(stage).status());
    // NONE: each chunk's forward once per micro-batch. FULL: twice, except
    // on the last virtual stage (its forward runs in the backward only).
    int want_runs = v * m;
    if (recompute == config::TrainConfig::FULL) {
      for (const auto& c : chunks) want_runs += c->is_last_stage() ? 0 : m;
    }
    EXPECT_EQ(stage.forward_runs(), want_runs) << "pipeline rank " << groups.coords.pp;
    for (int c = v; c-- > 0;) Must(chunks[c]->FinishBackward(ctx));
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& c : chunks) {
      for (const auto& [layer, stats] : StatsOf(ctx, *c)) got_moe[layer] = stats;
    }
    for (const auto& p : registry.params()) {
      EXPECT_EQ(p->spec.layout.pipeline_stage % pp, groups.coords.pp) << p->spec.name;
      EXPECT_TRUE(got.emplace(p->spec.name, p->grad.ToVector()).second)
          << p->spec.name << " on two stages";
    }
    const LossBreakdown mine = ReadLosses(ctx, stage.sums());
    sums.cross_entropy += mine.cross_entropy;
    sums.aux += mine.aux;
    sums.z += mine.z;
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(got.size(), want.grads.size());
  for (const auto& [name, grad] : want.grads) {
    ASSERT_TRUE(got.count(name)) << name;
    const std::vector<double>& g = got[name];
    ASSERT_EQ(g.size(), grad.size()) << name;
    for (size_t i = 0; i < g.size(); ++i) {
      ASSERT_NEAR(g[i], grad[i], 1e-12 * (1 + std::abs(grad[i]))) << name << "[" << i << "]";
    }
  }
  EXPECT_NEAR(sums.cross_entropy, want.sums.cross_entropy, 1e-12);
  EXPECT_NEAR(sums.aux, want.sums.aux, 1e-12);
  EXPECT_NEAR(sums.z, want.sums.z, 1e-12);
  EXPECT_GT(want.sums.aux, 0);
  // Loads, drops and losses of every MoE layer: each micro-batch once.
  ASSERT_EQ(got_moe.size(), want.moe.size());
  ASSERT_FALSE(want.moe.empty());
  for (const auto& [layer, w] : want.moe) {
    const MoeLayerStats& g = got_moe[layer];
    EXPECT_EQ(g.tokens_per_expert, w.tokens_per_expert) << "layer " << layer;
    EXPECT_EQ(g.dropped_tokens, w.dropped_tokens) << "layer " << layer;
    EXPECT_NEAR(g.aux_loss, w.aux_loss, 1e-12) << "layer " << layer;
    EXPECT_NEAR(g.z_loss, w.z_loss, 1e-12) << "layer " << layer;
  }
}

TEST(PipelineModelStageTest, TwoStagesMatchWholeModel) { ExpectPipelineMatches(2, 3); }
TEST(PipelineModelStageTest, FourStagesMatchWholeModel) { ExpectPipelineMatches(4, 5); }
TEST(PipelineModelStageTest, FewerMicroBatchesThanStages) { ExpectPipelineMatches(4, 2); }
// Interleaved: 2 ranks x 2 chunks (virtual stages 0, 2 on rank 0 and 1, 3 on
// rank 1), and 4 ranks x 2 chunks over 8 layers.
TEST(PipelineModelStageTest, InterleavedTwoRanksTwoChunks) { ExpectPipelineMatches(2, 4, 2); }
TEST(PipelineModelStageTest, InterleavedFourRanksTwoChunks) { ExpectPipelineMatches(4, 4, 2); }

// Both train.recompute choices, on a model with every cached module (the
// kept caches must restore each one's, the rerun must count once).
TEST(PipelineModelStageTest, KeptActivationsTwoStages) {
  ExpectPipelineMatches(2, 3, 1, config::TrainConfig::NONE, Modules::kEvery);
}
TEST(PipelineModelStageTest, RecomputeTwoStages) {
  ExpectPipelineMatches(2, 3, 1, config::TrainConfig::FULL, Modules::kEvery);
}
TEST(PipelineModelStageTest, KeptActivationsInterleaved) {
  ExpectPipelineMatches(2, 4, 2, config::TrainConfig::NONE, Modules::kEvery);
}
TEST(PipelineModelStageTest, RecomputeInterleaved) {
  ExpectPipelineMatches(2, 4, 2, config::TrainConfig::FULL, Modules::kEvery);
}
// The loss in chunks of 3 of a micro-batch's 10 tokens
// (train.loss_chunk_tokens; the head's input and the targets ride in the
// stage's forward cache to the backward's second pass), against the whole
// model taking the micro-batch at once.
TEST(PipelineModelStageTest, ChunkedLossTwoStages) {
  ExpectPipelineMatches(2, 3, 1, config::TrainConfig::NONE, Modules::kEvery, 3);
}
TEST(PipelineModelStageTest, ChunkedLossRecomputeInterleaved) {
  ExpectPipelineMatches(2, 4, 2, config::TrainConfig::FULL, Modules::kEvery, 3);
}
// The permutation read by the experts' first GEMMs (moe.fuse_permute; the
// permutation's index rides in the forward cache to the weight gradient),
// against the whole model's permuted copy.
TEST(PipelineModelStageTest, FusedPermuteTwoStages) {
  ExpectPipelineMatches(2, 3, 1, config::TrainConfig::NONE, Modules::kBasic, 0, true);
}
TEST(PipelineModelStageTest, FusedPermuteRecomputeInterleaved) {
  ExpectPipelineMatches(2, 4, 2, config::TrainConfig::FULL, Modules::kBasic, 0, true);
}

TEST(PipelineModelStageTest, StagesHoldTheirLayersOnly) {
  const config::RunConfig cfg = Config();
  FakeWorld world;
  Status status = world.Run(2, GridSizes{.pp = 2}, [&](ProcessGroups& groups) -> Status {
    ParamRegistry registry;
    MoeTransformer model(registry, cfg, &groups);
    const bool first = groups.coords.pp == 0;
    EXPECT_EQ(model.is_first_stage(), first);
    EXPECT_EQ(model.is_last_stage(), !first);
    EXPECT_EQ(registry.Find("embedding.weight") != nullptr, first);
    EXPECT_EQ(registry.Find("lm_head.weight") != nullptr, !first);
    EXPECT_EQ(registry.Find("final_norm.scale") != nullptr, !first);
    for (const auto& p : registry.params()) {
      if (p->spec.layout.layer >= 0) {
        EXPECT_EQ(p->spec.layout.layer / 2, groups.coords.pp) << p->spec.name;
      }
    }
    return absl::OkStatus();
  });
  ASSERT_TRUE(status.ok()) << status;
}

}  // namespace
}  // namespace scalemoe
