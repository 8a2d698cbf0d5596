// The sweep spec (launch/sweep_spec.h) and its expansion into points
// (launch/sweep_points.h): parse and validation errors name the field and
// the fix; points, their names and order; the hold-fixed arithmetic; the
// token budget; the example specs in configs/sweeps/.
#include "launch/sweep_spec.h"

#include <filesystem>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/sweep_points.h"

namespace scalemoe {
namespace {

using ::testing::HasSubstr;

config::SweepSpec Spec(const std::string& text) {
  StatusOr<config::SweepSpec> spec = ParseSweepSpecText(text, "spec");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return spec.ok() ? *spec : config::SweepSpec();
}

std::string Problems(const std::string& text) {
  const Status s = ValidateSweepSpec(Spec(text));
  EXPECT_FALSE(s.ok()) << text;
  return std::string(s.message());
}

// tiny_cpu (8 experts, top-2, expert ffn 128) as the base, plus `rest`.
std::string TinySpec(const std::string& rest) {
  return "base_config: \"configs/tiny_cpu.textproto\"\n" + rest;
}

std::vector<SweepPoint> Expand(const std::string& text) {
  const config::SweepSpec spec = Spec(text);
  EXPECT_TRUE(ValidateSweepSpec(spec).ok()) << ValidateSweepSpec(spec);
  StatusOr<std::vector<SweepPoint>> points = ExpandSweep(spec);
  EXPECT_TRUE(points.ok()) << points.status();
  return points.ok() ? *points : std::vector<SweepPoint>{};
}

std::string ExpandError(const std::string& text) {
  const config::SweepSpec spec = Spec(text);
  EXPECT_TRUE(ValidateSweepSpec(spec).ok()) << ValidateSweepSpec(spec);
  StatusOr<std::vector<SweepPoint>> points = ExpandSweep(spec);
  EXPECT_FALSE(points.ok()) << text;
  return points.ok() ? "" : std::string(points.status().message());
}

TEST(SweepSpecTest, ParseErrorsNameTheLine) {
  StatusOr<config::SweepSpec> spec =
      ParseSweepSpecText("base_config: \"x\"\naxes { feild: \"moe.top_k\" }\n", "my.textproto");
  ASSERT_FALSE(spec.ok());
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("my.textproto:2:"));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("feild"));
}

TEST(SweepSpecTest, LoadNamesTheSpecAfterItsFile) {
  StatusOr<config::SweepSpec> spec = LoadSweepSpec("configs/sweeps/experts_tiny.textproto");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->name(), "experts_tiny");
  StatusOr<config::SweepSpec> missing = LoadSweepSpec("configs/sweeps/no_such.textproto");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no_such.textproto"));
}

TEST(SweepSpecTest, MissingBaseAndAxesAreNamed) {
  const std::string p = Problems("");
  EXPECT_THAT(p, HasSubstr("base_config: required"));
  EXPECT_THAT(p, HasSubstr("axes: none"));
}

