// Export: tiny models of every kind (scale vectors and expert biases moved
// away from their init) are saved, exported and checked: the architecture
// chosen, folded weights equal diag(u) W diag(γ), tied heads stay tied, and
// scripts/export_check.py (each architecture's forward as transformers
// defines it, in numpy, with the exact key set it loads) matches
// MoeTransformer's loss. Refused models write nothing. A TP-sharded
// checkpoint exports like one rank's.
#include "checkpoint/export.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/training_tensors.h"
#include "core/philox.h"
#include "google/protobuf/text_format.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "nlohmann/json.hpp"
#include "parallel/fake_communicator.h"
#include "tests/checkpoint/temp_dir.h"
#include "tests/model/model_test_util.h"
#include "tests/testing/python.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe::checkpoint {
namespace {

using Sv = config::ScaleVectorConfig;
using Edit = std::function<void(config::RunConfig&)>;

config::RunConfig Config(const Edit& edit) {
  config::RunConfig cfg = ::scalemoe::testing::TinyConfig(4);
  cfg.mutable_moe()->set_aux_loss_coeff(0);
  cfg.mutable_moe()->set_z_loss_coeff(0);
  edit(cfg);
  return cfg;
}

void Dnp(config::RunConfig& c) {
  c.mutable_scale_vectors()->set_mode(Sv::PER_BRANCH);
  c.mutable_scale_vectors()->set_placement(Sv::DUAL_NORMALIZED);
  c.mutable_scale_vectors()->set_reparam(Sv::MAGNITUDE_DIRECTION);
}
void Untied(config::RunConfig& c) { c.mutable_model()->set_tied_embeddings(false); }

// A model of `cfg` with every scale vector and expert bias away from init,
// saved as step 1 under `root`.
struct SavedModel {
  std::unique_ptr<ParamRegistry> registry;
  std::unique_ptr<MoeTransformer> model;
  std::map<std::string, Tensor> values;
};

SavedModel Save(const config::RunConfig& cfg, const std::string& root) {
  SavedModel s;
  s.registry = std::make_unique<ParamRegistry>();
  s.model = std::make_unique<MoeTransformer>(*s.registry, cfg);
  EXPECT_TRUE(s.registry->Materialize(7, DType::kF32, Device::kCPU).ok());
  ::scalemoe::testing::PerturbScaleVectors(*s.registry, 3);
  SaveRequest req;
  req.root = root;
  req.step = 1;
  google::protobuf::TextFormat::PrintToString(cfg, &req.config_text);
  for (const auto& p : s.registry->params()) {
    if (p->spec.role == ParamRole::kExpertBias) {  // large enough to change the selection
      for (int64_t i = 0; i < p->value.numel(); ++i) {
        p->value.View({p->value.numel()}).Narrow(0, i, 1).Fill(0.5 * PhiloxNormal(5, 0, i));
      }
    }
    req.tensors.push_back({p->spec.name, p->value, {}, {}, TensorRole::kModel});
    s.values[p->spec.name] = p->value;
  }
  EXPECT_TRUE(SaveCheckpoint(req).ok());
  return s;
}

// scalemoe_reference.json as `scalemoe export` writes it: the model's own
// cross-entropy on 2 Philox-drawn sequences of seq_length + 1 tokens.
void WriteReference(MoeTransformer& model, const config::RunConfig& cfg, const std::string& out) {
  const int64_t b = 2, t = cfg.model().seq_length();
  std::vector<double> in, tgt;
  nlohmann::json tokens = nlohmann::json::array();
  for (int64_t s = 0; s < b; ++s) {
    std::vector<int> seq;
    for (int64_t i = 0; i <= t; ++i) seq.push_back(static_cast<int>(PhiloxUniform(99, s, i) * cfg.model().vocab_size()));
    for (int64_t i = 0; i < t; ++i) {
      in.push_back(seq[i]);
      tgt.push_back(seq[i + 1]);
    }
    tokens.push_back(seq);
  }
  const ExecContext ctx = ExecContext::Cpu();
  Must(model.PrepareStep(ctx));
  const LossBreakdown loss = Must(model.Forward(ctx, Tensor::FromVector({b, t}, in, DType::kI32),
                                                Tensor::FromVector({b, t}, tgt, DType::kI32)));
  std::ofstream(out + "/scalemoe_reference.json")
      << nlohmann::json{{"tokens", tokens}, {"cross_entropy", loss.cross_entropy}}.dump();
}

// Runs scripts/export_check.py on `out`: "" on success, else its output.
std::string NumpyCheck(const std::string& python, const std::string& out) {
  const std::string cmd = python + " " SCALEMOE_SOURCE_DIR "/scripts/export_check.py " + out + " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return "cannot run " + cmd;
  std::string text;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof(buf), pipe)) text.append(buf, n);
  return ::pclose(pipe) == 0 ? "" : text;
}

