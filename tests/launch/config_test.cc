// Tests for launch/config.h: presets, parsing errors, --set overrides, every
// validation rule, the layout, and the check-config command's exit codes.
#include "launch/config.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/commands.h"

namespace scalemoe {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kTinyCpu[] = "configs/tiny_cpu.textproto";

std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

config::RunConfig Tiny(const std::vector<std::string>& overrides = {}) {
  StatusOr<config::RunConfig> c = LoadConfig(kTinyCpu, overrides);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : config::RunConfig();
}

TEST(PresetTest, EveryPresetLoadsAndValidates) {
  int presets = 0;
  for (const auto& entry : std::filesystem::directory_iterator("configs")) {
    if (entry.path().extension() != ".textproto") continue;
    ++presets;
    SCOPED_TRACE(entry.path().string());
    StatusOr<config::RunConfig> c = LoadConfig(entry.path().string(), {});
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(ValidateConfig(*c, MinimalWorldSize(*c)).ok())
        << ValidateConfig(*c, MinimalWorldSize(*c));
    EXPECT_EQ(c->name(), entry.path().stem().string()) << "name should match the file";
  }
  EXPECT_GE(presets, 4);
}

TEST(PresetTest, TinyCpuIsTheUnifiedStrategyAndFitsOneOrTwoRanks) {
  config::RunConfig c = Tiny();
  EXPECT_EQ(c.scale_vectors().mode(), config::ScaleVectorConfig::PER_BRANCH);
  EXPECT_EQ(c.scale_vectors().placement(), config::ScaleVectorConfig::DUAL_NORMALIZED);
  EXPECT_EQ(c.scale_vectors().reparam(), config::ScaleVectorConfig::MAGNITUDE_DIRECTION);
  EXPECT_EQ(c.scale_vectors().decay_policy(), config::ScaleVectorConfig::IWD);
  EXPECT_TRUE(ValidateConfig(c, 1).ok());
  EXPECT_TRUE(ValidateConfig(c, 2).ok());
  StatusOr<config::RunConfig> base = LoadConfig("configs/tiny_cpu_baseline.textproto", {});
  ASSERT_TRUE(base.ok());
  EXPECT_EQ(base->scale_vectors().mode(), config::ScaleVectorConfig::SHARED);
  EXPECT_EQ(base->scale_vectors().decay_policy(), config::ScaleVectorConfig::NONE_1D);
  EXPECT_EQ(base->model().SerializeAsString(), c.model().SerializeAsString());
  EXPECT_EQ(base->moe().SerializeAsString(), c.moe().SerializeAsString());
}

TEST(PresetTest, GpuPresetsFitEightGpusWithExpertParallelism) {
  for (const char* path :
       {"configs/gpu_moe_125m.textproto", "configs/gpu_finegrained_64e.textproto"}) {
    StatusOr<config::RunConfig> c = LoadConfig(path, {"parallel.ep=8"});
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->train().device(), config::TrainConfig::CUDA) << path;
    EXPECT_TRUE(ValidateConfig(*c, 8).ok()) << path << ": " << ValidateConfig(*c, 8);
  }
}

TEST(ConfigTextTest, RoundTripsWithDefaultsWrittenOut) {
  config::RunConfig c = Tiny({"scale_vectors.dual_projections=[Q, K]"});
  const std::string text = ConfigToText(c);
  // Defaults the preset leaves unset are written out.
  EXPECT_THAT(text, HasSubstr("rope_theta: 10000"));
  EXPECT_THAT(text, HasSubstr("dual_projections: [Q, K]"));
  StatusOr<config::RunConfig> again = ParseConfigText(text, "resolved");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ConfigToText(*again), text);
  EXPECT_EQ(again->model().num_layers(), 4);
}

TEST(ParseTest, UnknownFieldNamesFileLineColumnAndField) {
  const std::string path =
      WriteTemp("unknown.textproto", "name: \"x\"\nmodel {\n  num_layerz: 3\n}\n");
  StatusOr<config::RunConfig> c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr(path + ":3:"), HasSubstr("field 'num_layerz'")));
}

