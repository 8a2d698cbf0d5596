// `scalemoe sweep` with launcher.ranks = 2: every point runs under mpirun
// (data parallel over the 2 ranks) to its end, and results.csv has it.
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/sweep_runner.h"
#include "tests/launch/sweep_test_util.h"
#include "tests/launch/tiny_training.h"
#include "tests/testing/status_util.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(SweepMpiTest, PointsRunUnderMpirunWithTheGivenRanks) {
  const fs::path root =
      fs::temp_directory_path() / ("scalemoe_sweep_mpi_test_" + std::to_string(getpid()));
  fs::remove_all(root);
  testing::Must(testing::MakeTinyDataset(root));
  const fs::path spec = root / "ranks.textproto";
  testing::WriteText(spec, testing::TinySweepSpec((root / "dataset").string(), R"(
    axes { field: "train.seed" values: ["7"] }
    launcher { ranks: 2 mpirun_args: "--oversubscribe" }
  )"));
  const fs::path dir = root / "out";
  testing::CommandResult run = testing::RunCommand(testing::Scalemoe() + " sweep --spec " +
                                                   spec.string() + " --sweep-dir " + dir.string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const fs::path point = dir / "seed-7";
  EXPECT_TRUE(fs::exists(point / kPointDoneFile));
  const std::string log = testing::ReadText(point / kPointLogFile);
  EXPECT_THAT(log, HasSubstr("$ mpirun -np 2 --oversubscribe "));
  EXPECT_THAT(log, HasSubstr("(2 ranks: tp=1 pp=1 dp=2"));
  const auto rows = testing::ReadCsv(dir / "results.csv");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].at("status"), "done");
  EXPECT_EQ(rows[0].at("steps"), "8");
  EXPECT_FALSE(rows[0].at("val_loss").empty());
  fs::remove_all(root);
}

}  // namespace
}  // namespace scalemoe
