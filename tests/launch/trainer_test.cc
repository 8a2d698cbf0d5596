// The training loop end to end on a tiny synthetic dataset: the loss falls,
// resume is bit-exact, a non-finite loss stops the run with the last good
// checkpoint intact.
#include "launch/trainer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint.h"
#include "core/context.h"
#include "data/token_loader.h"
#include "gtest/gtest.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/metrics.h"
#include "tests/launch/tiny_training.h"
#include "tests/testing/status_util.h"

using scalemoe::testing::Must;

namespace scalemoe {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class TrainerTest : public testing::TinyDatasetSuite {
 protected:

  static config::RunConfig TinyConfig(const std::vector<std::string>& extra = {}) {
    config::RunConfig cfg = testing::TinyTrainingConfig(*root_, extra);
    EXPECT_TRUE(ValidateConfig(cfg, 1).ok()) << ValidateConfig(cfg, 1);
    return cfg;
  }

  static TrainOptions Options(const config::RunConfig& cfg, const std::string& name) {
    TrainOptions o;
    o.config = cfg;
    o.run_dir = (*root_ / name).string();
    o.quiet = true;
    return o;
  }

  static std::vector<double> Losses(const std::string& run_dir) {
    return testing::ReadLosses(run_dir);
  }

  // lr 1e30: every step after the first is non-finite; on_nonfinite SKIP.
  static config::RunConfig SkippingConfig(const std::string& max_consecutive_skips) {
    return TinyConfig({"optimizer.lr=1e30", "optimizer.grad_clip=0", "schedule.warmup_steps=0",
                       "schedule.kind=CONSTANT", "train.on_nonfinite=SKIP",
                       "train.max_consecutive_skips=" + max_consecutive_skips,
                       "checkpoint.interval=0"});
  }

};

TEST_F(TrainerTest, LossFallsBelowUnigramBaseline) {
  TrainOptions o = Options(TinyConfig({"train.train_steps=60", "train.eval_interval=60",
                                       "optimizer.lr=0.01", "checkpoint.interval=0"}),
                           "falls");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps_done, 60);
  const std::vector<double> losses = Losses(o.run_dir);
  ASSERT_EQ(losses.size(), 60u);
  EXPECT_LT(losses.back(), losses.front() - 1.0);
  EXPECT_GT(r->unigram_val_loss, 0);
  EXPECT_LT(r->last_val_loss, r->unigram_val_loss);
  EXPECT_TRUE(fs::exists(fs::path(o.run_dir) / "config.textproto"));
  bool has_events = false;
  for (const auto& e : fs::directory_iterator(o.run_dir)) {
    has_events |= e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  }
  EXPECT_TRUE(has_events);
}

// The validation loss the trainer reports after its last step is the loss of
// the parameters it saves then: a model loaded from the final checkpoint
// gives the same mean cross-entropy on the same validation windows (the
// folded weights must be re-formed after the last update, not reused).
TEST_F(TrainerTest, ValidationLossIsThatOfTheSavedParameters) {
  const config::RunConfig cfg = TinyConfig({"checkpoint.interval=0"});
  TrainOptions o = Options(cfg, "val_matches_checkpoint");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status();
  StatusOr<testing::WholeModel> whole = testing::LoadWholeModel(
      cfg, (fs::path(o.run_dir) / "checkpoints/step_8").string());
  ASSERT_TRUE(whole.ok()) << whole.status();
  TokenLoaderOptions lo;
  lo.dataset_dir = cfg.data().dataset_dir();
  lo.seq_length = cfg.model().seq_length();
  lo.micro_batch_size = cfg.train().micro_batch_size();
  lo.seed = cfg.data().shuffle_seed();
  lo.split = "val";
  StatusOr<TokenLoader> val = TokenLoader::Open(lo);
  ASSERT_TRUE(val.ok()) << val.status();
  const ExecContext ctx = ExecContext::Cpu();
  Must(whole->model->PrepareStep(ctx));
  const int64_t n = cfg.train().eval_batches() * cfg.train().global_batch_size() /
                    cfg.train().micro_batch_size();
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    MicroBatch batch = val->At(i);
    const Shape shape = {batch.batch, batch.seq};
    const Tensor tokens = Tensor::FromBlob(batch.inputs.data(), shape, DType::kI32, Device::kCPU);
    const Tensor targets = Tensor::FromBlob(batch.targets.data(), shape, DType::kI32, Device::kCPU);
    loss += Must(whole->model->Evaluate(ctx, tokens, targets)).cross_entropy / n;
  }
  EXPECT_NEAR(r->last_val_loss, loss, 1e-6 * loss);
}