TEST(ParseTest, BadValueNamesTheField) {
  const std::string path = WriteTemp("badvalue.textproto", "model {\n  num_heads: four\n}\n");
  StatusOr<config::RunConfig> c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr(path + ":2:"), HasSubstr("field 'num_heads'")));
}

TEST(ParseTest, BadEnumNamesTheField) {
  const std::string path = WriteTemp("badenum.textproto", "scale_vectors { mode: PER_HEAD }\n");
  StatusOr<config::RunConfig> c = LoadConfig(path, {});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              AllOf(HasSubstr(path + ":1:"), HasSubstr("mode"), HasSubstr("PER_HEAD")));
}

// A directory reads as an empty file, i.e. the all-defaults config, which
// check-config called valid.
TEST(ParseTest, DirectoryIsNotAConfig) {
  StatusOr<config::RunConfig> c = LoadConfig("configs", {});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("configs is a directory"));
}

TEST(ParseTest, MissingFileIsNotFound) {
  StatusOr<config::RunConfig> c = LoadConfig("configs/no_such.textproto", {});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("configs/no_such.textproto"));
}

TEST(OverrideTest, NestedScalarsOfEveryKind) {
  config::RunConfig c =
      Tiny({"model.num_layers=8", "optimizer.lr=1e-4", "train.seed=18446744073709551615",
            "parallel.grad_bucket_elements=123456789012", "name=ablation_1",
            "data.dataset_dir=\"my data\""});
  EXPECT_EQ(c.model().num_layers(), 8);
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 1e-4);
  EXPECT_EQ(c.train().seed(), 18446744073709551615ull);
  EXPECT_EQ(c.parallel().grad_bucket_elements(), 123456789012);
  EXPECT_EQ(c.name(), "ablation_1");
  EXPECT_EQ(c.data().dataset_dir(), "my data");
}

TEST(OverrideTest, LaterOverrideWins) {
  EXPECT_EQ(Tiny({"model.num_layers=8", "model.num_layers=6"}).model().num_layers(), 6);
}

TEST(OverrideTest, EnumByName) {
  config::RunConfig c = Tiny({"scale_vectors.mode=NONE", "optimizer.type=MUON"});
  EXPECT_EQ(c.scale_vectors().mode(), config::ScaleVectorConfig::NONE);
  EXPECT_EQ(c.optimizer().type(), config::OptimizerConfig::MUON);
  // Lower case is accepted, also in lists.
  c = Tiny({"scale_vectors.placement=dual", "scale_vectors.dual_projections=[q, v]"});
  EXPECT_EQ(c.scale_vectors().placement(), config::ScaleVectorConfig::DUAL);
  ASSERT_EQ(c.scale_vectors().dual_projections_size(), 2);
  EXPECT_EQ(c.scale_vectors().dual_projections(1), config::ScaleVectorConfig::V);
}

TEST(OverrideTest, BoolTrueFalse) {
  config::RunConfig c = Tiny({"model.qk_norm=true", "model.tied_embeddings=false"});
  EXPECT_TRUE(c.model().qk_norm());
  EXPECT_FALSE(c.model().tied_embeddings());
}

TEST(OverrideTest, RepeatedListIsReplacedNotAppended) {
  config::RunConfig c = Tiny({"scale_vectors.dual_projections=[Q,K,V]"});
  ASSERT_EQ(c.scale_vectors().dual_projections_size(), 3);
  ASSERT_TRUE(ApplyOverride("scale_vectors.dual_projections=[O]", &c).ok());
  ASSERT_EQ(c.scale_vectors().dual_projections_size(), 1);
  EXPECT_EQ(c.scale_vectors().dual_projections(0), config::ScaleVectorConfig::O);
  ASSERT_TRUE(ApplyOverride("scale_vectors.dual_projections=[]", &c).ok());
  EXPECT_EQ(c.scale_vectors().dual_projections_size(), 0);
}

