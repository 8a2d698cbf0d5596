#include "optim/param_groups.h"

#include <algorithm>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace scalemoe {
namespace {

using config::ScaleVectorConfig;

ParamSpec Spec(std::string name, Shape shape, ParamRole role) {
  return ParamSpec{std::move(name), std::move(shape), role, InitSpec::Ones(), {}};
}

// The decay table of param_groups.h, written out for every role and policy.
TEST(DecaysTest, TableForEveryRoleAndPolicy) {
  struct Row {
    ParamRole role;
    int ndim;
    bool iwd, none_1d, all, output_only;
  };
  const Row rows[] = {
      {ParamRole::kLinear, 2, true, true, true, true},
      {ParamRole::kExpertLinear, 2, true, true, true, true},
      {ParamRole::kRouter, 2, true, true, true, true},
      {ParamRole::kEmbedding, 2, true, true, true, true},
      {ParamRole::kLmHead, 2, true, true, true, true},
      {ParamRole::kInputNormScale, 1, true, false, true, false},
      {ParamRole::kOutputNormScale, 1, false, false, true, true},
      {ParamRole::kBias, 1, false, false, true, false},
      {ParamRole::kExpertBias, 1, false, false, false, false},
  };
  for (const Row& r : rows) {
    SCOPED_TRACE(ParamRoleName(r.role));
    EXPECT_EQ(Decays(r.role, r.ndim, ScaleVectorConfig::IWD), r.iwd);
    EXPECT_EQ(Decays(r.role, r.ndim, ScaleVectorConfig::NONE_1D), r.none_1d);
    EXPECT_EQ(Decays(r.role, r.ndim, ScaleVectorConfig::ALL), r.all);
    EXPECT_EQ(Decays(r.role, r.ndim, ScaleVectorConfig::OUTPUT_ONLY), r.output_only);
  }
  // OR's magnitude β is a [1] vector: it follows its γ's role under IWD and
  // is exempt under NONE_1D like every 1-D parameter.
  EXPECT_TRUE(Decays(ParamRole::kInputNormScale, 1, ScaleVectorConfig::IWD));
  EXPECT_FALSE(Decays(ParamRole::kInputNormScale, 1, ScaleVectorConfig::NONE_1D));
}

class ParamGroupsTest : public ::testing::Test {
 protected:
  ParamGroupsTest() {
    w_ = reg_.Create(Spec("layers.0.attn.w_qkv", {4, 6}, ParamRole::kLinear));
    gin_ = reg_.Create(Spec("layers.0.attn.gamma_q", {6}, ParamRole::kInputNormScale));
    gout_ = reg_.Create(Spec("layers.0.attn.u_q", {5}, ParamRole::kOutputNormScale));
    gout2_ = reg_.Create(Spec("layers.0.attn.u_k", {3}, ParamRole::kOutputNormScale));
    bias_ = reg_.Create(Spec("layers.0.mlp.bias", {2}, ParamRole::kBias));
    ebias_ = reg_.Create(Spec("layers.0.moe.expert_bias", {4}, ParamRole::kExpertBias));
    emb_ = reg_.Create(Spec("embedding", {7, 3}, ParamRole::kEmbedding));
  }
  ParamRegistry reg_;
  Param *w_, *gin_, *gout_, *gout2_, *bias_, *ebias_, *emb_;
};

TEST_F(ParamGroupsTest, OneGroupPerRoleRuleAndDecay) {
  auto groups = ParamGroups::Create(reg_, config::OptimizerConfig(), ScaleVectorConfig::IWD);
  ASSERT_TRUE(groups.ok()) << groups.status();
  EXPECT_EQ(groups->total_numel(), reg_.total_local_numel());
  std::map<std::string, const ParamGroup*> by_role;
  for (const ParamGroup& g : groups->groups()) by_role[ParamRoleName(g.role)] = &g;
  ASSERT_EQ(by_role.size(), 6u);
  EXPECT_TRUE(by_role["linear"]->decays);
  EXPECT_TRUE(by_role["input_norm_scale"]->decays);
  EXPECT_FALSE(by_role["output_norm_scale"]->decays);
  EXPECT_EQ(by_role["output_norm_scale"]->num_params, 2);
  EXPECT_EQ(by_role["output_norm_scale"]->num_elements, 8);
  EXPECT_FALSE(by_role["bias"]->decays);
  EXPECT_EQ(by_role["expert_bias"]->rule, UpdateRule::kNone);
  EXPECT_EQ(by_role["linear"]->rule, UpdateRule::kAdamW);
  // The two adjacent output γ coalesce into one segment.
  EXPECT_EQ(groups->segments().size(), 6u);
  for (const ParamGroupEntry& e : groups->entries()) {
    EXPECT_EQ(ParamRoleName(groups->group(e.group).role), ParamRoleName(e.param->spec.role));
  }
}

// A ZeRO shard boundary may cut through a scale vector: each element of any
// slice still gets the decay of the parameter that owns it.
TEST_F(ParamGroupsTest, AnySliceGivesEachElementItsOwnersDecay) {
  for (auto policy : {ScaleVectorConfig::IWD, ScaleVectorConfig::NONE_1D, ScaleVectorConfig::ALL,
                      ScaleVectorConfig::OUTPUT_ONLY}) {
    auto groups = ParamGroups::Create(reg_, config::OptimizerConfig(), policy);
    ASSERT_TRUE(groups.ok());
    const int64_t total = groups->total_numel();
    // Expected per element, from the params directly.
    std::vector<double> expected(total);
    for (const auto& p : reg_.params()) {
      const bool trainable = IsTrainable(p->spec.role);
      const bool d = Decays(p->spec.role, static_cast<int>(p->local_shape.size()), policy);
      for (int64_t i = 0; i < p->local_numel(); ++i) {
        expected[p->flat_offset + i] = trainable && d ? 0.1 : 0.0;
      }
    }
    for (int64_t a = 0; a <= total; ++a) {
      for (int64_t b = a; b <= total; ++b) {
        std::vector<double> got(total, -1.0);
        int64_t covered = 0;
        for (const FlatSegment& s : groups->SegmentsIn(a, b)) {
          ASSERT_LE(a, s.begin);
          ASSERT_LT(s.begin, s.end);
          ASSERT_LE(s.end, b);
          for (int64_t i = s.begin; i < s.end; ++i) {
            got[i] = groups->group(s.group).EffectiveWeightDecay(0.1);
          }
          covered += s.end - s.begin;
        }
        ASSERT_EQ(covered, b - a);
        for (int64_t i = a; i < b; ++i) ASSERT_EQ(got[i], expected[i]) << i << " in " << a << "," << b;
      }
    }
  }
  // Concretely: a slice starting inside γ_q (input, decayed under IWD) and
  // ending inside u_q (output, exempt).
  auto groups = ParamGroups::Create(reg_, config::OptimizerConfig(), ScaleVectorConfig::IWD);
  const int64_t a = gin_->flat_offset + 2, b = gout_->flat_offset + 3;
  auto segs = groups->SegmentsIn(a, b);
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].begin, a);
  EXPECT_EQ(segs[0].end, gout_->flat_offset);
  EXPECT_TRUE(groups->group(segs[0].group).decays);
  EXPECT_EQ(segs[1].begin, gout_->flat_offset);
  EXPECT_EQ(segs[1].end, b);
  EXPECT_FALSE(groups->group(segs[1].group).decays);
}