struct Case {
  const char* name;
  const char* architecture;
  Edit edit;
};

class ExportCaseTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExportCaseTest, LoadsAsItsArchitectureAndMatchesTheModelLoss) {
  testing::TempDir dir;
  const config::RunConfig cfg = Config(GetParam().edit);
  SavedModel saved = Save(cfg, dir.path());
  const std::string out = dir.path() + "/export";
  StatusOr<ExportResult> result =
      ExportCheckpoint({dir.path() + "/checkpoints/step_1", out, DType::kF32, "", WholeModelSpecs});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->architecture, GetParam().architecture);
  EXPECT_EQ(result->tied_embeddings, cfg.model().tied_embeddings());

  StatusOr<SafetensorsFile> st = SafetensorsFile::Read(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->Find("lm_head.weight") == nullptr, cfg.model().tied_embeddings());
  std::ifstream config_file(out + "/config.json");
  const nlohmann::json hf = nlohmann::json::parse(config_file);
  EXPECT_EQ(hf["architectures"][0], GetParam().architecture);
  EXPECT_EQ(hf["tie_word_embeddings"], cfg.model().tied_embeddings());

  const std::string python = scalemoe::testing::PythonWithNumpy();
  if (python.empty()) GTEST_SKIP() << "no python3 with numpy (apt-get install python3-numpy): numpy check skipped";
  WriteReference(*saved.model, cfg, out);
  EXPECT_EQ(NumpyCheck(python, out), "");
}

const Case kCases[] = {
    {"mixtral_shared_gamma", "MixtralForCausalLM", [](config::RunConfig&) {}},
    {"mixtral_dual_untied", "MixtralForCausalLM",
     [](config::RunConfig& c) {
       Untied(c);
       c.mutable_scale_vectors()->set_mode(Sv::PER_BRANCH);
       c.mutable_scale_vectors()->set_placement(Sv::DUAL);
       c.mutable_scale_vectors()->set_reparam(Sv::MAGNITUDE_DIRECTION_NORMALIZED);
     }},
    {"qwen3_moe_dnp_untied", "Qwen3MoeForCausalLM",
     [](config::RunConfig& c) {
       Dnp(c), Untied(c);
       c.mutable_moe()->set_normalize_topk(false);
     }},
    {"qwen3_moe_dense_layers", "Qwen3MoeForCausalLM",
     [](config::RunConfig& c) {
       c.mutable_scale_vectors()->set_mode(Sv::NONE);  // the q/k norms without scales
       c.mutable_model()->set_qk_norm(true);
       c.mutable_model()->set_num_layers(4);
       c.mutable_moe()->set_first_dense_layers(1);
       c.mutable_moe()->set_moe_layer_frequency(2);
     }},
    {"glm4_moe_finegrained", "Glm4MoeForCausalLM",
     [](config::RunConfig& c) {
       Dnp(c);
       config::MoEConfig& m = *c.mutable_moe();
       m.set_score_function(config::MoEConfig::SIGMOID);
       m.set_expert_bias(true);
       m.set_num_shared_experts(1);
       m.set_shared_expert_ffn_hidden_size(12);
       m.set_first_dense_layers(1);
     }},
    {"glm4_moe_two_shared_untied", "Glm4MoeForCausalLM",
     [](config::RunConfig& c) {
       Untied(c);
       c.mutable_scale_vectors()->set_mode(Sv::PER_BRANCH);
       config::MoEConfig& m = *c.mutable_moe();
       m.set_score_function(config::MoEConfig::SIGMOID);
       m.set_normalize_topk(false);
       m.set_num_shared_experts(2);
     }},
    {"llama_untied", "LlamaForCausalLM",
     [](config::RunConfig& c) {
       Untied(c);
       c.mutable_moe()->set_num_experts(0);
       c.mutable_scale_vectors()->set_mode(Sv::PER_BRANCH);
     }},
    {"qwen3_dnp", "Qwen3ForCausalLM",
     [](config::RunConfig& c) {
       Dnp(c);
       c.mutable_moe()->set_num_experts(0);
     }},
};

