#include "moe/moe_config.h"

#include "gtest/gtest.h"
#include "tests/moe/moe_test_util.h"

namespace scalemoe {
namespace {

std::string Problems(const config::RunConfig& cfg) {
  ConfigProblems p;
  ValidateMoeConfig(cfg, p);
  return std::string(p.ToStatus("moe").message());
}

TEST(MoeConfigTest, TinyConfigIsValid) { EXPECT_EQ(Problems(testing::TinyConfig()), ""); }

TEST(MoeConfigTest, TopKLargerThanExpertsNamesTheField) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_top_k(5);
  const std::string s = Problems(cfg);
  EXPECT_NE(s.find("moe.top_k=5"), std::string::npos) << s;
  EXPECT_NE(s.find("[1, moe.num_experts=4]"), std::string::npos) << s;
}

TEST(MoeConfigTest, NegativeCapacityFactorIsRejected) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_capacity_factor(-1);
  EXPECT_NE(Problems(cfg).find("moe.capacity_factor"), std::string::npos);
}

TEST(MoeConfigTest, ReportsEveryProblemAtOnce) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_top_k(0);
  cfg.mutable_moe()->set_aux_loss_coeff(-1);
  const std::string s = Problems(cfg);
  EXPECT_NE(s.find("moe.top_k=0"), std::string::npos) << s;
  EXPECT_NE(s.find("moe.aux_loss_coeff=-1"), std::string::npos) << s;
}

}  // namespace
}  // namespace scalemoe