// N steps straight == k steps, save, resume, N-k steps: bit for bit.
TEST_F(TrainerTest, ResumeIsBitExact) {
  for (const char* optimizer : {"ADAMW", "MUON"}) {
    const config::RunConfig cfg = TinyConfig({std::string("optimizer.type=") + optimizer});
    TrainOptions straight = Options(cfg, std::string("straight_") + optimizer);
    ASSERT_TRUE(Train(straight).ok());

    TrainOptions first = Options(cfg, std::string("resumed_") + optimizer);
    first.exit_after_steps = 3;  // not on a checkpoint interval: exit saves one
    StatusOr<TrainResult> part = Train(first);
    ASSERT_TRUE(part.ok()) << part.status();
    EXPECT_EQ(part->steps_done, 3);
    TrainOptions second = first;
    second.exit_after_steps = 0;
    second.resume = true;
    StatusOr<TrainResult> rest = Train(second);
    ASSERT_TRUE(rest.ok()) << rest.status();
    EXPECT_EQ(rest->steps_done, 8);

    EXPECT_EQ(Losses(straight.run_dir), Losses(first.run_dir)) << optimizer;
    const fs::path a = fs::path(straight.run_dir) / "checkpoints/step_8/rank_00000.safetensors";
    const fs::path b = fs::path(first.run_dir) / "checkpoints/step_8/rank_00000.safetensors";
    ASSERT_TRUE(fs::exists(a) && fs::exists(b));
    EXPECT_TRUE(ReadFile(a) == ReadFile(b)) << optimizer << ": final checkpoints differ";
  }
}

// checkpoint.save_initial writes step_0 before the first update: exactly
// the parameters a fresh registry draws from train.seed (so another
// implementation can start from the trainer's weights), and a run resumed
// from it is the straight run.
TEST_F(TrainerTest, SaveInitialWritesTheWeightsBeforeAnyUpdate) {
  const config::RunConfig cfg =
      TinyConfig({"checkpoint.save_initial=true", "checkpoint.interval=0", "train.seed=77"});
  TrainOptions first = Options(cfg, "save_initial");
  first.exit_after_steps = 2;
  ASSERT_TRUE(Train(first).ok());
  const fs::path step0 = fs::path(first.run_dir) / "checkpoints/step_0";
  ASSERT_TRUE(fs::exists(step0 / "COMPLETE"));
  StatusOr<testing::WholeModel> saved = testing::LoadWholeModel(cfg, step0.string());
  ASSERT_TRUE(saved.ok()) << saved.status();
  ParamRegistry fresh;
  MoeTransformer model(fresh, cfg);
  Must(fresh.Materialize(cfg.train().seed(), DType::kF32, Device::kCPU));
  ASSERT_EQ(saved->registry->params().size(), fresh.params().size());
  for (size_t i = 0; i < fresh.params().size(); ++i) {
    const Param& a = *saved->registry->params()[i];
    const Param& b = *fresh.params()[i];
    ASSERT_EQ(a.spec.name, b.spec.name);
    EXPECT_EQ(testing::RelativeDifference(a.value, b.value), 0.0) << a.spec.name;
  }
  // From step_0 (the step_2 of the first run removed), resume runs all 8 steps.
  fs::remove_all(fs::path(first.run_dir) / "checkpoints/step_2");
  TrainOptions resumed = first;
  resumed.exit_after_steps = 0;
  resumed.resume = true;
  ASSERT_TRUE(Train(resumed).ok());
  TrainOptions straight =
      Options(TinyConfig({"checkpoint.interval=0", "train.seed=77"}), "save_initial_straight");
  ASSERT_TRUE(Train(straight).ok());
  EXPECT_EQ(Losses(resumed.run_dir), Losses(straight.run_dir));
}