INSTANTIATE_TEST_SUITE_P(Kinds, ExportCaseTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ExportTest, FoldsInputScalesIntoColumnsAndKeepsTheFinalNormAsANormWeight) {
  testing::TempDir dir;
  const config::RunConfig cfg = Config(Dnp);
  SavedModel saved = Save(cfg, dir.path());
  const std::string out = dir.path() + "/export";
  ASSERT_TRUE(
      ExportCheckpoint({dir.path() + "/checkpoints/step_1", out, DType::kF32, "", WholeModelSpecs})
          .ok());
  StatusOr<SafetensorsFile> st = SafetensorsFile::Read(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  // q_proj of layer 0 = W_q diag(β·α) (DNP on q: no u; its head norm is q_norm).
  const Tensor q = *st->Get("model.layers.0.self_attn.q_proj.weight");
  const Tensor& w = saved.values.at("layers.0.attn.w_q");
  const double beta = saved.values.at("layers.0.attn.gamma_q.beta").At(0);
  const Tensor& alpha = saved.values.at("layers.0.attn.gamma_q.alpha");
  const int64_t cols = w.shape()[1];
  for (int64_t i = 0; i < w.numel(); ++i) {
    ASSERT_NEAR(q.At(i), w.At(i) * beta * alpha.At(i % cols), 1e-6) << i;
  }
  const Tensor q_norm = *st->Get("model.layers.0.self_attn.q_norm.weight");
  const double q_norm_beta = saved.values.at("layers.0.attn.dnp_q.scale.beta").At(0);
  for (int64_t i = 0; i < q_norm.numel(); ++i) {
    EXPECT_NEAR(q_norm.At(i), q_norm_beta * saved.values.at("layers.0.attn.dnp_q.scale.alpha").At(i), 1e-6);
  }
  // Tied: the head is the embedding, the final γ its norm's weight.
  EXPECT_EQ(st->Find("lm_head.weight"), nullptr);
  EXPECT_EQ(st->Get("model.embed_tokens.weight")->ToVector(), saved.values.at("embedding.weight").ToVector());
  const Tensor final_norm = *st->Get("model.norm.weight");
  const double final_beta = saved.values.at("final_norm.scale.beta").At(0);
  for (int64_t i = 0; i < final_norm.numel(); ++i) {
    EXPECT_NEAR(final_norm.At(i), final_beta * saved.values.at("final_norm.scale.alpha").At(i), 1e-6);
  }
}

TEST(ExportTest, RefusedModelWritesNothing) {
  testing::TempDir dir;
  Save(Config([](config::RunConfig& c) { c.mutable_model()->set_sandwich_norm(true); }), dir.path());
  const std::string out = dir.path() + "/export";
  StatusOr<ExportResult> result =
      ExportCheckpoint({dir.path() + "/checkpoints/step_1", out, DType::kF32, "", WholeModelSpecs});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(result.status().message().find("model.sandwich_norm"), std::string::npos) << result.status();
  EXPECT_FALSE(std::filesystem::exists(out));
}

// --unfolded: every model tensor exactly as saved, under the trainer's names
// (scale vectors not folded), and the run's config; any model, even one no
// Hugging Face architecture computes.
TEST(ExportTest, UnfoldedExportWritesEveryTensorAsTheTrainerHoldsIt) {
  testing::TempDir dir;
  const config::RunConfig cfg = Config([](config::RunConfig& c) {
    Dnp(c);
    c.mutable_model()->set_sandwich_norm(true);
  });
  SavedModel saved = Save(cfg, dir.path());
  const std::string out = dir.path() + "/export";
  ExportOptions options{dir.path() + "/checkpoints/step_1", out, DType::kF32, "", nullptr};
  options.unfolded = true;
  StatusOr<ExportResult> result = ExportCheckpoint(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->architecture, "unfolded");
  EXPECT_EQ(result->tied_embeddings, cfg.model().tied_embeddings());
  StatusOr<SafetensorsFile> st = SafetensorsFile::Read(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->entries().size(), saved.values.size());
  for (const auto& [name, value] : saved.values) {
    StatusOr<Tensor> t = st->Get(name);
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    EXPECT_EQ(t->shape(), value.shape()) << name;
    EXPECT_EQ(t->ToVector(), value.ToVector()) << name;
  }
  std::ifstream text(out + "/config.textproto");
  std::stringstream content;
  content << text.rdbuf();
  config::RunConfig read;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(content.str(), &read));
  EXPECT_TRUE(read.model().sandwich_norm());
  EXPECT_EQ(read.scale_vectors().placement(), Sv::DUAL_NORMALIZED);
}

