// train.device: CUDA end to end (label gpu: skipped without a device, a
// failure under SCALEMOE_REQUIRE_GPU=1), on the tiny synthetic dataset:
// the GPU run's losses track the CPU run's (fp32: within 1e-4 relative at
// every step of 20 and within 1e-3 absolute over 300; bf16 GEMM operands:
// the end of a 20-step run within 1 %, of a 300-step run within 1.5 %), the
// same seed twice gives the same bits, checkpoints move both ways between
// the devices (a run resumed on the other device continues with the
// straight run's losses), and a quiet step reads only the MoE counts
// and calls cudaMalloc/cudaFree zero times.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "launch/trainer.h"
#include "tests/launch/tiny_training.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

class TrainerCudaTest : public testing::TinyDatasetGpuSuite {
 protected:
  static TrainOptions Options(const std::string& device, const std::string& name,
                              std::vector<std::string> extra = {}) {
    // Defaults first: `extra` overrides them.
    extra.insert(extra.begin(), {"train.device=" + device, "train.train_steps=20",
                                 "train.eval_interval=10", "checkpoint.interval=10"});
    TrainOptions o;
    o.config = testing::TinyTrainingConfig(*root_, extra);
    o.run_dir = (*root_ / name).string();
    o.quiet = true;
    return o;
  }
  static std::vector<double> Losses(const TrainOptions& o) {
    return testing::ReadLosses(o.run_dir);
  }
  static void ExpectClose(const std::vector<double>& got, const std::vector<double>& ref,
                          double rel, const std::string& what) {
    ASSERT_EQ(got.size(), ref.size()) << what;
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_NEAR(got[i], ref[i], rel * std::abs(ref[i])) << what << " step " << i + 1;
    }
  }

};

TEST_F(TrainerCudaTest, Fp32TracksTheCpuAndRepeatsBitForBit) {
  const TrainOptions cpu = Options("CPU", "cpu");
  const TrainOptions gpu = Options("CUDA", "gpu");
  const TrainOptions again = Options("CUDA", "gpu_again");
  for (const TrainOptions* o : {&cpu, &gpu, &again}) {
    StatusOr<TrainResult> r = Train(*o);
    ASSERT_TRUE(r.ok()) << o->run_dir << ": " << r.status();
    EXPECT_EQ(r->steps_done, 20);
    EXPECT_EQ(r->device, o == &cpu ? "CPU" : "CUDA:0");
  }
  ASSERT_EQ(Losses(cpu).size(), 20u);
  ExpectClose(Losses(gpu), Losses(cpu), 1e-4, "GPU vs CPU");
  EXPECT_EQ(Losses(gpu), Losses(again));
}

TEST_F(TrainerCudaTest, Bf16OperandsEndWithinOnePercentOfFp32) {
  const TrainOptions cpu = Options("CPU", "bf16_ref");
  const TrainOptions gpu = Options("CUDA", "bf16", {"train.precision=BF16"});
  for (const TrainOptions* o : {&cpu, &gpu}) {
    StatusOr<TrainResult> r = Train(*o);
    ASSERT_TRUE(r.ok()) << o->run_dir << ": " << r.status();
  }
  ASSERT_EQ(Losses(gpu).size(), 20u);
  EXPECT_NEAR(Losses(gpu).back(), Losses(cpu).back(), 1e-2 * Losses(cpu).back());
}