TEST_F(TrainerTest, InspectCheckpointPrintsTheManifestAndFlagsCorruption) {
  TrainOptions o = Options(TinyConfig({"train.train_steps=2", "schedule.warmup_steps=1"}),
                           "inspected");
  ASSERT_TRUE(Train(o).ok());
  const std::string dir = (fs::path(o.run_dir) / "checkpoints/step_2").string();
  const Subcommand inspect = InspectCommand();
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(inspect.run({"--checkpoint", dir}), 0);
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_NE(out.find("embedding.weight"), std::string::npos) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
  {  // flip one byte of the rank file: the checksum status says BAD
    std::fstream f(fs::path(dir) / "rank_00000.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    const char byte = static_cast<char>(f.get());
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(~byte));
  }
  // Listed as BAD, and the exit code says the checkpoint cannot be loaded.
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(inspect.run({"--checkpoint", dir}), 1);
  EXPECT_NE(::testing::internal::GetCapturedStdout().find("BAD"), std::string::npos);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("1 file(s) BAD"), std::string::npos);
  EXPECT_NE(inspect.run({"--checkpoint", "/nonexistent/step_1"}), 0);
}

TEST_F(TrainerTest, NonFiniteLossStopsWithLastCheckpointIntact) {
  TrainOptions o =
      Options(TinyConfig({"optimizer.lr=1e30", "optimizer.grad_clip=0", "checkpoint.interval=1",
                          "schedule.warmup_steps=0", "schedule.kind=CONSTANT"}),
              "nonfinite");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("non-finite"), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("on_nonfinite"), std::string::npos);
  StatusOr<std::string> latest = checkpoint::LatestCheckpoint(o.run_dir);
  if (latest.ok()) {  // the run may fail on its first step, before any save
    EXPECT_NE(std::string(r.status().message()).find(*latest), std::string::npos);
  }
}

// A step that does not log, evaluate or save reads exactly the documented
// device values on the host: nothing when every MoE layer is local and
// dropless (the experts' row offsets stay on the device); with capacity
// drops, the per-expert token counts of each MoE layer, once per micro-batch
// forward (they size the experts' GEMMs). The losses, the gradient norm and
// the non-finite record wait for the next log line.
TEST_F(TrainerTest, AQuietStepReadsOnlyTheMoeCountsOnTheHost) {
  for (const char* capacity : {"0", "1.5"}) {
    SCOPED_TRACE(absl::StrCat("capacity_factor ", capacity));
    const config::RunConfig cfg =
        TinyConfig({"logging.log_interval=4", "train.eval_interval=0", "checkpoint.interval=0",
                    "checkpoint.save_at_end=false", "train.train_steps=6",
                    absl::StrCat("moe.capacity_factor=", capacity)});
    StatusOr<TrainResult> r = Train(Options(cfg, absl::StrCat("quiet_step_reads_", capacity)));
    ASSERT_TRUE(r.ok()) << r.status();
    const int64_t moe_layers = cfg.model().num_layers();  // every layer is MoE here
    const int64_t micro_batches = cfg.train().global_batch_size() / cfg.train().micro_batch_size();
    ASSERT_EQ(moe_layers * micro_batches, 4);
    const bool dropless = cfg.moe().capacity_factor() == 0;
    EXPECT_EQ(r->quiet_step_host_reads, dropless ? 0 : moe_layers * micro_batches);
    EXPECT_EQ(r->device, "CPU");
    EXPECT_EQ(r->quiet_step_system_allocs, 0);  // the allocator's cache serves the step
  }
}

// SKIP skipped without limit and ended with exit 0 and a NaN loss; it stops
// after max_consecutive_skips now.
TEST_F(TrainerTest, SkipStopsAfterMaxConsecutiveNonFiniteSteps) {
  TrainOptions o = Options(SkippingConfig("2"), "skip_limit");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("non-finite"), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("2 steps in a row"), std::string::npos)
      << r.status();
  EXPECT_NE(std::string(r.status().message()).find("train.max_consecutive_skips=2"),
            std::string::npos);
}

// The proto promises skipped steps are counted: in every metrics record and
// as a TensorBoard scalar.
TEST_F(TrainerTest, SkippedStepsAreCountedInMetricsAndTensorBoard) {
  TrainOptions o = Options(SkippingConfig("100"), "skip_counted");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->skipped_steps, 0);
  StatusOr<std::vector<nlohmann::json>> records =
      ReadMetricsFile((fs::path(o.run_dir) / "metrics.jsonl").string());
  ASSERT_TRUE(records.ok()) << records.status();
  int64_t last = -1;
  for (const auto& rec : *records) {
    if (!rec.contains("loss")) continue;
    ASSERT_TRUE(rec.contains("skipped_steps")) << rec.dump();
    EXPECT_GE(rec["skipped_steps"].get<int64_t>(), last);
    last = rec["skipped_steps"].get<int64_t>();
  }
  EXPECT_EQ(last, r->skipped_steps);
  std::string events;
  for (const auto& e : fs::directory_iterator(o.run_dir)) {
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) {
      events += ReadFile(e.path());
    }
  }
  EXPECT_NE(events.find("train/skipped_steps"), std::string::npos);
}

