// The one reader of the scale-vector options (norm/scale_options.h) and the
// model it builds agree: every output-side u and every branch-own γ that the
// attention, the dense MLP, the router, the routed and the shared experts
// register is exactly what ScaleOptions says, for every mode, placement and
// dual_projections list (an empty list meaning {Q, K, V} everywhere).
#include "norm/scale_options.h"

#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model.h"
#include "tests/model/model_test_util.h"

namespace scalemoe {
namespace {

using Sv = config::ScaleVectorConfig;

// Layer 0 dense (attention + MLP), layer 1 MoE with one shared expert.
config::RunConfig Config(const Sv& sv) {
  config::RunConfig cfg = testing::TinyConfig(4);
  cfg.mutable_moe()->set_first_dense_layers(1);
  cfg.mutable_moe()->set_num_shared_experts(1);
  *cfg.mutable_scale_vectors() = sv;
  return cfg;
}

std::set<std::string> ParamNames(const config::RunConfig& cfg) {
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  std::set<std::string> names;
  for (const auto& p : registry.params()) names.insert(p->spec.name);
  return names;
}

struct Site {
  std::string prefix;  // the module registering "<prefix>.u_<proj>"
  Projection proj;
  const char* suffix;
};

const std::vector<Site>& Sites() {
  static const std::vector<Site> sites = {
      {"layers.0.attn", Sv::Q, "q"},          {"layers.0.attn", Sv::K, "k"},
      {"layers.0.attn", Sv::V, "v"},          {"layers.0.attn", Sv::O, "o"},
      {"layers.1.attn", Sv::Q, "q"},          {"layers.0.mlp", Sv::GATE, "gate"},
      {"layers.0.mlp", Sv::UP, "up"},         {"layers.0.mlp", Sv::DOWN, "down"},
      {"layers.1.moe.experts.2", Sv::GATE, "gate"},
      {"layers.1.moe.experts.2", Sv::UP, "up"},
      {"layers.1.moe.experts.2", Sv::DOWN, "down"},
      {"layers.1.moe.shared_experts.0", Sv::GATE, "gate"},
      {"layers.1.moe.shared_experts.0", Sv::DOWN, "down"},
  };
  return sites;
}

void ExpectModelAgrees(const Sv& sv) {
  SCOPED_TRACE(sv.ShortDebugString());
  const ScaleOptions so(sv);
  const std::set<std::string> names = ParamNames(Config(sv));
  for (const Site& s : Sites()) {
    const std::string u = s.prefix + ".u_" + s.suffix;
    EXPECT_EQ(names.count(u) == 1, so.OutputVector(s.proj)) << u;
  }
  const struct {
    const char* own;
    BranchGroup group;
  } own[] = {{"layers.0.attn.gamma_q", BranchGroup::kAttention},
             {"layers.0.mlp.gamma_up", BranchGroup::kFfn},
             {"layers.1.moe.router.gamma", BranchGroup::kRouter},
             {"layers.1.moe.experts.3.gamma_gate", BranchGroup::kExperts},
             {"layers.1.moe.shared_experts.0.gamma_up", BranchGroup::kSharedExperts}};
  for (const auto& o : own) EXPECT_EQ(names.count(o.own) == 1, so.OwnVectors(o.group)) << o.own;
  EXPECT_EQ(names.count("final_norm.scale") == 1, !so.none());
}

TEST(ScaleOptionsTest, EmptyDualProjectionsMeansQkvEverywhere) {
  Sv sv;
  sv.set_placement(Sv::DUAL);
  const ScaleOptions so(sv);
  EXPECT_EQ(so.DualProjections(), (std::vector<Projection>{Sv::Q, Sv::K, Sv::V}));
  const std::set<std::string> names = ParamNames(Config(sv));
  for (const char* present : {"layers.0.attn.u_q", "layers.0.attn.u_k", "layers.1.attn.u_v"}) {
    EXPECT_EQ(names.count(present), 1u) << present;
  }
  for (const char* absent : {"layers.0.attn.u_o", "layers.0.mlp.u_gate", "layers.0.mlp.u_down",
                             "layers.1.moe.experts.0.u_gate", "layers.1.moe.experts.0.u_up",
                             "layers.1.moe.shared_experts.0.u_down"}) {
    EXPECT_EQ(names.count(absent), 0u) << absent;
  }
}

// Mode NONE means no vector anywhere, the experts' u's included.
TEST(ScaleOptionsTest, ModeNoneHasNoOutputVectorsEvenWhereListed) {
  Sv sv;
  sv.set_mode(Sv::NONE);
  sv.set_placement(Sv::DUAL);
  for (Projection p : {Sv::Q, Sv::O, Sv::GATE, Sv::UP, Sv::DOWN}) sv.add_dual_projections(p);
  for (const std::string& name : ParamNames(Config(sv))) {
    EXPECT_EQ(name.find(".u_"), std::string::npos) << name;
    EXPECT_EQ(name.find("gamma"), std::string::npos) << name;
  }
  ExpectModelAgrees(sv);
}

TEST(ScaleOptionsTest, EveryModulesVectorsAreWhatScaleOptionsSays) {
  const std::vector<std::vector<Projection>> lists = {
      {}, {Sv::GATE, Sv::DOWN}, {Sv::Q, Sv::O, Sv::UP}, {Sv::K, Sv::V, Sv::GATE, Sv::UP}};
  for (Sv::Mode mode : {Sv::SHARED, Sv::NONE, Sv::PER_BRANCH}) {
    for (Sv::Placement placement : {Sv::INPUT_ONLY, Sv::DUAL, Sv::DUAL_NORMALIZED}) {
      for (const auto& list : lists) {
        if (placement == Sv::INPUT_ONLY && !list.empty()) continue;  // refused by the validator
        Sv sv;
        sv.set_mode(mode);
        sv.set_placement(placement);
        sv.set_dnp_normalize_v(list.size() == 2);
        sv.set_hg_ffn(list.size() != 3);
        sv.set_hg_experts(list.size() != 2);
        for (Projection p : list) sv.add_dual_projections(p);
        ExpectModelAgrees(sv);
      }
    }
  }
}

TEST(ScaleOptionsTest, ValidatorRefusesDuplicatesAndListsWithoutDualPlacement) {
  config::RunConfig cfg = Config(Sv());
  cfg.mutable_scale_vectors()->add_dual_projections(Sv::GATE);
  ConfigProblems p;
  ValidateScaleVectorConfig(cfg, p);
  EXPECT_NE(p.ToStatus("sv").ToString().find("placement=INPUT_ONLY"), std::string::npos);
  cfg.mutable_scale_vectors()->set_placement(Sv::DUAL);
  cfg.mutable_scale_vectors()->add_dual_projections(Sv::GATE);
  ConfigProblems twice;
  ValidateScaleVectorConfig(cfg, twice);
  EXPECT_NE(twice.ToStatus("sv").ToString().find("lists GATE twice"), std::string::npos);
  cfg.mutable_scale_vectors()->clear_dual_projections();
  ConfigProblems none;
  ValidateScaleVectorConfig(cfg, none);
  EXPECT_TRUE(none.empty());
}

// fold_into_weights and fold_just_in_time pick the linear maps' path.
TEST(ScaleOptionsTest, PathFollowsTheFoldFlags) {
  Sv sv;
  EXPECT_EQ(ScaleOptions(sv).path(), ScalePath::kFold);
  sv.set_fold_just_in_time(true);
  EXPECT_EQ(ScaleOptions(sv).path(), ScalePath::kFoldJustInTime);
  sv.set_fold_into_weights(false);
  EXPECT_EQ(ScaleOptions(sv).path(), ScalePath::kPerToken);
}

}  // namespace
}  // namespace scalemoe