TEST(OverrideTest, RepeatedMessages) {
  config::RunConfig c =
      Tiny({"optimizer.role_multipliers=[{role: \"router\" lr_mult: 0.5}, "
            "{role: \"embedding\" wd_mult: 0}]"});
  ASSERT_EQ(c.optimizer().role_multipliers_size(), 2);
  EXPECT_EQ(c.optimizer().role_multipliers(0).role(), "router");
  EXPECT_DOUBLE_EQ(c.optimizer().role_multipliers(0).lr_mult(), 0.5);
  EXPECT_DOUBLE_EQ(c.optimizer().role_multipliers(1).wd_mult(), 0.0);
}

TEST(OverrideTest, WholeMessage) {
  config::RunConfig c = Tiny({"parallel={tp: 2 pp: 2}"});
  EXPECT_EQ(c.parallel().tp(), 2);
  EXPECT_EQ(c.parallel().pp(), 2);
}

Status Override(const std::string& assignment) {
  config::RunConfig c = Tiny();
  return ApplyOverride(assignment, &c);
}

TEST(OverrideTest, UnknownTopLevelPathListsFields) {
  Status s = Override("modle.num_layers=3");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("'modle'"), HasSubstr("model, moe, scale_vectors")));
}

TEST(OverrideTest, UnknownNestedPathListsFieldsAtThatLevel) {
  Status s = Override("model.num_layer=3");
  EXPECT_THAT(std::string(s.message()), AllOf(HasSubstr("'model.num_layer'"), HasSubstr("of model"),
                                              HasSubstr("num_layers, hidden_size")));
}

TEST(OverrideTest, PathThroughScalarIsAnError) {
  EXPECT_THAT(std::string(Override("model.num_layers.x=3").message()),
              AllOf(HasSubstr("model.num_layers"), HasSubstr("no sub-field 'x'")));
}

TEST(OverrideTest, BadValuesNameFieldAndType) {
  EXPECT_THAT(std::string(Override("model.num_layers=abc").message()),
              AllOf(HasSubstr("model.num_layers"), HasSubstr("int32")));
  EXPECT_THAT(std::string(Override("model.num_layers=99999999999").message()),
              HasSubstr("model.num_layers"));
  EXPECT_THAT(std::string(Override("scale_vectors.mode=HEADWISE").message()),
              AllOf(HasSubstr("scale_vectors.mode"), HasSubstr("SHARED, NONE, PER_BRANCH")));
  EXPECT_THAT(std::string(Override("model.qk_norm=yes").message()),
              AllOf(HasSubstr("model.qk_norm"), HasSubstr("true or false")));
  EXPECT_THAT(std::string(Override("model.num_layers=").message()), HasSubstr("empty value"));
  EXPECT_THAT(std::string(Override("model.num_layers").message()),
              HasSubstr("expected path.to.field=value"));
}

// Each case breaks one rule of the valid tiny_cpu preset; the error must
// name the field (and usually the fix).
struct RuleCase {
  std::vector<std::string> overrides;
  int world;
  std::vector<std::string> expected;
};