TEST_F(ParamGroupsTest, RoleMultipliersApplyToTheirRole) {
  config::OptimizerConfig opt;
  auto* m = opt.add_role_multipliers();
  m->set_role("input_norm_scale");
  m->set_lr_mult(0.5);
  m->set_wd_mult(2.0);
  auto groups = ParamGroups::Create(reg_, opt, ScaleVectorConfig::IWD);
  ASSERT_TRUE(groups.ok()) << groups.status();
  for (const ParamGroup& g : groups->groups()) {
    const bool in = g.role == ParamRole::kInputNormScale;
    EXPECT_EQ(g.lr_mult, in ? 0.5 : 1.0);
    EXPECT_EQ(g.wd_mult, in ? 2.0 : 1.0);
    if (in) {
      EXPECT_DOUBLE_EQ(g.EffectiveWeightDecay(0.1), 0.2);
    }
  }
}

TEST_F(ParamGroupsTest, BadRoleMultipliersAreErrorsNamingTheRole) {
  auto try_role = [&](const std::string& role, double lr_mult, int copies) {
    config::OptimizerConfig opt;
    for (int i = 0; i < copies; ++i) {
      auto* m = opt.add_role_multipliers();
      m->set_role(role);
      m->set_lr_mult(lr_mult);
    }
    return ParamGroups::Create(reg_, opt, ScaleVectorConfig::IWD).status();
  };
  Status s = try_role("input_norm_gamma", 1.0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("'input_norm_gamma'"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("input_norm_scale"));
  EXPECT_FALSE(try_role("expert_bias", 1.0, 1).ok());
  EXPECT_THAT(std::string(try_role("router", 1.0, 2).message()), ::testing::HasSubstr("twice"));
  EXPECT_THAT(std::string(try_role("router", -1.0, 1).message()), ::testing::HasSubstr(">= 0"));
}

TEST(ParamGroupsMuonTest, MuonTakesOnly2DHiddenMatrices) {
  ParamRegistry reg;
  reg.Create(Spec("w", {4, 6}, ParamRole::kLinear));
  reg.Create(Spec("e", {4, 6}, ParamRole::kExpertLinear));
  reg.Create(Spec("stack", {2, 4, 6}, ParamRole::kExpertLinear));
  reg.Create(Spec("router", {4, 6}, ParamRole::kRouter));
  reg.Create(Spec("emb", {4, 6}, ParamRole::kEmbedding));
  reg.Create(Spec("head", {4, 6}, ParamRole::kLmHead));
  reg.Create(Spec("g", {6}, ParamRole::kInputNormScale));
  config::OptimizerConfig opt;
  opt.set_type(config::OptimizerConfig::MUON);
  auto groups = ParamGroups::Create(reg, opt, ScaleVectorConfig::IWD);
  ASSERT_TRUE(groups.ok());
  std::map<std::string, UpdateRule> rule;
  for (const ParamGroupEntry& e : groups->entries()) {
    rule[e.param->spec.name] = groups->group(e.group).rule;
  }
  EXPECT_EQ(rule["w"], UpdateRule::kMuon);
  EXPECT_EQ(rule["e"], UpdateRule::kMuon);
  EXPECT_EQ(rule["stack"], UpdateRule::kAdamW);
  EXPECT_EQ(rule["router"], UpdateRule::kAdamW);
  EXPECT_EQ(rule["emb"], UpdateRule::kAdamW);
  EXPECT_EQ(rule["head"], UpdateRule::kAdamW);
  EXPECT_EQ(rule["g"], UpdateRule::kAdamW);
}

TEST_F(ParamGroupsTest, DescribeGroupsListsEveryGroup) {
  auto groups = ParamGroups::Create(reg_, config::OptimizerConfig(), ScaleVectorConfig::IWD);
  const std::string table = groups->DescribeGroups();
  EXPECT_THAT(table, ::testing::HasSubstr("output_norm_scale"));
  EXPECT_THAT(table, ::testing::HasSubstr("expert_bias"));
  EXPECT_THAT(table, ::testing::HasSubstr("decay"));
  // Header plus one line per group.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'),
            static_cast<long>(groups->groups().size() + 1));
}

}  // namespace
}  // namespace scalemoe
