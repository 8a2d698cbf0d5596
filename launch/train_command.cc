// `scalemoe train`: loads and validates a config, then runs the training
// loop (launch/trainer.h) into a run directory.
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "launch/commands.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "launch/trainer.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe train --config FILE [--set a.b=value]... [--run-dir DIR]\n"
    "                      [--resume] [--exit-after N] [--quiet]\n"
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
  StatusOr<config::RunConfig> cfg = LoadConfig(flags->Get("config"), flags->All("set"));
  if (!cfg.ok()) return Fail(2, std::string(cfg.status().message()));
  if (Status s = ValidateConfig(*cfg, /*world_size=*/1); !s.ok()) {
    return Fail(2, flags->Get("config") + ": " + std::string(s.message()));
  }
  StatusOr<int64_t> exit_after = flags->GetInt("exit-after", 0);
  if (!exit_after.ok()) return Fail(2, std::string(exit_after.status().message()));

  TrainOptions options;
  options.config = *cfg;
  options.run_dir = flags->Get("run-dir", DefaultRunDir(cfg->name()));
  options.resume = flags->Has("resume");
  options.quiet = flags->Has("quiet");
  options.exit_after_steps = *exit_after;
  std::printf("run dir: %s\n", options.run_dir.c_str());
  std::fflush(stdout);
  StatusOr<TrainResult> result = Train(options);
  if (!result.ok()) return Fail(1, std::string(result.status().message()));
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
