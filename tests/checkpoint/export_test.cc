// Export: a tiny MoE with the unified scale-vector strategy (perturbed γ, u,
// DNP scales) is saved, exported, and checked: folded weights equal
// diag(u) W diag(γ), the export passes scripts/export_check.py, and the
// plain model's numpy loss matches MoeTransformer::Forward.
#include "checkpoint/export.h"

#include <cstdio>
#include <memory>

#include "checkpoint/checkpoint.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/training_tensors.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "nlohmann/json.hpp"
#include "parallel/fake_communicator.h"
#include "tests/testing/python.h"
#include "tests/checkpoint/temp_dir.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe::checkpoint {
namespace {

config::RunConfig ExportConfig() {
  config::RunConfig cfg = ::scalemoe::testing::TinyConfig(4);
  config::ScaleVectorConfig& sv = *cfg.mutable_scale_vectors();
  sv.set_mode(config::ScaleVectorConfig::PER_BRANCH);
  sv.set_placement(config::ScaleVectorConfig::DUAL_NORMALIZED);
  sv.set_reparam(config::ScaleVectorConfig::MAGNITUDE_DIRECTION);
  cfg.mutable_moe()->set_aux_loss_coeff(0);
  cfg.mutable_moe()->set_z_loss_coeff(0);
  return cfg;
}

TEST(ExportTest, FoldsScaleVectorsAndMatchesTheModelLoss) {
  testing::TempDir dir;
  const config::RunConfig cfg = ExportConfig();
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  ASSERT_TRUE(registry.Materialize(7, DType::kF32, Device::kCPU).ok());
  ASSERT_GT(::scalemoe::testing::PerturbScaleVectors(registry, 3), 0);

  SaveRequest req;
  req.root = dir.path();
  req.step = 1;
  google::protobuf::TextFormat::PrintToString(cfg, &req.config_text);
  std::map<std::string, Tensor> values;
  for (const auto& p : registry.params()) {
    req.tensors.push_back({p->spec.name, p->value, {}, {}, TensorRole::kModel});
    values[p->spec.name] = p->value;
  }
  ASSERT_TRUE(SaveCheckpoint(req).ok());
  const std::string out = dir.path() + "/export";
  Status s = ExportCheckpoint({dir.path() + "/checkpoints/step_1", out, DType::kF32, ""});
  ASSERT_TRUE(s.ok()) << s;

  // q_proj of layer 0 = W_q diag(β·α) (DNP on q: no u, the per-head norm is extra).
  StatusOr<SafetensorsFile> st = SafetensorsFile::Read(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  StatusOr<Tensor> q = st->Get("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  const Tensor& w = values.at("layers.0.attn.w_q");
  const double beta = values.at("layers.0.attn.gamma_q.beta").At(0);
  const Tensor& alpha = values.at("layers.0.attn.gamma_q.alpha");
  const int64_t cols = w.shape()[1];
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_NEAR(q->At(i), w.At(i) * beta * alpha.At(i % cols), 1e-6) << i;
  }
  EXPECT_NE(st->Find("model.layers.0.self_attn.q_norm.weight"), nullptr);
  EXPECT_NE(st->Find("lm_head.weight"), nullptr);

  // The numpy forward of the plain model.
  const std::string python = scalemoe::testing::PythonWithNumpy();
  if (python.empty()) {
    GTEST_SKIP() << "no python3 with numpy (apt-get install python3-numpy): numpy check skipped";
  }
  const std::string cmd = python + " " SCALEMOE_SOURCE_DIR "/scripts/export_check.py " + out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string text;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), pipe)) text.append(buf, n);
  ASSERT_EQ(::pclose(pipe), 0) << text;
  nlohmann::json j = nlohmann::json::parse(text);
  ASSERT_TRUE(j["ok"].get<bool>());
  const auto tokens = j["tokens"].get<std::vector<std::vector<int>>>();
  const int64_t b = static_cast<int64_t>(tokens.size());
  const int64_t t = static_cast<int64_t>(tokens[0].size()) - 1;
  std::vector<double> in, tgt;
  for (const auto& row : tokens) {
    for (int64_t i = 0; i < t; ++i) {
      in.push_back(row[i]);
      tgt.push_back(row[i + 1]);
    }
  }
  const ExecContext ctx = ExecContext::Cpu();
  Must(model.PrepareStep(ctx));
  LossBreakdown loss = Must(model.Forward(ctx, Tensor::FromVector({b, t}, in, DType::kI32),
                                          Tensor::FromVector({b, t}, tgt, DType::kI32)));
  EXPECT_NEAR(j["loss"].get<double>(), loss.cross_entropy, 1e-4) << text;
}

