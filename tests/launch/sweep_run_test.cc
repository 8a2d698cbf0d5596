// `scalemoe sweep` end to end on the CPU, with the built binary: a sweep
// whose points were interrupted in different ways (one finished, one stopped
// after a checkpoint, one before its first) finishes on the rerun without
// touching the finished point; a failing point stops the sweep naming its
// log; the launcher's commands (mpirun, a cluster prefix, PRINT).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/metrics.h"
#include "launch/sweep_points.h"
#include "launch/sweep_runner.h"
#include "launch/sweep_spec.h"
#include "model/model.h"
#include "tests/launch/sweep_test_util.h"
#include "tests/launch/tiny_training.h"
#include "tests/testing/status_util.h"

namespace scalemoe {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using ::testing::HasSubstr;
using testing::Must;
using testing::ReadCsv;
using testing::ReadText;
using testing::RunCommand;
using testing::Scalemoe;
using testing::TinySweepSpec;
using testing::WriteText;

// Every file under `dir`: its contents and modification time.
std::map<std::string, std::pair<std::string, fs::file_time_type>> Snapshot(const fs::path& dir) {
  std::map<std::string, std::pair<std::string, fs::file_time_type>> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    files[fs::relative(entry.path(), dir).string()] = {ReadText(entry.path()),
                                                       entry.last_write_time()};
  }
  return files;
}

// The steps of a run's "loss" records, in file order.
std::vector<int64_t> LoggedSteps(const fs::path& run) {
  std::vector<int64_t> steps;
  for (const auto& r : Must(ReadMetricsFile((run / "metrics.jsonl").string()))) {
    if (r.contains("loss")) steps.push_back(r["step"].get<int64_t>());
  }
  return steps;
}

// The last record of `run` that holds `key`.
double LastValue(const fs::path& run, const std::string& key) {
  double value = NAN;
  for (const auto& r : Must(ReadMetricsFile((run / "metrics.jsonl").string()))) {
    if (r.contains(key)) value = r[key].get<double>();
  }
  return value;
}

// Processes (other than this one) whose command line contains `needle`.
std::vector<pid_t> ProcessesWith(const std::string& needle) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = ReadText(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    const pid_t pid = std::stoi(name);
    if (pid != getpid() && cmdline.find(needle) != std::string::npos) pids.push_back(pid);
  }
  return pids;
}

// Polls `done` every 50 ms for up to `seconds`.
template <typename F>
bool WaitFor(double seconds, F done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    usleep(50000);
  }
  return true;
}

class SweepRunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("scalemoe_sweep_run_test_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    Must(testing::MakeTinyDataset(*root_));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }
  // Writes a tiny spec with `rest` and returns the sweep command over it.
  static std::string Sweep(const std::string& name, const std::string& rest) {
    const fs::path spec = *root_ / (name + ".textproto");
    WriteText(spec, TinySweepSpec((*root_ / "dataset").string(), rest));
    return Scalemoe() + " sweep --spec " + spec.string() + " --sweep-dir " + Dir(name).string();
  }
  static fs::path Dir(const std::string& name) { return *root_ / name; }

  static fs::path* root_;
};
fs::path* SweepRunTest::root_ = nullptr;