TEST(ValidateTest, EveryRuleNamesTheFieldAndTheFix) {
  const std::vector<RuleCase> cases = {
      {{"model.num_layers=0"}, 1, {"model.num_layers=0 must be > 0"}},
      {{"model.hidden_size=-8"}, 1, {"model.hidden_size=-8"}},
      {{"model.num_heads=0"}, 1, {"model.num_heads=0"}},
      {{"model.ffn_hidden_size=0"}, 1, {"model.ffn_hidden_size=0"}},
      {{"model.vocab_size=0"}, 1, {"model.vocab_size=0 must be > 0"}},
      {{"model.seq_length=0"}, 1, {"model.seq_length=0 must be > 0"}},
      {{"model.num_kv_heads=-1"}, 1, {"model.num_kv_heads=-1"}},
      {{"model.num_kv_heads=3"}, 1, {"model.num_kv_heads=3 does not divide model.num_heads=4"}},
      {{"model.hidden_size=130"},
       1,
       {"model.hidden_size=130 is not divisible by model.num_heads=4"}},
      {{"model.hidden_size=36"}, 1, {"head dim", "odd"}},
      {{"model.rope_theta=0"}, 1, {"model.rope_theta"}},
      {{"model.norm_eps=0"}, 1, {"model.norm_eps"}},
      {{"model.init_std=-1"}, 1, {"model.init_std"}},
      {{"model.num_heads=6", "model.hidden_size=192", "model.num_kv_heads=6", "parallel.tp=4"},
       4,
       {"model.num_heads=6 is not divisible by parallel.tp=4: choose tp that divides num_heads"}},
      {{"parallel.tp=4"}, 4, {"model.num_kv_heads=2 is not divisible by parallel.tp=4"}},
      {{"model.num_heads=4", "model.num_kv_heads=4", "parallel.tp=4", "model.vocab_size=4098"},
       4,
       {"model.vocab_size=4098 is not divisible by parallel.tp=4"}},
      {{"parallel.tp=2", "model.ffn_hidden_size=385"}, 2, {"model.ffn_hidden_size=385"}},
      {{"parallel.tp=2", "parallel.sequence_parallel=true", "model.seq_length=127"},
       2,
       {"model.seq_length=127 is not divisible by parallel.tp=2"}},
      {{"moe.num_experts=-1"}, 1, {"moe.num_experts=-1"}},
      {{"moe.num_experts=0", "parallel.ep=2"}, 2, {"parallel.ep=2 needs routed experts"}},
      {{"moe.num_experts=0", "parallel.etp=2"}, 2, {"parallel.etp=2 needs routed experts"}},
      {{"moe.top_k=9"}, 1, {"moe.top_k=9", "num_experts=8"}},
      {{"moe.top_k=0"}, 1, {"moe.top_k=0"}},
      {{"moe.expert_ffn_hidden_size=0"}, 1, {"moe.expert_ffn_hidden_size=0"}},
      {{"moe.num_shared_experts=-1"}, 1, {"moe.num_shared_experts=-1"}},
      {{"moe.shared_expert_ffn_hidden_size=-1"}, 1, {"moe.shared_expert_ffn_hidden_size=-1"}},
      {{"parallel.tp=2", "model.seq_length=127"},
       2,
       {"model.seq_length=127 is not divisible by parallel.tp=2",
        "MoE layers split each micro-batch's tokens"}},
      {{"optimizer.type=MUON", "parallel.tp=2"},
       2,
       {"optimizer.type=MUON with parallel.tp=2 etp=1 is not supported", "optimizer.type=ADAMW"}},
      {{"optimizer.type=MUON", "parallel.etp=2"},
       2,
       {"optimizer.type=MUON with parallel.tp=1 etp=2 is not supported"}},
      {{"moe.first_dense_layers=5"}, 1, {"moe.first_dense_layers=5"}},
      {{"moe.moe_layer_frequency=0"}, 1, {"moe.moe_layer_frequency=0"}},
      {{"moe.capacity_factor=-1"}, 1, {"moe.capacity_factor=-1 must be a finite value >= 0"}},
      {{"moe.aux_loss_coeff=-0.1"}, 1, {"moe.aux_loss_coeff"}},
      {{"moe.z_loss_coeff=-0.1"}, 1, {"moe.z_loss_coeff"}},
      {{"moe.expert_bias_update_rate=-1"}, 1, {"moe.expert_bias_update_rate"}},
      {{"parallel.ep=3"}, 3, {"moe.num_experts=8 is not divisible by parallel.ep=3: choose ep"}},
      {{"parallel.etp=2", "moe.expert_ffn_hidden_size=129"},
       2,
       {"moe.expert_ffn_hidden_size=129 is not divisible by parallel.etp=2"}},
      {{"parallel.pp=5"}, 5, {"model.num_layers=4 is less than parallel.pp*virtual_stages=5"}},
      {{"parallel.pp=2", "parallel.virtual_stages=3"}, 2, {"parallel.pp*virtual_stages=6"}},
      {{"parallel.virtual_stages=2"}, 1, {"parallel.virtual_stages=2 needs parallel.pp > 1"}},
      {{"parallel.virtual_stages=0"}, 1, {"parallel.virtual_stages=0"}},
      {{"parallel.zero_stage=2"}, 1, {"parallel.zero_stage=2 is not supported"}},
      {{"parallel.grad_bucket_elements=0"}, 1, {"parallel.grad_bucket_elements=0"}},
      {{"parallel.tp=0"}, 1, {"parallel.tp=0 must be > 0"}},
      {{"parallel.pp=0"}, 1, {"parallel.pp=0 must be > 0"}},
      {{"parallel.ep=0"}, 1, {"parallel.ep=0 must be > 0"}},
      {{"parallel.etp=0"}, 1, {"parallel.etp=0 must be > 0"}},
      {{"parallel.dp=-1"}, 1, {"parallel.dp=-1"}},
      {{}, 0, {"world size 0 must be >= 1"}},
      {{"parallel.tp=2"}, 3, {"world size 3 is not divisible by parallel.tp*pp=2*1=2"}},
      {{"parallel.dp=2"}, 4, {"parallel.tp*dp*pp=1*2*1=2 != world size 4", "parallel.dp=0"}},
      {{"parallel.tp=2", "parallel.ep=4"}, 2, {"not divisible by parallel.etp*ep*pp=1*4*1=4"}},
      {{"optimizer.lr=0"}, 1, {"optimizer.lr=0 must be > 0"}},
      {{"optimizer.min_lr=0.1"}, 1, {"optimizer.min_lr=0.1 must be in [0, optimizer.lr=0.003]"}},
      {{"optimizer.weight_decay=-1"}, 1, {"optimizer.weight_decay=-1"}},
      {{"optimizer.beta1=1"}, 1, {"optimizer.beta1=1 must be in [0, 1)"}},
      {{"optimizer.beta2=-0.5"}, 1, {"optimizer.beta2=-0.5"}},
      {{"optimizer.eps=0"}, 1, {"optimizer.eps=0"}},
      {{"optimizer.grad_clip=-1"}, 1, {"optimizer.grad_clip=-1"}},
      {{"optimizer.type=MUON", "optimizer.muon_lr=0"}, 1, {"optimizer.muon_lr=0"}},
      {{"optimizer.type=MUON", "optimizer.muon_momentum=1.5"}, 1, {"optimizer.muon_momentum=1.5"}},
      {{"optimizer.type=MUON", "optimizer.muon_ns_steps=0"}, 1, {"optimizer.muon_ns_steps=0"}},
      {{"optimizer.role_multipliers=[{role: \"gamma\"}]"},
       1,
       {"optimizer.role_multipliers.role='gamma' is not a parameter role", "input_norm_scale"}},
      {{"optimizer.role_multipliers=[{role: \"expert_bias\"}]"},
       1,
       {"optimizer.role_multipliers.role='expert_bias' is not a parameter role"}},
      {{"scale_vectors.placement=INPUT_ONLY", "scale_vectors.dual_projections=[GATE]"},
       1,
       {"scale_vectors.dual_projections is set but scale_vectors.placement=INPUT_ONLY"}},
      {{"scale_vectors.dual_projections=[Q, Q]"},
       1,
       {"scale_vectors.dual_projections lists Q twice"}},
      {{"optimizer.role_multipliers=[{role: \"router\"}, {role: \"router\"}]"},
       1,
       {"'router' appears twice"}},
      {{"optimizer.role_multipliers=[{role: \"router\" lr_mult: -1}]"},
       1,
       {"optimizer.role_multipliers.lr_mult=-1"}},
      {{"train.train_steps=0"}, 1, {"train.train_steps=0 must be > 0"}},
      {{"train.micro_batch_size=0"}, 1, {"train.micro_batch_size=0"}},
      {{"train.global_batch_size=-8"}, 1, {"train.global_batch_size=-8"}},
      {{"train.global_batch_size=24"},
       2,
       {"train.global_batch_size=24 is not a multiple of train.micro_batch_size*dp=8*2=16"}},
      {{"train.max_consecutive_skips=0"}, 1, {"train.max_consecutive_skips=0 must be >= 1"}},
      {{"train.eval_interval=-1"}, 1, {"train.eval_interval=-1"}},
      {{"train.loss_chunk_tokens=-4096"}, 1, {"train.loss_chunk_tokens=-4096 must be >= 0"}},
      {{"train.eval_batches=0"}, 1, {"train.eval_batches=0 must be > 0"}},
      {{"schedule.warmup_steps=301"},
       1,
       {"schedule.warmup_steps=301 must be in [0, train.train_steps=300]"}},
      {{"schedule.wsd_decay_fraction=1.5"}, 1, {"schedule.wsd_decay_fraction=1.5"}},
      {{"data.dataset_dir="}, 1, {"data.dataset_dir is empty"}},
      {{"checkpoint.interval=-1"}, 1, {"checkpoint.interval=-1"}},
      {{"checkpoint.keep_last=-1"}, 1, {"checkpoint.keep_last=-1"}},
      {{"logging.log_interval=0"}, 1, {"logging.log_interval=0"}},
      {{"name=a/b"}, 1, {"name='a/b'"}},
      {{"train.cuda_graphs=true"}, 1, {"train.cuda_graphs=true needs train.device: CUDA"}},
      {{"train.cuda_graphs=true", "train.device=CUDA"},
       2,
       {"train.cuda_graphs=true needs a world of one rank", "launch one rank"}},
      {{"train.cuda_graphs=true", "train.device=CUDA", "moe.capacity_factor=1.25"},
       1,
       {"train.cuda_graphs=true needs moe.capacity_factor: 0"}},
  };
  for (const RuleCase& rc : cases) {
    SCOPED_TRACE(testing::PrintToString(rc.overrides));
    StatusOr<config::RunConfig> c = LoadConfig(kTinyCpu, rc.overrides);
    ASSERT_TRUE(c.ok()) << c.status();
    Status s = ValidateConfig(*c, rc.world);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& e : rc.expected) EXPECT_THAT(std::string(s.message()), HasSubstr(e));
  }
}