// The curve check: 300 steps, every step logged; fp32 within 1e-3
// absolute of the CPU at every step, bf16 operands close at the end.
TEST_F(TrainerCudaTest, ThreeHundredStepsTrackTheCpuCurve) {
  const std::vector<std::string> long_run = {"train.train_steps=300", "train.eval_interval=0",
                                             "checkpoint.interval=0"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), long_run.begin(), long_run.end());
    return extra;
  };
  const TrainOptions cpu = Options("CPU", "curve_cpu", with({}));
  const TrainOptions gpu = Options("CUDA", "curve_gpu", with({}));
  const TrainOptions bf16 = Options("CUDA", "curve_bf16", with({"train.precision=BF16"}));
  for (const TrainOptions* o : {&cpu, &gpu, &bf16}) {
    StatusOr<TrainResult> r = Train(*o);
    ASSERT_TRUE(r.ok()) << o->run_dir << ": " << r.status();
    EXPECT_EQ(r->steps_done, 300);
  }
  const std::vector<double> ref = Losses(cpu), got = Losses(gpu);
  ASSERT_EQ(ref.size(), 300u);
  ASSERT_EQ(got.size(), 300u);
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]));
  EXPECT_LE(worst, 1e-3);
  EXPECT_LT(ref.back(), ref.front() - 0.5);  // it learned
  // bf16: the mean of the last 20 steps. This toy run memorises its data by
  // then (loss ~0.8) and bf16 operands fit it measurably less well: 1.09 %
  // above fp32 on the H200 (bench/RESULTS.md). The 1 % is for the
  // tiny_cpu preset, not checked here yet; this guards the toy's measured
  // gap against growing past 1.5 %.
  const std::vector<double> low = Losses(bf16);
  ASSERT_EQ(low.size(), 300u);
  double mean_ref = 0, mean_low = 0;
  for (size_t i = 280; i < 300; ++i) {
    mean_ref += ref[i] / 20;
    mean_low += low[i] / 20;
  }
  std::printf(
      "curve: fp32 GPU vs CPU worst |diff| %.3g over 300 steps; last-20 mean CPU fp32 "
      "%.6f, GPU bf16 %.6f (%.3g %%); last step %.6f vs %.6f\n",
      worst, mean_ref, mean_low, 100 * (mean_low - mean_ref) / mean_ref, ref.back(), low.back());
  EXPECT_NEAR(mean_low, mean_ref, 1.5e-2 * mean_ref);
}

// Checkpoints have one format: the first 10 steps on one device, the rest
// resumed on the other, equal the straight run of the resuming device.
TEST_F(TrainerCudaTest, CheckpointsResumeOnTheOtherDevice) {
  const TrainOptions straight_cpu = Options("CPU", "straight_cpu");
  ASSERT_TRUE(Train(straight_cpu).ok());
  const TrainOptions straight_gpu = Options("CUDA", "straight_gpu");
  ASSERT_TRUE(Train(straight_gpu).ok());
  for (const auto& [first, second] :
       {std::pair<std::string, std::string>{"CUDA", "CPU"}, {"CPU", "CUDA"}}) {
    const std::string name = "from_" + first + "_to_" + second;
    TrainOptions part = Options(first, name);
    part.exit_after_steps = 10;
    StatusOr<TrainResult> r = Train(part);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    TrainOptions rest = Options(second, name);
    rest.resume = true;
    r = Train(rest);
    ASSERT_TRUE(r.ok()) << name << ": " << r.status();
    EXPECT_EQ(r->steps_done, 20);
    const std::vector<double> straight = Losses(second == "CPU" ? straight_cpu : straight_gpu);
    ExpectClose(Losses(rest), straight, 1e-4, name);
  }
}

TEST_F(TrainerCudaTest, AQuietStepReadsOnlyTheMoeCountsOnTheHost) {
  // Dropless with every expert local: no read at all (the experts' row
  // offsets stay on the device); with capacity drops, each MoE layer's counts
  // once per micro-batch forward. As trainer_test's CPU case.
  for (const char* capacity : {"0", "1.5"}) {
    SCOPED_TRACE(absl::StrCat("capacity_factor ", capacity));
    TrainOptions o = Options("CUDA", absl::StrCat("quiet_", capacity),
                             {"logging.log_interval=4", "train.eval_interval=0",
                              "checkpoint.interval=0", "checkpoint.save_at_end=false",
                              absl::StrCat("moe.capacity_factor=", capacity)});
    o.config.mutable_train()->set_train_steps(6);
    StatusOr<TrainResult> r = Train(o);
    ASSERT_TRUE(r.ok()) << r.status();
    const int64_t micro_batches =
        o.config.train().global_batch_size() / o.config.train().micro_batch_size();
    const int64_t moe_layers = o.config.model().num_layers();  // every layer is MoE here
    ASSERT_EQ(moe_layers * micro_batches, 4);
    const bool dropless = o.config.moe().capacity_factor() == 0;
    EXPECT_EQ(r->device, "CUDA:0");
    EXPECT_EQ(r->quiet_step_host_reads, dropless ? 0 : moe_layers * micro_batches);
    // A steady-state step calls cudaMalloc/cudaFree zero times.
    EXPECT_EQ(r->quiet_step_system_allocs, 0);
  }
}

}  // namespace
}  // namespace scalemoe