TEST_F(SweepRunTest, RerunSkipsFinishedResumesInterruptedAndRestartsStalePoints) {
  const std::string sweep = Sweep("experts", R"(
    axes { field: "moe.num_experts" name: "experts" values: ["1", "4", "8"] }
    hold_fixed: SAME_ACTIVE
  )");
  const fs::path dir = Dir("experts");
  // The first point finishes.
  CommandResult first = RunCommand(sweep + " --points experts-1");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_TRUE(fs::exists(dir / "experts-1" / kPointDoneFile)) << first.output;
  EXPECT_FALSE(fs::exists(dir / "experts-4")) << "--points ran another point";
  const auto finished = Snapshot(dir / "experts-1");
  // The second stops after the checkpoint of step 4 (the sweep's own command
  // for it, with --exit-after), as a sweep killed mid-point leaves it.
  CommandResult print = RunCommand(sweep + " --print");
  ASSERT_EQ(print.exit_code, 0) << print.output;
  const std::vector<std::string> commands =
      absl::StrSplit(print.output, '\n', absl::SkipWhitespace());
  ASSERT_EQ(commands.size(), 3u) << print.output;
  ASSERT_THAT(commands[1], HasSubstr("--run-dir " + (dir / "experts-4").string()));
  CommandResult partial = RunCommand(commands[1] + " --exit-after 4");
  ASSERT_EQ(partial.exit_code, 0) << partial.output;
  ASSERT_TRUE(fs::exists(dir / "experts-4/checkpoints/step_4/COMPLETE")) << partial.output;
  // The third died before its first checkpoint, mid-way through a record.
  fs::create_directories(dir / "experts-8");
  WriteText(dir / "experts-8/metrics.jsonl", "{\"step\": 1, \"loss\": 9.0}\n{\"step\": 2, \"lo");
  ASSERT_EQ(RunCommand(sweep + " --collect").exit_code, 0);
  std::vector<std::map<std::string, std::string>> rows = ReadCsv(dir / "results.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["status"], "done");
  EXPECT_EQ(rows[1]["status"], "interrupted");
  EXPECT_EQ(rows[1]["steps"], "4");
  EXPECT_EQ(rows[2]["status"], "stale");

  CommandResult rerun = RunCommand(sweep);
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_THAT(rerun.output, HasSubstr("experts-1: finished, skipped"));
  EXPECT_THAT(rerun.output, HasSubstr("experts-4: resuming from its newest checkpoint"));
  EXPECT_TRUE(Snapshot(dir / "experts-1") == finished) << "the finished point was touched";
  EXPECT_THAT(
      ReadText(dir / "experts-4" / kPointLogFile),
      HasSubstr("resumed from " + (dir / "experts-4/checkpoints/step_4").string() + " at step 4"));
  const std::vector<int64_t> all_steps = {1, 2, 3, 4, 5, 6, 7, 8};
  for (const char* point : {"experts-1", "experts-4", "experts-8"}) {
    SCOPED_TRACE(point);
    EXPECT_TRUE(fs::exists(dir / point / kPointDoneFile));
    EXPECT_EQ(LoggedSteps(dir / point), all_steps);  // each step once, none of the stale run's
  }

  // A changed spec does not reuse the finished points.
  CommandResult changed = RunCommand(sweep + " --set optimizer.lr=1e-2");
  EXPECT_EQ(changed.exit_code, 2) << changed.output;
  EXPECT_THAT(changed.output, HasSubstr("point experts-1 finished with other settings than the "
                                        "spec gives it now (--set moe.num_experts=1, now "
                                        "--set optimizer.lr=1e-2)"));
  EXPECT_TRUE(Snapshot(dir / "experts-1") == finished);

  // results.csv: every point with its numbers, as the runs and models give them.
  const config::SweepSpec spec = Must(LoadSweepSpec((*root_ / "experts.textproto").string()));
  const std::vector<SweepPoint> points = Must(ExpandSweep(spec));
  rows = ReadCsv(dir / "results.csv");
  ASSERT_EQ(rows.size(), points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    std::map<std::string, std::string>& row = rows[i];
    const fs::path run = dir / points[i].name;
    SCOPED_TRACE(points[i].name);
    EXPECT_EQ(row["point"], points[i].name);
    EXPECT_EQ(row["experts"], points[i].values[0].second);
    EXPECT_EQ(row["status"], "done");
    EXPECT_EQ(row["steps"], "8");
    EXPECT_EQ(row["tokens"], std::to_string(8 * points[i].tokens_per_step));
    EXPECT_NEAR(std::stod(row["val_loss"]), LastValue(run, "val_loss"), 1e-6);
    EXPECT_NEAR(std::stod(row["train_loss"]), LastValue(run, "loss"), 1e-6);
    EXPECT_NEAR(std::stod(row["train_ce"]), LastValue(run, "ce"), 1e-6);
    EXPECT_GT(std::stod(row["wall_s"]), 0);
    EXPECT_GT(std::stod(row["tokens_per_s"]), 0);
    EXPECT_EQ(row["mfu"], "");  // no peak given, none in the metrics
    ParamRegistry registry;
    const ModelCounts counts = MoeTransformer(registry, points[i].config).Counts();
    EXPECT_EQ(row["params_total"], std::to_string(counts.total_params));
    EXPECT_EQ(row["params_active"], std::to_string(counts.active_params_per_token));
    // One expert takes every token; more share them unevenly.
    const double load = std::stod(row["load_max_over_mean"]);
    if (points[i].config.moe().num_experts() == 1) {
      EXPECT_EQ(load, 1.0);
      EXPECT_EQ(counts.total_params, counts.active_params_per_token);
    } else {
      EXPECT_GE(load, 1.0);
      EXPECT_LE(load, points[i].config.moe().num_experts());
    }
  }
}

TEST_F(SweepRunTest, FailedPointStopsTheSweepNamingItsLogAndKeepsFinishedOnes) {
  const std::string sweep = Sweep("failing", R"(
    axes { name: "data" bundles { name: "good" }
                        bundles { name: "missing" set: "data.dataset_dir=/nonexistent/ds" } }
  )");
  const fs::path dir = Dir("failing");
  CommandResult run = RunCommand(sweep);
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_THAT(run.output, HasSubstr("point data-missing failed (exit code 1)"));
  EXPECT_THAT(run.output, HasSubstr("its log is " + (dir / "data-missing/train.log").string()));
  EXPECT_THAT(run.output, HasSubstr("/nonexistent/ds"));  // the log's tail says why
  EXPECT_TRUE(fs::exists(dir / "data-good" / kPointDoneFile));
  EXPECT_FALSE(fs::exists(dir / "data-missing" / kPointDoneFile));
  std::vector<std::map<std::string, std::string>> rows = ReadCsv(dir / "results.csv");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["status"], "done");
  EXPECT_FALSE(rows[0]["val_loss"].empty());
  EXPECT_EQ(rows[1]["status"], "failed");
  // The rerun keeps the finished point and fails at the same one.
  CommandResult again = RunCommand(sweep);
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_THAT(again.output, HasSubstr("data-good: finished, skipped"));
}