// Shared experts stay replicated under TP: no divisibility rule for their
// ffn size; the MoE token split needs only seq_length % tp.
TEST(ValidateTest, TensorParallelMoeRulesAcceptValidLayouts) {
  EXPECT_TRUE(ValidateConfig(Tiny({"moe.num_shared_experts=1",
                                   "moe.shared_expert_ffn_hidden_size=129", "parallel.tp=2"}),
                             2)
                  .ok());
  EXPECT_TRUE(ValidateConfig(Tiny({"parallel.tp=2", "parallel.sequence_parallel=true"}), 2).ok());
  // A dense model has no MoE token split: an odd sequence is fine without SP.
  EXPECT_TRUE(
      ValidateConfig(Tiny({"parallel.tp=2", "model.seq_length=127", "moe.num_experts=0"}), 2)
          .ok());
  EXPECT_TRUE(ValidateConfig(Tiny({"optimizer.type=MUON"}), 2).ok());
}

TEST(ValidateTest, ReportsAllProblemsAtOnce) {
  Status s =
      ValidateConfig(Tiny({"optimizer.lr=0", "model.num_kv_heads=3", "train.train_steps=0"}), 1);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr("optimizer.lr"), HasSubstr("model.num_kv_heads"),
                    HasSubstr("train.train_steps"), HasSubstr("problems")));
}