TEST(SweepSpecTest, AxisProblemsNameTheAxisAndTheFix) {
  const std::string p = Problems(TinySpec(R"(
    axes { field: "moe.num_expert" values: ["1"] }
    axes { field: "moe.top_k" }
    axes { bundles { name: "a b" set: "moe.top_k=two" } }
    axes { field: "granularity" values: ["0"] }
    axes { field: "optimizer.lr" values: ["1e-3"] bundles { name: "x" } }
    axes { field: "train.seed" values: ["1", "1"] }
  )"));
  EXPECT_THAT(p, HasSubstr("axes[0].values[0] (field moe.num_expert)"));
  EXPECT_THAT(p, HasSubstr("valid fields of moe: num_experts"));
  EXPECT_THAT(p, HasSubstr("axes[1].values: empty"));
  EXPECT_THAT(p, HasSubstr("axes[2].name: a bundle axis needs a name"));
  EXPECT_THAT(p, HasSubstr("axes[2].bundles[0].name 'a b'"));
  EXPECT_THAT(p, HasSubstr("axes[2].bundles[0].set[0]: --set moe.top_k=two: bad value"));
  EXPECT_THAT(p, HasSubstr("axes[3].values[0] '0': granularity"));
  EXPECT_THAT(p, HasSubstr("axes[4]: give either field with values"));
  EXPECT_THAT(p, HasSubstr("axes[5].values[1]: two values have the label '1'"));
}

TEST(SweepSpecTest, ZipAndNameProblems) {
  const std::string p = Problems(TinySpec(R"(
    axes { field: "moe.num_experts" values: ["4", "8"] }
    axes { field: "granularity" values: ["1", "2", "4"] zip_with: "num_experts" }
    axes { field: "moe.top_k" values: ["1"] zip_with: "nothing" }
    axes { field: "train.seed" name: "num_experts" values: ["1"] }
    axes { field: "moe.num_experts" name: "again" values: ["16"] }
  )"));
  EXPECT_THAT(p, HasSubstr("axes[1].zip_with 'num_experts': the axes have 3 and 2 values"));
  EXPECT_THAT(p, HasSubstr("axes[2].zip_with 'nothing': name another axis"));
  EXPECT_THAT(p, HasSubstr("axes[3]: the name 'num_experts' is also axes[0]'s"));
  EXPECT_THAT(p, HasSubstr("axes[4].field moe.num_experts: axes[0] varies it too"));
}

TEST(SweepSpecTest, ZipCyclesAndRuleConflictsAreRefused) {
  const std::string p = Problems(TinySpec(R"(
    axes { field: "moe.num_experts" values: ["4"] zip_with: "top_k" }
    axes { field: "moe.top_k" values: ["1"] zip_with: "num_experts" }
    axes { field: "moe.expert_ffn_hidden_size" values: ["64"] }
    axes { field: "train.train_steps" values: ["10"] }
    hold_fixed: SAME_ACTIVE
    tokens_per_point: 4096
    launcher { ranks: 0 }
    peak_tflops_per_rank: -1
  )"));
  EXPECT_THAT(p, HasSubstr("cycle"));
  EXPECT_THAT(p, HasSubstr("axes[2].field: hold_fixed SAME_ACTIVE derives "
                           "moe.expert_ffn_hidden_size"));
  EXPECT_THAT(p, HasSubstr("axes[3].field: tokens_per_point derives train.train_steps"));
  EXPECT_THAT(p, HasSubstr("launcher.ranks=0"));
  EXPECT_THAT(p, HasSubstr("peak_tflops_per_rank=-1"));
}

TEST(SweepPointsTest, CrossesAxesInOrderWithDeterministicNames) {
  const std::vector<SweepPoint> points = Expand(TinySpec(R"(
    axes { field: "optimizer.lr" values: ["1e-3", "3e-3"] }
    axes { name: "strategy" bundles { name: "baseline" set: "scale_vectors.mode=SHARED" }
                            bundles { name: "hg" set: "scale_vectors.mode=PER_BRANCH" } }
    axes { field: "train.seed" values: ["1", "2"] name: "seed" }
  )"));
  ASSERT_EQ(points.size(), 8u);
  // The first axis varies slowest.
  EXPECT_EQ(points[0].name, "lr-1e-3_strategy-baseline_seed-1");
  EXPECT_EQ(points[1].name, "lr-1e-3_strategy-baseline_seed-2");
  EXPECT_EQ(points[2].name, "lr-1e-3_strategy-hg_seed-1");
  EXPECT_EQ(points[7].name, "lr-3e-3_strategy-hg_seed-2");
  EXPECT_EQ(points[7].config.optimizer().lr(), 3e-3);
  EXPECT_EQ(points[7].config.scale_vectors().mode(), config::ScaleVectorConfig::PER_BRANCH);
  EXPECT_EQ(points[7].config.train().seed(), 2u);
  EXPECT_EQ(points[0].config.scale_vectors().mode(), config::ScaleVectorConfig::SHARED);
  EXPECT_EQ(points[7].values[1], std::make_pair(std::string("strategy"), std::string("hg")));
  // The train command's overrides rebuild the config (NONE derives nothing).
  EXPECT_TRUE(points[7].derived.empty());
  EXPECT_THAT(
      points[7].overrides,
      ::testing::ElementsAre("optimizer.lr=3e-3", "scale_vectors.mode=PER_BRANCH", "train.seed=2"));
}

TEST(SweepPointsTest, ZippedAxesMoveTogether) {
  const std::vector<SweepPoint> points = Expand(TinySpec(R"(
    axes { field: "moe.num_experts" name: "experts" values: ["8", "16", "32"] }
    axes { field: "granularity" values: ["1", "2", "4"] zip_with: "experts" }
    axes { field: "train.seed" values: ["1", "2"] }
    hold_fixed: SAME_ACTIVE
  )"));
  ASSERT_EQ(points.size(), 6u);
  EXPECT_EQ(points[0].name, "experts-8_granularity-1_seed-1");
  EXPECT_EQ(points[3].name, "experts-16_granularity-2_seed-2");
  EXPECT_EQ(points[5].name, "experts-32_granularity-4_seed-2");
  // tiny_cpu: top-2 of experts of 128; g-fold finer, 2g of them active.
  EXPECT_EQ(points[5].config.moe().top_k(), 8);
  EXPECT_EQ(points[5].config.moe().expert_ffn_hidden_size(), 32);
  EXPECT_THAT(points[5].derived,
              ::testing::ElementsAre("moe.top_k=8", "moe.expert_ffn_hidden_size=32"));
}

TEST(SweepPointsTest, SameActiveKeepsTopKTimesExpertWidth) {
  const std::vector<SweepPoint> points = Expand(TinySpec(R"(
    axes { field: "moe.num_experts" values: ["4", "8", "16"] }
    axes { field: "moe.top_k" values: ["1", "2", "4"] }
    hold_fixed: SAME_ACTIVE
  )"));
  ASSERT_EQ(points.size(), 9u);
  for (const SweepPoint& p : points) {
    SCOPED_TRACE(p.name);
    // top_k set by its axis stays; the width follows: 2 x 128 per token.
    EXPECT_EQ(p.config.moe().top_k() * p.config.moe().expert_ffn_hidden_size(), 2 * 128);
  }
}

TEST(SweepPointsTest, HoldFixedArithmetic) {
  config::MoEConfig base;
  base.set_num_experts(8);
  base.set_top_k(2);
  base.set_expert_ffn_hidden_size(128);
  using S = config::SweepSpec;
  auto sizes = [&](S::HoldFixed rule, int64_t experts, int64_t g, int64_t top_k) {
    StatusOr<ExpertSizes> s = HoldFixedSizes(rule, base, experts, g, top_k);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::make_pair(s->top_k, s->expert_ffn_hidden_size)
                  : std::make_pair(int64_t{-1}, int64_t{-1});
  };
  using P = std::pair<int64_t, int64_t>;
  // SAME_ACTIVE: one expert takes the whole active width; finer experts.
  EXPECT_EQ(sizes(S::SAME_ACTIVE, 1, 1, 0), P(1, 256));
  EXPECT_EQ(sizes(S::SAME_ACTIVE, 64, 1, 0), P(2, 128));
  EXPECT_EQ(sizes(S::SAME_ACTIVE, 64, 8, 0), P(16, 16));
  EXPECT_EQ(sizes(S::SAME_ACTIVE, 4, 4, 0), P(4, 64));   // top_k capped at the experts
  EXPECT_EQ(sizes(S::SAME_ACTIVE, 16, 1, 4), P(4, 64));  // the point's own top_k
  // SAME_TOTAL: experts x width stays 8 x 128.
  EXPECT_EQ(sizes(S::SAME_TOTAL, 32, 1, 0), P(2, 32));
  EXPECT_EQ(sizes(S::SAME_TOTAL, 2, 2, 0), P(2, 512));
  // NONE: granularity alone splits the experts.
  EXPECT_EQ(sizes(S::NONE, 8, 4, 0), P(8, 32));
  // A width that is not whole names the sizes.
  StatusOr<ExpertSizes> bad = HoldFixedSizes(S::SAME_ACTIVE, base, 8, 1, 3);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("2 x 128 / 3"));
  StatusOr<ExpertSizes> dense = HoldFixedSizes(S::SAME_TOTAL, base, 0, 1, 0);
  ASSERT_FALSE(dense.ok());
  EXPECT_THAT(std::string(dense.status().message()), HasSubstr("moe.num_experts=0"));
}

TEST(SweepPointsTest, SharedExpertsKeepTheirWidth) {
  const std::vector<SweepPoint> points = Expand(TinySpec(R"(
    set: "moe.num_shared_experts=1"
    axes { field: "moe.num_experts" values: ["1", "8"] }
    hold_fixed: SAME_ACTIVE
  )"));
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[0].config.moe().expert_ffn_hidden_size(), 256);
  EXPECT_EQ(points[0].config.moe().shared_expert_ffn_hidden_size(), 128);
  EXPECT_EQ(points[1].config.moe().shared_expert_ffn_hidden_size(), 0);  // untouched
}

TEST(SweepPointsTest, PointErrorsNameThePoint) {
  EXPECT_THAT(ExpandError(TinySpec(R"(
    axes { field: "moe.top_k" values: ["2", "3"] }
    hold_fixed: SAME_ACTIVE
  )")),
              HasSubstr("point top_k-3: hold_fixed SAME_ACTIVE needs "
                        "moe.expert_ffn_hidden_size"));
  // Each point's config goes through the one validator.
  EXPECT_THAT(ExpandError(TinySpec(R"(axes { field: "moe.top_k" values: ["9"] })")),
              HasSubstr("point top_k-9: "));
  EXPECT_THAT(
      ExpandError(TinySpec(R"(
    axes { name: "s" bundles { name: "x" set: "moe.expert_ffn_hidden_size=64" } }
    hold_fixed: SAME_TOTAL
  )")),
      HasSubstr("point s-x: the point sets moe.expert_ffn_hidden_size (an axis or bundle)"));
  EXPECT_THAT(ExpandError("base_config: \"configs/no_such.textproto\"\n"
                          "axes { field: \"train.seed\" values: [\"1\"] }"),
              HasSubstr("sweep base (base_config and set)"));
}

TEST(SweepPointsTest, TokensAreHeldFixed) {
  // tiny_cpu: 16 sequences x 128 tokens = 2048 tokens a step.
  const std::vector<SweepPoint> points = Expand(TinySpec(R"(
    set: "schedule.warmup_steps=2"
    axes { field: "model.seq_length" values: ["64", "128"] }
    tokens_per_point: 20480
  )"));
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[0].config.train().train_steps(), 20);
  EXPECT_EQ(points[1].config.train().train_steps(), 10);
  EXPECT_EQ(points[1].tokens_per_step, 2048);
  EXPECT_THAT(ExpandError(TinySpec(R"(
    axes { field: "model.seq_length" values: ["64", "128"] }
  )")),
              HasSubstr("point seq_length-128 trains on 614400 tokens but point seq_length-64 "
                        "on 307200"));
  EXPECT_THAT(ExpandError(TinySpec(R"(
    axes { field: "train.seed" values: ["1"] }
    tokens_per_point: 3000
  )")),
              HasSubstr("tokens_per_point=3000 is not a multiple of the 2048 tokens"));
}

TEST(SweepPointsTest, EveryExampleSpecExpandsAndValidates) {
  int specs = 0;
  for (const auto& entry : std::filesystem::directory_iterator("configs/sweeps")) {
    if (entry.path().extension() != ".textproto") continue;
    ++specs;
    SCOPED_TRACE(entry.path().string());
    StatusOr<config::SweepSpec> spec = LoadSweepSpec(entry.path().string());
    ASSERT_TRUE(spec.ok()) << spec.status();
    ASSERT_TRUE(ValidateSweepSpec(*spec).ok()) << ValidateSweepSpec(*spec);
    StatusOr<std::vector<SweepPoint>> points = ExpandSweep(*spec);
    ASSERT_TRUE(points.ok()) << points.status();
    EXPECT_GE(points->size(), 6u);
    EXPECT_EQ(spec->name(), entry.path().stem().string()) << "name should match the file";
  }
  EXPECT_GE(specs, 2);
}

TEST(SweepPointsTest, GpuExampleHoldsActiveExpertWidthFrom1To64Experts) {
  StatusOr<config::SweepSpec> spec = LoadSweepSpec("configs/sweeps/experts_gpu.textproto");
  ASSERT_TRUE(spec.ok()) << spec.status();
  StatusOr<std::vector<SweepPoint>> points = ExpandSweep(*spec);
  ASSERT_TRUE(points.ok()) << points.status();
  std::map<int, int> width_by_experts;
  for (const SweepPoint& p : *points) {
    const auto& moe = p.config.moe();
    width_by_experts[moe.num_experts()] = moe.top_k() * moe.expert_ffn_hidden_size();
  }
  ASSERT_EQ(width_by_experts.size(), 6u);
  EXPECT_EQ(width_by_experts.begin()->first, 1);
  EXPECT_EQ(width_by_experts.rbegin()->first, 64);
  for (const auto& [experts, width] : width_by_experts) {
    EXPECT_EQ(width, width_by_experts.begin()->second) << experts << " experts";
  }
}

}  // namespace
}  // namespace scalemoe