TEST_F(SweepRunTest, PrintLauncherPrintsOneCommandPerPointAndRunsNothing) {
  const std::string sweep = Sweep("printed", R"(
    axes { field: "optimizer.lr" values: ["1e-3", "3e-3"] }
    launcher { kind: PRINT ranks: 2 command_prefix: "srun --mpi=pmix --ntasks=2" }
  )");
  CommandResult print = RunCommand(sweep);
  ASSERT_EQ(print.exit_code, 0) << print.output;
  const std::vector<std::string> lines = absl::StrSplit(print.output, '\n', absl::SkipWhitespace());
  ASSERT_EQ(lines.size(), 2u) << print.output;
  EXPECT_THAT(lines[0], ::testing::StartsWith("srun --mpi=pmix --ntasks=2 " + Scalemoe() +
                                              " train --config configs/tiny_cpu.textproto"));
  EXPECT_THAT(lines[1], HasSubstr("--set optimizer.lr=3e-3 --run-dir " +
                                  (Dir("printed") / "lr-3e-3").string()));
  EXPECT_FALSE(fs::exists(Dir("printed"))) << "PRINT started something";
  // Submitted through scripts/slurm_train.sbatch instead.
  CommandResult sbatch = RunCommand(Sweep("submitted", R"(
    axes { field: "optimizer.lr" values: ["1e-3"] }
    launcher { kind: PRINT ranks: 2 command_prefix: "--nodes=1"
               sbatch_script: "scripts/slurm_train.sbatch" }
  )"));
  ASSERT_EQ(sbatch.exit_code, 0) << sbatch.output;
  EXPECT_THAT(sbatch.output,
              ::testing::StartsWith("SCALEMOE_RUN_DIR=" + (Dir("submitted") / "lr-1e-3").string() +
                                    " sbatch --job-name=lr-1e-3 --nodes=1 "
                                    "scripts/slurm_train.sbatch configs/tiny_cpu.textproto --set "
                                    "model.num_layers=2 "));
  EXPECT_THAT(sbatch.output, HasSubstr("--set optimizer.lr=1e-3\n"));
}

TEST_F(SweepRunTest, KillingTheSweepEndsItsTrainingChild) {
  const std::string sweep = Sweep("killed", R"(
    set: ["train.train_steps=1000000", "train.eval_interval=0", "checkpoint.interval=0"]
    axes { field: "train.seed" values: ["1"] }
  )");
  const fs::path run = Dir("killed") / "seed-1";
  const std::string child = "--run-dir " + run.string();
  CommandResult started =
      RunCommand("(" + sweep + " > " + (*root_ / "killed.log").string() + " 2>&1 & echo $!)");
  ASSERT_EQ(started.exit_code, 0) << started.output;
  const pid_t sweep_pid = std::stoi(started.output);
  const bool training = WaitFor(
      60, [&] { return !ProcessesWith(child).empty() && fs::exists(run / "metrics.jsonl"); });
  kill(sweep_pid, SIGKILL);
  ASSERT_TRUE(training) << ReadText(*root_ / "killed.log");
  // The child gets SIGTERM with its parent gone, instead of training on.
  const bool ended = WaitFor(20, [&] { return ProcessesWith(child).empty(); });
  for (pid_t orphan : ProcessesWith(child)) kill(orphan, SIGKILL);
  EXPECT_TRUE(ended) << "the training child outlived the killed sweep";
}

TEST(SweepCommandTest, LocalCommandsUseMpirunForSeveralRanks) {
  config::SweepSpec spec = Must(ParseSweepSpecText(R"(
    base_config: "configs/tiny_cpu.textproto"
    set: "train.global_batch_size=16"
    axes { field: "moe.num_experts" values: ["4"] }
    launcher { ranks: 2 mpirun_args: ["--oversubscribe", "--bind-to", "none"] }
  )",
                                                   "spec"));
  const std::vector<SweepPoint> points = Must(ExpandSweep(spec));
  ASSERT_EQ(points.size(), 1u);
  EXPECT_THAT(
      PointCommand(spec, points[0], "out/p", "/bin/scalemoe", /*resume=*/true),
      ::testing::ElementsAre("mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none",
                             "/bin/scalemoe", "train", "--config", "configs/tiny_cpu.textproto",
                             "--set", "train.global_batch_size=16", "--set", "moe.num_experts=4",
                             "--run-dir", "out/p", "--resume"));
  spec.mutable_launcher()->set_ranks(1);
  EXPECT_EQ(PointCommand(spec, points[0], "out/p", "/bin/scalemoe", false)[0], "/bin/scalemoe");
  EXPECT_EQ(ShellJoin({"a", "b c", "it's", "x=[1, 2]"}), "a 'b c' 'it'\\''s' 'x=[1, 2]'");
}

}  // namespace
}  // namespace scalemoe
