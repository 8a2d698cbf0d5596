// A one-rank CUDA training run with parallel.communicator=NCCL (label gpu:
// skipped without a device, a failure under SCALEMOE_REQUIRE_GPU=1): every
// collective of the step (loss and statistic reductions, gradient sync,
// ZeRO-1's reduce-scatter and all-gather) goes through NCCL communicators of
// one rank, and the losses equal the run with the default communicator
// (a world of one: nothing sent) within 1e-6 relative at every step.
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/trainer.h"
#include "parallel/local_communicator.h"
#include "parallel/nccl_communicator.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

TEST(NcclTrainerTest, OneRankOnNcclEqualsTheLocalRun) {
  if (ExecContext::CudaDeviceCount() == 0) {
    const char* require = std::getenv("SCALEMOE_REQUIRE_GPU");
    if (require != nullptr && std::strcmp(require, "1") == 0) {
      FAIL() << "SCALEMOE_REQUIRE_GPU=1 but no CUDA device";
    }
    GTEST_SKIP() << "no CUDA device on this machine: gpu test skipped";
  }
  const fs::path root =
      fs::temp_directory_path() / ("scalemoe_nccl_trainer_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  ASSERT_TRUE(testing::MakeTinyDataset(root).ok());
  auto options = [&](const std::string& name, std::vector<std::string> extra) {
    extra.insert(extra.begin(),
                 {"train.device=CUDA", "train.train_steps=12", "train.eval_interval=6",
                  "checkpoint.interval=0", "parallel.zero_stage=1"});
    TrainOptions o;
    o.config = testing::TinyTrainingConfig(root, extra);
    o.run_dir = (root / name).string();
    o.quiet = true;
    return o;
  };
  const TrainOptions local = options("local", {});
  StatusOr<TrainResult> ref = Train(local);
  ASSERT_TRUE(ref.ok()) << ref.status();

  // The run's groups are ours, so we see what the trainer made of them.
  ProcessGroups groups = LocalProcessGroups();
  TrainOptions nccl = options("nccl", {"parallel.communicator=NCCL"});
  nccl.groups = &groups;
  StatusOr<TrainResult> got = Train(nccl);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_NE(dynamic_cast<NcclCommunicator*>(groups.dp.get()), nullptr)
      << "parallel.communicator=NCCL left " << groups.dp->name() << " on the host backend";

  const std::vector<double> want = testing::ReadLosses(local.run_dir);
  const std::vector<double> have = testing::ReadLosses(nccl.run_dir);
  ASSERT_EQ(want.size(), 12u);
  ASSERT_EQ(have.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(have[i], want[i], 1e-6 * std::abs(want[i])) << "step " << i + 1;
  }
  EXPECT_NEAR(got->last_val_loss, ref->last_val_loss, 1e-6 * std::abs(ref->last_val_loss));
  fs::remove_all(root);
}

}  // namespace
}  // namespace scalemoe