TEST(ValidateTest, UnevenPipelineSplitIsAllowed) {
  EXPECT_TRUE(ValidateConfig(Tiny({"parallel.pp=3"}), 3).ok());
}

TEST(LayoutTest, DerivesDataAndExpertDataParallel) {
  StatusOr<ParallelLayout> l =
      ResolveLayout(Tiny({"parallel.tp=2", "parallel.pp=2", "parallel.ep=4"}), 16);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->tp, 2);
  EXPECT_EQ(l->pp, 2);
  EXPECT_EQ(l->dp, 4);
  EXPECT_EQ(l->ep, 4);
  EXPECT_EQ(l->etp, 1);
  EXPECT_EQ(l->edp, 2);
  EXPECT_EQ(l->world, 16);
  // tp*dp*pp = etp*ep*edp*pp = world.
  EXPECT_EQ(l->tp * l->dp * l->pp, 16);
  EXPECT_EQ(l->etp * l->ep * l->edp * l->pp, 16);
}

TEST(LayoutTest, ExplicitDataParallel) {
  StatusOr<ParallelLayout> l = ResolveLayout(Tiny({"parallel.dp=2", "parallel.ep=2"}), 2);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->dp, 2);
  EXPECT_EQ(l->edp, 1);
  EXPECT_FALSE(ResolveLayout(Tiny({"parallel.dp=2"}), 3).ok());
}

