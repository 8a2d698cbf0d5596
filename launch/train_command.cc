// `scalemoe train`: loads and validates a config, then runs the training
// loop (launch/trainer.h) into a run directory.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/logging.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "launch/trainer.h"
#include "parallel/broadcast_string.h"
#include "parallel/collective_watchdog.h"
#include "parallel/mpi_runtime.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe train --config FILE [--set a.b=value]... [--run-dir DIR]\n"
    "                      [--resume] [--exit-after N] [--quiet]\n"
    "  One rank: run it directly. Several: mpirun -np N build/scalemoe train ...;\n"
    "  the layout (parallel.dp/ep/zero_stage) must fit N (check-config --world N).\n"
    "  Trains the model FILE describes on its dataset (data.dataset_dir, made by\n"
    "  'scalemoe prepare'). Outputs go to DIR (default runs/<name>-<time>):\n"
    "  config.textproto, metrics.jsonl, a TensorBoard event file, checkpoints/.\n"
    "  --resume        continue from the newest complete checkpoint in DIR\n"
    "  --exit-after N  save a checkpoint and stop once N steps are done\n"
    "  --quiet         no progress lines\n";

int Fail(int code, const std::string& message) {
  std::fprintf(stderr, "scalemoe train: %s\n", message.c_str());
  return code;
}

std::string DefaultRunDir(const std::string& name) {
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return "runs/" + name + "-" + stamp;
}

// Started by mpirun/srun (Open MPI, PMI or PMIx set these)? A plain process
// is a world of one and needs no MPI at all.
bool LaunchedByMpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

// The watchdog's handler: say why, then end this rank at once (no MPI call:
// it runs on the watchdog thread while the main thread is blocked in MPI).
// The launcher sees a rank exit with code 1 and stops the job (mpirun does
// by default; srun with --kill-on-bad-exit, as scripts/slurm_train.sbatch).
void EndRankOnTimeout(const std::string& message) {
  SM_LOG(kError, "scalemoe train: ", message,
         ". Checkpoints are atomic, so the newest complete one is intact: fix the node or its "
         "network and rerun with --resume");
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(1);
}

int RunTrain(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags = ParseFlags(args, {{"config"},
                                                  {"set", true, true},
                                                  {"run-dir"},
                                                  {"resume", false},
                                                  {"exit-after"},
                                                  {"quiet", false}});
  if (!flags.ok()) return Fail(2, std::string(flags.status().message()) + "\n" + kUsage);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  if (!flags->Has("config")) return Fail(2, std::string("--config is required\n") + kUsage);
  StatusOr<int64_t> exit_after = flags->GetInt("exit-after", 0);
  if (!exit_after.ok()) return Fail(2, std::string(exit_after.status().message()));
  // Every rank loads and validates the same config, so a bad one fails on
  // all ranks alike (no rank is left waiting in a collective).
  StatusOr<config::RunConfig> cfg = LoadConfig(flags->Get("config"), flags->All("set"));
  if (!cfg.ok()) return Fail(2, std::string(cfg.status().message()));

  std::unique_ptr<MpiRuntime> runtime;
  if (LaunchedByMpi()) {
    runtime = std::make_unique<MpiRuntime>(nullptr, nullptr);
    if (!runtime->status().ok()) return Fail(1, std::string(runtime->status().message()));
  }
  const int world = runtime ? runtime->world_size() : 1;
  const int rank = runtime ? runtime->world_rank() : 0;
  SetLogRank(rank, world);
  if (Status s = ValidateConfig(*cfg, world); !s.ok()) {
    return rank == 0 ? Fail(2, flags->Get("config") + ": " + std::string(s.message())) : 2;
  }
  StatusOr<ParallelLayout> layout = ResolveLayout(*cfg, world);
  if (!layout.ok()) return Fail(2, std::string(layout.status().message()));

  TrainOptions options;
  options.config = *cfg;
  options.run_dir = flags->Get("run-dir", DefaultRunDir(cfg->name()));
  options.resume = flags->Has("resume");
  options.quiet = flags->Has("quiet") || rank != 0;
  options.exit_after_steps = *exit_after;
  // Destroyed in reverse: the groups, then the watchdog, then MPI.
  std::unique_ptr<CollectiveWatchdog> watchdog;
  std::optional<ProcessGroups> groups;
  if (runtime) {
    if (const uint32_t timeout = cfg->parallel().collective_timeout_s(); timeout > 0) {
      watchdog = std::make_unique<CollectiveWatchdog>(CollectiveWatchdogOptions{
          .timeout = std::chrono::seconds(timeout),
          .world_rank = rank,
          .host = runtime->host(),
          .timeout_setting = "parallel.collective_timeout_s",
          .on_timeout = EndRankOnTimeout});
    }
    StatusOr<ProcessGroups> created = CreateMpiProcessGroups(
        GridSizes{layout->tp, layout->dp, layout->pp, layout->etp, layout->ep, layout->edp},
        {.watchdog = watchdog.get()});
    if (!created.ok()) return Fail(1, std::string(created.status().message()));
    groups.emplace(*std::move(created));
    options.groups = &*groups;
    // The run dir must agree across ranks (a default one has a time stamp).
    StatusOr<std::string> run_dir = BroadcastString(*groups->world, options.run_dir);
    if (!run_dir.ok()) return Fail(1, std::string(run_dir.status().message()));
    options.run_dir = *run_dir;
  }
  if (rank == 0) {
    const bool sp = cfg->parallel().sequence_parallel() && layout->tp > 1;
    std::printf("run dir: %s (%d rank%s: tp=%d%s pp=%d dp=%d | etp=%d ep=%d edp=%d | "
                "zero_stage=%d)\n",
                options.run_dir.c_str(), world, world == 1 ? "" : "s", layout->tp,
                sp ? " +sp" : "", layout->pp, layout->dp, layout->etp, layout->ep, layout->edp,
                cfg->parallel().zero_stage());
    if (cfg->parallel().sequence_parallel() && layout->tp == 1) {
      std::printf("note: parallel.sequence_parallel has no effect with parallel.tp=1\n");
    }
    std::fflush(stdout);
  }
  StatusOr<TrainResult> result = Train(options);
  if (!result.ok()) {
    if (!runtime || world == 1) {
      SM_LOG(kError, "scalemoe train: ", result.status().message());
      return 1;
    }
    // One failed rank must not leave the others waiting in a collective.
    SM_LOG(kError, "scalemoe train: rank ", rank, " on node ", runtime->host(), " failed: ",
           result.status().message(), "; ending the job");
    runtime->Abort(1);
  }
  if (rank != 0) return 0;
  std::printf("done: %lld steps | train loss %.4f | val loss %.4f | unigram baseline %.4f\n",
              static_cast<long long>(result->steps_done), result->last_train_loss,
              result->last_val_loss, result->unigram_val_loss);
  std::printf("run dir: %s\n", options.run_dir.c_str());
  if (!result->last_checkpoint.empty()) {
    std::printf("checkpoint: %s\n", result->last_checkpoint.c_str());
  }
  return 0;
}

}  // namespace

Subcommand TrainCommand() {
  return {"train", "train a model (single rank for now) into a run directory", RunTrain};
}

}  // namespace scalemoe
