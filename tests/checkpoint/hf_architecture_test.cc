// Architecture choice of the export: the features read from a model's
// tensors and config (model_features.h), the architecture each kind of model
// gets, and the refusal (naming the feature and every architecture
// considered) for models no architecture computes exactly.
#include "checkpoint/hf_architecture.h"

#include <functional>
#include <set>
#include <string>

#include "checkpoint/model_features.h"
#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"

namespace scalemoe::checkpoint {
namespace {

using Sv = config::ScaleVectorConfig;
using Edit = std::function<void(config::RunConfig&)>;

config::RunConfig Config(const Edit& edit) {
  config::RunConfig cfg = ::scalemoe::testing::TinyConfig(4);
  edit(cfg);
  return cfg;
}

// The features of the model `cfg` builds, read as the export reads a
// checkpoint of it: from its parameters' names and shapes and its config.
ModelFeatures FeaturesOf(const config::RunConfig& cfg) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  std::map<std::string, Shape> shapes;
  for (const auto& p : registry.params()) shapes[p->spec.name] = p->spec.shape;
  StatusOr<ModelFeatures> f = ModelFeaturesOf(cfg, shapes);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *f : ModelFeatures();
}

std::string Chosen(const Edit& edit) {
  StatusOr<const HfArchitecture*> a = SelectHfArchitecture(FeaturesOf(Config(edit)));
  return a.ok() ? (*a)->class_name : std::string(a.status().message());
}

void Dnp(config::RunConfig& c) {
  c.mutable_scale_vectors()->set_mode(Sv::PER_BRANCH);
  c.mutable_scale_vectors()->set_placement(Sv::DUAL_NORMALIZED);
  c.mutable_scale_vectors()->set_reparam(Sv::MAGNITUDE_DIRECTION);
}
void Dense(config::RunConfig& c) { c.mutable_moe()->set_num_experts(0); }
// gpu_finegrained_64e's MoE: sigmoid, expert bias, a shared expert of 2F,
// the first layer dense.
void Finegrained(config::RunConfig& c) {
  config::MoEConfig& m = *c.mutable_moe();
  m.set_score_function(config::MoEConfig::SIGMOID);
  m.set_expert_bias(true);
  m.set_num_shared_experts(1);
  m.set_shared_expert_ffn_hidden_size(2 * m.expert_ffn_hidden_size());
  m.set_first_dense_layers(1);
}

TEST(HfArchitectureTest, TableHasOneRowPerArchitecture) {
  std::set<std::string> names;
  for (const HfArchitecture& a : HfArchitectures()) EXPECT_TRUE(names.insert(a.class_name).second);
  EXPECT_EQ(names.size(), 5u);
}

TEST(HfArchitectureTest, DenseWithoutHeadNormsIsLlama) {
  EXPECT_EQ(Chosen(Dense), "LlamaForCausalLM");
}

TEST(HfArchitectureTest, DenseWithHeadNormsIsQwen3) {
  EXPECT_EQ(Chosen([](auto& c) { Dense(c), Dnp(c); }), "Qwen3ForCausalLM");
  EXPECT_EQ(Chosen([](auto& c) { Dense(c), c.mutable_model()->set_qk_norm(true); }), "Qwen3ForCausalLM");
}

TEST(HfArchitectureTest, SoftmaxMoeWithoutHeadNormsIsMixtral) {
  EXPECT_EQ(Chosen([](auto&) {}), "MixtralForCausalLM");
  // DUAL placement's output-side u folds into the rows: still Mixtral.
  EXPECT_EQ(Chosen([](auto& c) { c.mutable_scale_vectors()->set_placement(Sv::DUAL); }),
            "MixtralForCausalLM");
}

TEST(HfArchitectureTest, SoftmaxMoeWithHeadNormsIsQwen3Moe) {
  EXPECT_EQ(Chosen(Dnp), "Qwen3MoeForCausalLM");
  EXPECT_EQ(Chosen([](auto& c) { c.mutable_model()->set_qk_norm(true); }), "Qwen3MoeForCausalLM");
  // Under mode NONE the DNP norm has no tensor but still normalises.
  EXPECT_EQ(Chosen([](auto& c) {
              c.mutable_scale_vectors()->set_mode(Sv::NONE);
              c.mutable_scale_vectors()->set_placement(Sv::DUAL_NORMALIZED);
            }),
            "Qwen3MoeForCausalLM");
  EXPECT_EQ(Chosen([](auto& c) { Dnp(c), c.mutable_moe()->set_normalize_topk(false); }),
            "Qwen3MoeForCausalLM");
}

TEST(HfArchitectureTest, Qwen3MoeTakesAnyDenseLayerPattern) {
  EXPECT_EQ(Chosen([](auto& c) {
              Dnp(c);
              c.mutable_model()->set_num_layers(4);
              c.mutable_moe()->set_first_dense_layers(1);
              c.mutable_moe()->set_moe_layer_frequency(2);
            }),
            "Qwen3MoeForCausalLM");
}

TEST(HfArchitectureTest, SigmoidWithSharedExpertsIsGlm4Moe) {
  EXPECT_EQ(Chosen([](auto& c) { Finegrained(c), Dnp(c); }), "Glm4MoeForCausalLM");
  EXPECT_EQ(Chosen(Finegrained), "Glm4MoeForCausalLM");  // use_qk_norm false
  // Two shared experts of F: one shared MLP of 2F.
  EXPECT_EQ(Chosen([](auto& c) {
              Finegrained(c);
              c.mutable_moe()->set_num_shared_experts(2);
              c.mutable_moe()->set_shared_expert_ffn_hidden_size(0);
              c.mutable_moe()->set_expert_bias(false);
              c.mutable_moe()->set_normalize_topk(false);
            }),
            "Glm4MoeForCausalLM");
}

TEST(HfArchitectureTest, FeaturesComeFromTheModel) {
  const ModelFeatures f = FeaturesOf(Config([](auto& c) { Finegrained(c), Dnp(c); }));
  EXPECT_TRUE(f.head_qk_norm);
  EXPECT_FALSE(f.head_v_norm);
  EXPECT_EQ(f.moe_layers, (std::vector<bool>{false, true}));
  EXPECT_EQ(f.LeadingDenseLayers(), 1);
  EXPECT_EQ(f.routed_experts, 4);
  EXPECT_EQ(f.routed_hidden, 6);
  EXPECT_EQ(f.shared_experts, 1);
  EXPECT_EQ(f.shared_hidden, 12);
  EXPECT_TRUE(f.expert_bias);
  EXPECT_EQ(f.score, RouterScore::kSigmoid);
}

// A refusal names the feature (and the field to change) and every
// architecture of the model's kind that was considered.
void ExpectRefused(const Edit& edit, const std::vector<std::string>& needles) {
  StatusOr<const HfArchitecture*> a = SelectHfArchitecture(FeaturesOf(Config(edit)));
  ASSERT_FALSE(a.ok()) << "exported as " << (*a)->class_name;
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(a.status().message());
  for (const std::string& n : needles) EXPECT_NE(message.find(n), std::string::npos) << n << "\n" << message;
}

const std::vector<std::string> kMoeArchitectures = {"MixtralForCausalLM", "Qwen3MoeForCausalLM",
                                                    "Glm4MoeForCausalLM"};

TEST(HfArchitectureTest, RefusesSandwichNorms) {
  ExpectRefused([](auto& c) { c.mutable_model()->set_sandwich_norm(true); },
                {"model.sandwich_norm", "MixtralForCausalLM", "Qwen3MoeForCausalLM", "Glm4MoeForCausalLM"});
  ExpectRefused([](auto& c) { Dense(c), c.mutable_model()->set_sandwich_norm(true); },
                {"model.sandwich_norm", "LlamaForCausalLM", "Qwen3ForCausalLM"});
}

TEST(HfArchitectureTest, RefusesAValueNorm) {
  ExpectRefused([](auto& c) { Dnp(c), c.mutable_scale_vectors()->set_dnp_normalize_v(true); },
                {"scale_vectors.dnp_normalize_v", "Qwen3MoeForCausalLM"});
}

TEST(HfArchitectureTest, RefusesSoftmaxRoutingWithSharedExperts) {
  ExpectRefused([](auto& c) { Dnp(c), c.mutable_moe()->set_num_shared_experts(1); },
                {"has no shared experts (moe.num_shared_experts)", "routes by sigmoid", "Mixtral"});
}

TEST(HfArchitectureTest, RefusesUnnormalizedTopKWithoutHeadNorms) {
  // Mixtral always renormalises; Qwen3-MoE needs q/k norms; GLM is sigmoid.
  ExpectRefused([](auto& c) { c.mutable_moe()->set_normalize_topk(false); },
                {"always has top-k renormalisation (moe.normalize_topk)",
                 "always has per-head q/k norms", "routes by sigmoid"});
}

TEST(HfArchitectureTest, RefusesAnExpertBiasOnSoftmaxScores) {
  ExpectRefused([](auto& c) { Dnp(c), c.mutable_moe()->set_expert_bias(true); },
                {"has no expert bias (moe.expert_bias)"});
}

TEST(HfArchitectureTest, RefusesSigmoidRoutingWithoutSharedExperts) {
  ExpectRefused(
      [](auto& c) { Finegrained(c), c.mutable_moe()->set_num_shared_experts(0); },
      {"Glm4MoeForCausalLM: always has shared experts (moe.num_shared_experts)"});
}

TEST(HfArchitectureTest, RefusesASharedMlpThatIsNoMultipleOfTheRoutedExpert) {
  ExpectRefused([](auto& c) { Finegrained(c), c.mutable_moe()->set_shared_expert_ffn_hidden_size(5); },
                {"multiple of the routed expert's 6 hidden units", "have 5 together"});
}

TEST(HfArchitectureTest, RefusesDenseLayersBetweenMoeLayersWhereOnlyALeadingRunFits) {
  ExpectRefused(
      [](auto& c) {
        Finegrained(c);
        c.mutable_model()->set_num_layers(4);
        c.mutable_moe()->set_moe_layer_frequency(2);
      },
      {"Glm4MoeForCausalLM: has dense layers only before the first MoE layer"});
  // Without q/k norms Qwen3-MoE is out too, and Mixtral has no dense layers.
  ExpectRefused([](auto& c) { c.mutable_moe()->set_first_dense_layers(1); },
                {"Mixtral", "makes every layer MoE", "Qwen3MoeForCausalLM: always has per-head q/k norms"});
}

TEST(HfArchitectureTest, RefusesCapacityDropping) {
  ExpectRefused([](auto& c) { Dnp(c), c.mutable_moe()->set_capacity_factor(1.25); },
                {"Qwen3MoeForCausalLM: drops no tokens (moe.capacity_factor"});
}

TEST(HfArchitectureTest, MismatchIsEmptyOnlyForTheChosenArchitecture) {
  const ModelFeatures f = FeaturesOf(Config(Dnp));
  int fits = 0;
  for (const HfArchitecture& a : HfArchitectures()) {
    if (a.moe && Mismatch(a, f).empty()) ++fits;
  }
  EXPECT_EQ(fits, 1);
}

}  // namespace
}  // namespace scalemoe::checkpoint