TEST(LayoutTest, MinimalWorldSize) {
  EXPECT_EQ(MinimalWorldSize(Tiny()), 1);
  EXPECT_EQ(MinimalWorldSize(Tiny({"parallel.tp=2", "parallel.ep=4"})), 4);
  EXPECT_EQ(MinimalWorldSize(Tiny({"parallel.tp=2", "parallel.pp=2", "parallel.ep=3"})), 12);
  EXPECT_EQ(MinimalWorldSize(Tiny({"parallel.dp=3", "parallel.pp=2"})), 6);
}

int RunCheck(const std::vector<std::string>& args, std::string* out, std::string* err) {
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  const int rc = CheckConfigCommand().run(args);
  *out = ::testing::internal::GetCapturedStdout();
  *err = ::testing::internal::GetCapturedStderr();
  return rc;
}

TEST(CheckConfigCommandTest, ValidConfigPrintsResolvedTextAndExitsZero) {
  std::string out, err;
  EXPECT_EQ(
      RunCheck({"--config", kTinyCpu, "--world", "2", "--set", "model.num_layers=6"}, &out, &err),
      0)
      << err;
  EXPECT_THAT(out,
              AllOf(HasSubstr("dp=2"), HasSubstr("num_layers: 6"), HasSubstr("mode: PER_BRANCH")));
  StatusOr<config::RunConfig> printed = ParseConfigText(out, "stdout");
  ASSERT_TRUE(printed.ok()) << printed.status();
  EXPECT_EQ(printed->model().num_layers(), 6);
}

TEST(CheckConfigCommandTest, InvalidConfigExitsTwoNamingTheField) {
  std::string out, err;
  EXPECT_EQ(RunCheck({"--config=" + std::string(kTinyCpu), "--set=parallel.ep=3", "--world=3"},
                     &out, &err),
            2);
  EXPECT_THAT(err, HasSubstr("moe.num_experts=8 is not divisible by parallel.ep=3"));
  EXPECT_EQ(out, "");
}

TEST(CheckConfigCommandTest, BadUsageExitsTwo) {
  std::string out, err;
  EXPECT_EQ(RunCheck({}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("--config is required"));
  EXPECT_EQ(RunCheck({"--config", kTinyCpu, "--wrld", "2"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("unknown flag '--wrld'"));
  EXPECT_EQ(RunCheck({"--config", kTinyCpu, "--world", "zero"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("--world 'zero'"));
  EXPECT_EQ(RunCheck({"--config", "configs/missing.textproto"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("configs/missing.textproto"));
  EXPECT_EQ(RunCheck({"--config", kTinyCpu, "--set", "model.bogus=1"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("model.bogus"));
  EXPECT_EQ(RunCheck({"--config"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("--config needs a value"));
  EXPECT_EQ(RunCheck({"--config", "configs"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("configs is a directory"));
  EXPECT_EQ(out, "");
}

TEST(CheckConfigCommandTest, IsListedInTheCli) {
  bool found = false;
  for (const Subcommand& s : Subcommands()) found |= s.name == "check-config";
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace scalemoe