TEST(ExportTest, Bf16ExportKeepsTheExpertBiasInF32) {
  testing::TempDir dir;
  Save(Config([](config::RunConfig& c) {
         config::MoEConfig& m = *c.mutable_moe();
         m.set_score_function(config::MoEConfig::SIGMOID);
         m.set_expert_bias(true);
         m.set_num_shared_experts(1);
       }),
       dir.path());
  const std::string out = dir.path() + "/export";
  ASSERT_TRUE(
      ExportCheckpoint({dir.path() + "/checkpoints/step_1", out, DType::kBF16, "", WholeModelSpecs})
          .ok());
  StatusOr<SafetensorsFile> st = SafetensorsFile::Read(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->Find("model.layers.0.mlp.gate.e_score_correction_bias")->dtype, DType::kF32);
  EXPECT_EQ(st->Find("model.layers.0.mlp.gate.weight")->dtype, DType::kBF16);
}

// A checkpoint written by two TP ranks (split tensors as slices, replicated
// ones by TP rank 0) exports the same consolidated model as a one-rank
// checkpoint of the same model: init is layout-independent.
TEST(ExportTest, TensorParallelCheckpointExportsLikeOneRank) {
  testing::TempDir one, two;
  config::RunConfig cfg = Config(Dnp);
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
    req.tensors = TrainingTensors(registry, {}, GridCoords{}, true);
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
    req.tensors = TrainingTensors(registry, {}, pg.coords, true);
    return SaveCheckpoint(req, pg.world.get());
  });
  ASSERT_TRUE(saved.ok()) << saved;
  StatusOr<std::string> described = DescribeCheckpoint(two.path() + "/checkpoints/step_1");
  ASSERT_TRUE(described.ok()) << described.status();
  for (const testing::TempDir* d : {&one, &two}) {
    const StatusOr<ExportResult> r =
        ExportCheckpoint({d->path() + "/checkpoints/step_1", d->path() + "/export", DType::kF32, "",
                          WholeModelSpecs});
    ASSERT_TRUE(r.ok()) << r.status();
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