// A run that went past its last checkpoint and stopped (here: the later
// checkpoints removed) resumes from it; metrics.jsonl then holds every step
// once, exactly as the straight run's, not the steps since the checkpoint
// twice.
TEST_F(TrainerTest, ResumeDropsTheMetricsLoggedAfterTheCheckpoint) {
  const config::RunConfig cfg = TinyConfig();  // 8 steps, checkpoint every 2, eval every 4
  TrainOptions straight = Options(cfg, "metrics_straight");
  ASSERT_TRUE(Train(straight).ok());
  TrainOptions crashed = Options(cfg, "metrics_resumed");
  ASSERT_TRUE(Train(crashed).ok());
  for (const char* later : {"step_6", "step_8"}) {
    fs::remove_all(fs::path(crashed.run_dir) / "checkpoints" / later);
  }
  crashed.resume = true;
  StatusOr<TrainResult> rest = Train(crashed);
  ASSERT_TRUE(rest.ok()) << rest.status();
  auto read = [](const std::string& run_dir) {
    StatusOr<std::vector<nlohmann::json>> records =
        ReadMetricsFile((fs::path(run_dir) / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    std::vector<std::string> steps;  // "<step> loss" / "<step> val_loss"
    for (const auto& r : records.value_or(std::vector<nlohmann::json>{})) {
      steps.push_back(std::to_string(r["step"].get<int64_t>()) +
                      (r.contains("loss") ? " loss" : " val_loss"));
    }
    return steps;
  };
  EXPECT_EQ(read(crashed.run_dir), read(straight.run_dir));
  EXPECT_EQ(Losses(crashed.run_dir), Losses(straight.run_dir));
}

// A failed save (a full disk; here step_4's name is taken by a file, so the
// commit's rename fails) names the checkpoint that is still good.
TEST_F(TrainerTest, FailedSaveNamesTheLastGoodCheckpoint) {
  TrainOptions o = Options(TinyConfig(), "save_fails");
  fs::create_directories(fs::path(o.run_dir) / "checkpoints");
  std::ofstream(fs::path(o.run_dir) / "checkpoints" / "step_4") << "in the way";
  StatusOr<TrainResult> r = Train(o);
  ASSERT_FALSE(r.ok());
  const std::string message(r.status().message());
  EXPECT_NE(message.find("saving the checkpoint of step 4 failed"), std::string::npos) << message;
  EXPECT_NE(message.find("Last good checkpoint: " +
                         (fs::path(o.run_dir) / "checkpoints" / "step_2").string()),
            std::string::npos)
      << message;
}

TEST_F(TrainerTest, ResumeWithoutCheckpointIsAClearError) {
  TrainOptions o = Options(TinyConfig(), "empty");
  o.resume = true;
  StatusOr<TrainResult> r = Train(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("no complete checkpoint"), std::string::npos);
}

TEST_F(TrainerTest, MissingDatasetNamesTheDirectory) {
  TrainOptions o = Options(TinyConfig({"data.dataset_dir=/nonexistent/ds"}), "nodata");
  StatusOr<TrainResult> r = Train(o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("/nonexistent/ds"), std::string::npos);
}

// train.device CUDA where no GPU is visible: a clear error naming the field
// and the fixes, nothing trained (launch_trainer_cuda_test covers a GPU).
TEST_F(TrainerTest, CudaWithoutAGpuIsAClearError) {
  if (ExecContext::CudaDeviceCount() > 0) GTEST_SKIP() << "a GPU is visible here";
  StatusOr<TrainResult> r = Train(Options(TinyConfig({"train.device=CUDA"}), "no_gpu"));
  ASSERT_FALSE(r.ok());
  const std::string message(r.status().message());
  EXPECT_NE(message.find("train.device=CUDA"), std::string::npos) << message;
  EXPECT_NE(message.find("set train.device: CPU"), std::string::npos) << message;
}

}  // namespace
}  // namespace scalemoe
