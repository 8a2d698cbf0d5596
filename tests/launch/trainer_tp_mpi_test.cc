// Tensor-parallel training runs under mpirun: TP2, TP2 with sequence
// parallelism, ETP2 x EP2, TP2 x PP2 and TP2 x EP2 x PP2 (8 ranks) each train
// the tiny MoE preset for 20 steps to the losses and final parameters of a
// single-rank run on the same global batch (and its validation loss), within
// 1e-5 relative (fp32); a TP checkpoint resumes on another layout.
// Registered for 2, 4 and 8 ranks; each world size runs the layouts that fit.
// With SCALEMOE_TEST_DEVICE=CUDA (CTest's launch_trainer_tp_mpi*_cuda_test,
// label gpu) every run trains on the GPU, the ranks sharing it through
// host-staged collectives, at the same tolerance.
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "launch/config.h"
#include "launch/trainer.h"
#include "tests/launch/mpi_training.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

constexpr int kSteps = 20;
constexpr double kTolerance = 1e-5;

using testing::WorldRank;
using testing::WorldSize;

fs::path JobRoot() { return testing::MpiJobRoot("scalemoe_trainer_tp"); }

// The tiny preset's strategy (HG + DUAL + OR + IWD) with 2 KV heads (so
// that heads split over TP2), a shared expert and the z-loss on, so every
// kind of parameter is in play; `extra` last.
config::RunConfig Config(const std::vector<std::string>& extra) {
  std::vector<std::string> all = {
      "train.train_steps=" + std::to_string(kSteps), "checkpoint.interval=10",
      "train.eval_interval=10", "scale_vectors.placement=DUAL",
      "scale_vectors.dual_projections=[Q, O, GATE, DOWN]",
      "model.num_kv_heads=2", "moe.num_shared_experts=1", "moe.z_loss_coeff=0.001"};
  for (const std::string& d : testing::TestDeviceOverrides()) all.push_back(d);
  all.insert(all.end(), extra.begin(), extra.end());
  return testing::TinyTrainingConfig(JobRoot(), all);
}

StatusOr<TrainResult> TrainOn(const config::RunConfig& cfg, const std::string& name,
                              ProcessGroups* groups, int64_t exit_after = 0,
                              bool resume = false) {
  return testing::TrainRun(cfg, JobRoot() / name, groups, exit_after, resume);
}

StatusOr<ProcessGroups> Groups(const config::RunConfig& cfg) { return testing::MpiGroups(cfg); }

class TrainerTpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (testing::MissingTestGpu()) return;
    if (WorldRank() == 0) {
      fs::remove_all(JobRoot());
      Status made = testing::MakeTinyDataset(JobRoot());
      ASSERT_TRUE(made.ok()) << made;
    }
    testing::WorldBarrier();
  }
  static void TearDownTestSuite() {
    testing::WorldBarrier();
    if (WorldRank() == 0) fs::remove_all(JobRoot());
  }

  void SetUp() override { SM_SKIP_WITHOUT_TEST_GPU(); }

  static void ExpectMatches(const config::RunConfig& cfg, const std::string& name,
                            const std::string& reference) {
    testing::ExpectSameTraining(cfg, JobRoot() / name, JobRoot() / reference, kSteps,
                                kTolerance);
  }

  // `layout` on this world against one rank with the same global batch
  // (micro-batch 2 per data-parallel replica, `micro_batches` of them).
  static void RunLayout(const std::string& name, const std::vector<std::string>& model,
                        const std::vector<std::string>& layout, int dp, int micro_batches) {
    std::vector<std::string> common = model;
    common.push_back("train.global_batch_size=" + std::to_string(2 * dp * micro_batches));
    const std::string reference = name + "_reference";
    double want_val = 0;
    if (WorldRank() == 0) {
      StatusOr<TrainResult> r = TrainOn(Config(common), reference, nullptr);
      ASSERT_TRUE(r.ok()) << r.status();
      want_val = r->last_val_loss;
    }
    testing::WorldBarrier();
    std::vector<std::string> all = common;
    all.insert(all.end(), layout.begin(), layout.end());
    const config::RunConfig cfg = Config(all);
    StatusOr<ProcessGroups> groups = Groups(cfg);
    ASSERT_TRUE(groups.ok()) << groups.status();
    StatusOr<TrainResult> r = TrainOn(cfg, name, &*groups);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->steps_done, kSteps);
    if (WorldRank() == 0) {
      EXPECT_NEAR(r->last_val_loss, want_val, kTolerance * want_val) << name << " val loss";
    }
    ExpectMatches(cfg, name, reference);
  }
};

