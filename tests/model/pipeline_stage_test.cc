// PipelineModelStage under the 1F1B executor (and the interleaved one, with v
// model chunks per rank) on an in-process world: a model cut into pp (x v)
// stages accumulates, over a step of m micro-batches, the same parameter
// gradients and losses as the whole model running the micro-batches one
// after another (f64; the recompute is deterministic).
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

struct Reference {
  std::map<std::string, std::vector<double>> grads;
  LossBreakdown sums;
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
  return r;
}

void ExpectPipelineMatches(int pp, int m, int v = 1) {
  config::RunConfig cfg = Config(std::max(4, pp * v));
  const Reference want = WholeModel(cfg, m);
  cfg.mutable_parallel()->set_virtual_stages(v);
  std::mutex mu;
  std::map<std::string, std::vector<double>> got;
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
    PipelineModelStage stage(views, ctx, batches);
    PipelineExecutorOptions eo;
    eo.schedule = v > 1 ? PipelineScheduleKind::kInterleaved1F1B : PipelineScheduleKind::kOneFOneB;
    eo.num_microbatches = m;
    eo.num_chunks = v;
    eo.activation_shape = {10, cfg.model().hidden_size()};
    eo.activation_dtype = DType::kF64;
    SM_ASSIGN_OR_RETURN(PipelineExecutor executor, PipelineExecutor::Create(*groups.pp, eo));
    SM_RETURN_IF_ERROR(executor.RunStep(stage).status());
    for (int c = v; c-- > 0;) Must(chunks[c]->FinishBackward(ctx));
    std::lock_guard<std::mutex> lock(mu);
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
}

TEST(PipelineModelStageTest, TwoStagesMatchWholeModel) { ExpectPipelineMatches(2, 3); }
TEST(PipelineModelStageTest, FourStagesMatchWholeModel) { ExpectPipelineMatches(4, 5); }
TEST(PipelineModelStageTest, FewerMicroBatchesThanStages) { ExpectPipelineMatches(4, 2); }
// Interleaved: 2 ranks x 2 chunks (virtual stages 0, 2 on rank 0 and 1, 3 on
// rank 1), and 4 ranks x 2 chunks over 8 layers.
TEST(PipelineModelStageTest, InterleavedTwoRanksTwoChunks) { ExpectPipelineMatches(2, 4, 2); }
TEST(PipelineModelStageTest, InterleavedFourRanksTwoChunks) { ExpectPipelineMatches(4, 4, 2); }

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
