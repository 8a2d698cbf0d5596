// `scalemoe train`: loads and validates a config, then runs the training
// loop (launch/trainer.h) into a run directory.
#include <mpi.h>

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
#include "parallel/mpi_communicator.h"

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

// Every rank takes rank 0's string (the run dir must agree across ranks).
std::string BroadcastString(std::string value) {
  int size = static_cast<int>(value.size());
  MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
  value.resize(size);
  MPI_Bcast(value.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
  return value;
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
  std::optional<ProcessGroups> groups;
  if (runtime) {
    options.run_dir = BroadcastString(options.run_dir);
    StatusOr<ProcessGroups> created = CreateMpiProcessGroups(
        GridSizes{layout->tp, layout->dp, layout->pp, layout->etp, layout->ep, layout->edp});
    if (!created.ok()) return Fail(1, std::string(created.status().message()));
    groups.emplace(*std::move(created));
    options.groups = &*groups;
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
    SM_LOG(kError, "scalemoe train: ", result.status().message());
    // One failed rank must not leave the others waiting in a collective.
    if (world > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
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