// World 2.
TEST_F(TrainerTpTest, Tp2) {
  if (WorldSize() != 2) GTEST_SKIP() << "needs 2 ranks";
  RunLayout("tp2", {}, {"parallel.tp=2"}, 1, 2);
}
TEST_F(TrainerTpTest, Tp2SequenceParallelSandwichNorms) {
  if (WorldSize() != 2) GTEST_SKIP() << "needs 2 ranks";
  RunLayout("tp2_sp", {"model.sandwich_norm=true"},
            {"parallel.tp=2", "parallel.sequence_parallel=true"}, 1, 2);
}
TEST_F(TrainerTpTest, Etp2OverDataParallelZero1) {
  if (WorldSize() != 2) GTEST_SKIP() << "needs 2 ranks";
  RunLayout("etp2_dp2", {}, {"parallel.etp=2", "parallel.zero_stage=1"}, 2, 1);
}

// World 4.
TEST_F(TrainerTpTest, Etp2Ep2) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  RunLayout("etp2_ep2", {}, {"parallel.tp=2", "parallel.etp=2", "parallel.ep=2"}, 2, 1);
}
TEST_F(TrainerTpTest, Tp2Pp2) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  RunLayout("tp2_pp2", {}, {"parallel.tp=2", "parallel.pp=2"}, 1, 4);
}
TEST_F(TrainerTpTest, Tp2SequenceParallelPp2Tied) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  RunLayout("tp2_sp_pp2_tied", {"model.tied_embeddings=true"},
            {"parallel.tp=2", "parallel.sequence_parallel=true", "parallel.pp=2"}, 1, 2);
}

// The experts' F split over the two data-parallel ranks of each stage: the
// ETP exchange's plan is part of what a stage keeps per in-flight micro-batch.
TEST_F(TrainerTpTest, Etp2Pp2) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  RunLayout("etp2_pp2", {}, {"parallel.etp=2", "parallel.pp=2"}, 2, 2);
}

TEST_F(TrainerTpTest, Tp2SequenceParallelInterleavedPp2) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  RunLayout("tp2_sp_pp2_v2", {"model.num_layers=4"},
            {"parallel.tp=2", "parallel.sequence_parallel=true", "parallel.pp=2",
             "parallel.virtual_stages=2"},
            1, 2);
}

// World 8: TP2 x EP2 x PP2 (dense view tp2 dp2 pp2; experts ep2 edp2).
TEST_F(TrainerTpTest, Tp2Ep2Pp2) {
  if (WorldSize() != 8) GTEST_SKIP() << "needs 8 ranks";
  RunLayout("tp2_ep2_pp2", {}, {"parallel.tp=2", "parallel.ep=2", "parallel.pp=2",
                                "parallel.zero_stage=1"}, 2, 2);
}

// A checkpoint saved under TP2 x DP2 (ZeRO-1) resumes on TP1 x DP4 with the
// experts split ETP2 x EP2, and continues the uninterrupted single-rank run.
TEST_F(TrainerTpTest, ResumeAcrossTensorParallelSizes) {
  if (WorldSize() != 4) GTEST_SKIP() << "needs 4 ranks";
  const std::vector<std::string> common = {"train.global_batch_size=8"};
  if (WorldRank() == 0) {
    ASSERT_TRUE(TrainOn(Config(common), "reshard_reference", nullptr).ok());
  }
  testing::WorldBarrier();
  std::vector<std::string> from = common, to = common;
  for (const char* f : {"parallel.tp=2", "parallel.zero_stage=1"}) from.push_back(f);
  for (const char* t : {"parallel.etp=2", "parallel.ep=2"}) to.push_back(t);
  const config::RunConfig from_cfg = Config(from), to_cfg = Config(to);
  StatusOr<ProcessGroups> g1 = Groups(from_cfg);
  ASSERT_TRUE(g1.ok()) << g1.status();
  ASSERT_TRUE(TrainOn(from_cfg, "reshard", &*g1, /*exit_after=*/10).ok());
  StatusOr<ProcessGroups> g2 = Groups(to_cfg);
  ASSERT_TRUE(g2.ok()) << g2.status();
  StatusOr<TrainResult> r = TrainOn(to_cfg, "reshard", &*g2, 0, /*resume=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectMatches(to_cfg, "reshard", "reshard_reference");
}

}  // namespace
}  // namespace scalemoe

int main(int argc, char** argv) { return scalemoe::testing::MpiTestMain(argc, argv); }
