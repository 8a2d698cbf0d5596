#include "optim/schedule.h"

#include <cmath>
#include <numbers>

#include "gtest/gtest.h"
#include "optim/optimizer_config.h"

namespace scalemoe {
namespace {

config::ScheduleConfig Schedule(config::ScheduleConfig::Kind kind, int warmup,
                                double decay_fraction = 0.2) {
  config::ScheduleConfig s;
  s.set_kind(kind);
  s.set_warmup_steps(warmup);
  s.set_wsd_decay_fraction(decay_fraction);
  return s;
}

constexpr double kPeak = 1.0, kMin = 0.1;

TEST(ScheduleTest, WarmupIsLinearFromPeakOverWarmupToPeak) {
  for (auto kind : {config::ScheduleConfig::COSINE, config::ScheduleConfig::WSD,
                    config::ScheduleConfig::CONSTANT}) {
    const auto s = Schedule(kind, 10);
    EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 0, 100), 0.1);  // step 0: 1/warmup
    EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 4, 100), 0.5);
    EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 9, 100), kPeak);  // last warm-up step
  }
}

TEST(ScheduleTest, CosineDecaysToMinAtTheLastStep) {
  const auto s = Schedule(config::ScheduleConfig::COSINE, 10);
  // t = step + 1; progress = (t - 10) / 90.
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 54, 100), kMin + (kPeak - kMin) * 0.5);  // mid
  const double p = (31.0 - 10.0) / 90.0;
  EXPECT_NEAR(LearningRate(s, kPeak, kMin, 30, 100),
              kMin + (kPeak - kMin) * 0.5 * (1 + std::cos(std::numbers::pi * p)), 1e-15);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 99, 100), kMin);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 500, 100), kMin);  // past the end
  // Monotone after warm-up.
  for (int step = 10; step < 99; ++step) {
    EXPECT_GT(LearningRate(s, kPeak, kMin, step, 100), LearningRate(s, kPeak, kMin, step + 1, 100));
  }
}

TEST(ScheduleTest, WsdHoldsPeakThenDecaysLinearlyOverTheLastFraction) {
  const auto s = Schedule(config::ScheduleConfig::WSD, 10, 0.2);  // decay over t in (80, 100]
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 10, 100), kPeak);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 79, 100), kPeak);  // t = 80: last stable
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 80, 100), kPeak + (kMin - kPeak) / 20);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 89, 100), kPeak + (kMin - kPeak) * 0.5);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 99, 100), kMin);
  // No decay window: stays at peak.
  EXPECT_DOUBLE_EQ(LearningRate(Schedule(config::ScheduleConfig::WSD, 10, 0.0), kPeak, kMin, 99, 100),
                   kPeak);
}

TEST(ScheduleTest, ConstantStaysAtPeakAndZeroWarmupStartsAtPeak) {
  const auto s = Schedule(config::ScheduleConfig::CONSTANT, 0);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 0, 100), kPeak);
  EXPECT_DOUBLE_EQ(LearningRate(s, kPeak, kMin, 99, 100), kPeak);
  EXPECT_DOUBLE_EQ(LearningRate(Schedule(config::ScheduleConfig::COSINE, 0), kPeak, kMin, 0, 2),
                   kMin + (kPeak - kMin) * 0.5);
}

// The schedule's rules live in the optimizer's validator.
TEST(ScheduleTest, ValidationNamesTheField) {
  auto problems = [](const config::ScheduleConfig& schedule, int steps) {
    config::RunConfig cfg;
    *cfg.mutable_schedule() = schedule;
    cfg.mutable_train()->set_train_steps(steps);
    ConfigProblems p;
    ValidateOptimizerConfig(cfg, p);
    return std::string(p.ToStatus("schedule").message());
  };
  EXPECT_EQ(problems(Schedule(config::ScheduleConfig::COSINE, 10), 100), "");
  EXPECT_NE(problems(Schedule(config::ScheduleConfig::COSINE, -1), 100).find(
                "schedule.warmup_steps=-1"),
            std::string::npos);
  EXPECT_NE(problems(Schedule(config::ScheduleConfig::WSD, 1, 1.5), 100).find(
                "schedule.wsd_decay_fraction=1.5"),
            std::string::npos);
  EXPECT_NE(problems(Schedule(config::ScheduleConfig::WSD, 10), 5).find("train.train_steps=5"),
            std::string::npos);
}

}  // namespace
}  // namespace scalemoe