// A checkpoint written by two TP ranks (split tensors as slices, replicated
// ones by TP rank 0) exports the same consolidated model as a one-rank
// checkpoint of the same model: init is layout-independent.
TEST(ExportTest, TensorParallelCheckpointExportsLikeOneRank) {
  testing::TempDir one, two;
  config::RunConfig cfg = ExportConfig();
  cfg.mutable_model()->set_num_kv_heads(cfg.model().num_heads());  // splits over tp=2
  std::string config_text;
  google::protobuf::TextFormat::PrintToString(cfg, &config_text);
  {
    ParamRegistry registry;
    MoeTransformer model(registry, cfg);
    ASSERT_TRUE(registry.Materialize(7, DType::kF32, Device::kCPU).ok());
    SaveRequest req;
    req.root = one.path();
    req.step = 1;
    req.config_text = config_text;
    req.tensors = TrainingTensors(registry, {}, 0, GridCoords{}, true);
    ASSERT_TRUE(SaveCheckpoint(req).ok());
  }
  FakeWorld world;
  const Status saved = world.Run(2, {.tp = 2, .dp = 1, .etp = 2, .edp = 1}, [&](ProcessGroups& pg) -> Status {
    ParamRegistry registry(ShardCoords{pg.coords.tp, 2, pg.coords.etp, 2});
    MoeTransformer model(registry, cfg, &pg);  // parameters only (no forward)
    SM_RETURN_IF_ERROR(registry.Materialize(7, DType::kF32, Device::kCPU));
    int split = 0;
    for (const auto& p : registry.params()) split += p->spec.layout.tp_split_dim >= 0;
    if (split == 0) return absl::InternalError("no split parameter: the test checks nothing");
    SaveRequest req;
    req.root = two.path();
    req.step = 1;
    req.config_text = config_text;
    req.layout = {2, 1, 1, 1, 2, 2, 0};
    req.rank = pg.coords.global;
    req.tensors = TrainingTensors(registry, {}, 0, pg.coords, true);
    return SaveCheckpoint(req, pg.world.get());
  });
  ASSERT_TRUE(saved.ok()) << saved;
  StatusOr<std::string> described = DescribeCheckpoint(two.path() + "/checkpoints/step_1");
  ASSERT_TRUE(described.ok()) << described.status();
  for (const testing::TempDir* d : {&one, &two}) {
    const Status s =
        ExportCheckpoint({d->path() + "/checkpoints/step_1", d->path() + "/export", DType::kF32, ""});
    ASSERT_TRUE(s.ok()) << s;
  }
  StatusOr<SafetensorsFile> a = SafetensorsFile::Read(one.path() + "/export/model.safetensors");
  StatusOr<SafetensorsFile> b = SafetensorsFile::Read(two.path() + "/export/model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->entries().size(), b->entries().size());
  for (const SafetensorsEntry& e : a->entries()) {
    ASSERT_NE(b->Find(e.name), nullptr) << e.name;
    EXPECT_EQ((*a->Get(e.name)).ToVector(), (*b->Get(e.name)).ToVector()) << e.name;
  }
}

}  // namespace
}  // namespace scalemoe::checkpoint
