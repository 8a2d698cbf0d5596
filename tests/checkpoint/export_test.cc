// Export: a tiny MoE with the unified scale-vector strategy (perturbed γ, u,
// DNP scales) is saved, exported, and checked: folded weights equal
// diag(u) W diag(γ), the export passes scripts/export_check.py, and the
// plain model's numpy loss matches MoeTransformer::Forward.
#include "checkpoint/export.h"

#include <cstdio>
#include <memory>

#include "checkpoint/checkpoint.h"
#include "checkpoint/safetensors.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "nlohmann/json.hpp"
#include "tests/testing/python.h"
#include "tests/checkpoint/temp_dir.h"
#include "tests/model/model_test_util.h"

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
  model.PrepareStep(ctx);
  LossBreakdown loss = model.Forward(ctx, Tensor::FromVector({b, t}, in, DType::kI32),
                                     Tensor::FromVector({b, t}, tgt, DType::kI32));
  EXPECT_NEAR(j["loss"].get<double>(), loss.cross_entropy, 1e-4) << text;
}

}  // namespace
}  // namespace scalemoe::checkpoint
