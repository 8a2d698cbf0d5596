#include "moe/moe_config.h"

#include "gtest/gtest.h"
#include "tests/moe/moe_test_util.h"

namespace scalemoe {
namespace {

TEST(MoeConfigTest, TinyConfigIsValid) {
  EXPECT_TRUE(ValidateMoeConfig(testing::TinyConfig()).ok());
}

TEST(MoeConfigTest, TopKLargerThanExpertsNamesTheField) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_top_k(5);
  const Status s = ValidateMoeConfig(cfg);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("moe.top_k = 5"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("[1, moe.num_experts = 4]"), std::string::npos) << s;
}

TEST(MoeConfigTest, NegativeCapacityFactorIsRejected) {
  config::RunConfig cfg = testing::TinyConfig();
  cfg.mutable_moe()->set_capacity_factor(-1);
  EXPECT_NE(std::string(ValidateMoeConfig(cfg).message()).find("moe.capacity_factor"),
            std::string::npos);
}

}  // namespace
}  // namespace scalemoe
