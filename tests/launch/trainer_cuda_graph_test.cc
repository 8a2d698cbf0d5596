// train.cuda_graphs (label gpu: skipped without a device, a failure under
// SCALEMOE_REQUIRE_GPU=1): runs whose micro-batches replay a captured CUDA
// graph give the same bits as the same runs without graphs — every logged
// figure (losses, gradient norm, the MoE layers' loads and losses), every
// evaluation and every parameter of the final checkpoint — with two
// micro-batches per step, an evaluation and checkpoints in between (each
// evaluation drops the graph, which is captured again), in fp32 and bf16,
// with the fine-grained preset's shared expert and expert bias, and with
// bf16 logits and the loss in chunks;
// the graphs were really replayed; and a quiet step with graphs reads
// nothing on the host and calls cudaMalloc/cudaFree zero times.
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "launch/metrics.h"
#include "launch/trainer.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

class TrainerCudaGraphTest : public testing::TinyDatasetGpuSuite {
 protected:
  static TrainOptions Options(const std::string& name, std::vector<std::string> extra) {
    // Two micro-batches per step; an evaluation and checkpoints mid-run.
    extra.insert(extra.begin(),
                 {"train.device=CUDA", "train.train_steps=12", "train.eval_interval=6",
                  "checkpoint.interval=6", "train.micro_batch_size=2",
                  "train.global_batch_size=4"});
    TrainOptions o;
    o.config = testing::TinyTrainingConfig(*root_, extra);
    o.run_dir = (*root_ / name).string();
    o.quiet = true;
    return o;
  }

  // Every record of a run's metrics.jsonl without its clock figures.
  static std::vector<nlohmann::json> Records(const TrainOptions& o) {
    StatusOr<std::vector<nlohmann::json>> records =
        ReadMetricsFile((fs::path(o.run_dir) / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    if (!records.ok()) return {};
    for (nlohmann::json& r : *records) {
      r.erase("tokens_per_s");
      r.erase("tflops");
    }
    return *records;
  }

};

TEST_F(TrainerCudaGraphTest, ReplaysGiveTheEagerRunsBits) {
  struct Case {
    const char* name;
    std::vector<std::string> overrides;
  };
  // tiny_cpu's strategy in fp32 and bf16; and gpu_finegrained_64e's
  // features: a shared expert, a dense first layer, sigmoid routing with
  // the expert bias.
  const std::vector<Case> cases = {
      {"FP32", {"train.precision=FP32"}},
      {"BF16", {"train.precision=BF16"}},
      {"finegrained",
       {"train.precision=BF16", "moe.num_shared_experts=1", "moe.shared_expert_ffn_hidden_size=16",
        "moe.first_dense_layers=1", "moe.score_function=SIGMOID", "moe.normalize_topk=true",
        "moe.expert_bias=true", "moe.expert_bias_update_rate=0.01"}},
      // bf16 logits, and the loss in chunks of 12 of a micro-batch's 32
      // tokens: the backward's second pass inside the graph.
      {"chunked",
       {"train.precision=BF16", "train.fp32_logits=false", "train.loss_chunk_tokens=12"}},
  };
  for (const Case& c : cases) {
    const char* precision = c.name;
    SCOPED_TRACE(precision);
    const std::vector<std::string>& common = c.overrides;
    std::vector<std::string> with_graphs = common;
    with_graphs.push_back("train.cuda_graphs=true");
    const TrainOptions eager = Options(absl::StrCat("eager_", precision), common);
    const TrainOptions graphs = Options(absl::StrCat("graphs_", precision), with_graphs);
    StatusOr<TrainResult> e = Train(eager);
    ASSERT_TRUE(e.ok()) << e.status();
    StatusOr<TrainResult> g = Train(graphs);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->steps_done, 12);
    std::printf("%s: %lld replays, %lld captures, %lld eager micro-batches of 24\n", precision,
                static_cast<long long>(g->cuda_graph_replays),
                static_cast<long long>(g->cuda_graph_captures),
                static_cast<long long>(g->cuda_graph_eager));
    // Not vacuous: most micro-batches were replays. The first runs eagerly;
    // captures: the first, one when the work around the graph settles, and
    // the same again after the evaluation.
    EXPECT_EQ(g->cuda_graph_replays + g->cuda_graph_captures + g->cuda_graph_eager, 24);
    EXPECT_GE(g->cuda_graph_replays, 16);
    EXPECT_EQ(e->cuda_graph_replays, 0);

    const std::vector<nlohmann::json> want = Records(eager), got = Records(graphs);
    ASSERT_EQ(got.size(), want.size());
    ASSERT_GE(want.size(), 12u);
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "record " << i;
    EXPECT_EQ(g->last_val_loss, e->last_val_loss);

    StatusOr<testing::WholeModel> a =
        testing::LoadWholeModel(eager.config, (fs::path(eager.run_dir) / "checkpoints/step_12").string());
    StatusOr<testing::WholeModel> b = testing::LoadWholeModel(
        graphs.config, (fs::path(graphs.run_dir) / "checkpoints/step_12").string());
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    const auto& pa = a->registry->params();
    const auto& pb = b->registry->params();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      const Tensor& x = pa[i]->value;
      const Tensor& y = pb[i]->value;
      ASSERT_EQ(x.numel(), y.numel()) << pa[i]->spec.name;
      int64_t differ = 0;
      for (int64_t j = 0; j < x.numel(); ++j) differ += x.At(j) != y.At(j);
      EXPECT_EQ(differ, 0) << pa[i]->spec.name;
    }
  }
}

TEST_F(TrainerCudaGraphTest, AQuietStepReplaysWithoutHostWork) {
  TrainOptions o = Options("quiet", {"train.cuda_graphs=true", "train.train_steps=8",
                                     "logging.log_interval=8", "train.eval_interval=0",
                                     "checkpoint.interval=0", "checkpoint.save_at_end=false"});
  StatusOr<TrainResult> r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->quiet_step_host_reads, 0);
  EXPECT_EQ(r->quiet_step_system_allocs, 0);
  EXPECT_GE(r->cuda_graph_replays, 10);
}

}  // namespace
}  // namespace scalemoe
