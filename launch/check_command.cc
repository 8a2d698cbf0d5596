// `scalemoe check-config`: loads a config with overrides, validates it for a
// world size and prints the resolved config (the same text a run writes to
// its run directory), so a layout can be checked before asking for machines.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "launch/memory_estimate.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe check-config --config FILE [--set a.b=value]... [--world N]\n"
    "  Loads FILE (text-format RunConfig), applies each --set in order, validates\n"
    "  it for N ranks (default: the smallest world the layout fits) and prints the\n"
    "  resolved config. Exit 0 if valid, 2 with every problem listed otherwise.\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "scalemoe check-config: %s\n", message.c_str());
  return 2;
}

int RunCheckConfig(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags = ParseFlags(args, {{"config"}, {"world"}, {"set", true, true}});
  if (!flags.ok()) return Fail(std::string(flags.status().message()) + "\n" + kUsage);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  const std::string path = flags->Get("config");
  const std::vector<std::string> overrides = flags->All("set");
  const std::string world_text = flags->Get("world");
  if (path.empty()) return Fail(std::string("--config is required\n") + kUsage);
  StatusOr<config::RunConfig> config = LoadConfig(path, overrides);
  if (!config.ok()) return Fail(std::string(config.status().message()));
  int world = MinimalWorldSize(*config);
  if (!world_text.empty() && (!absl::SimpleAtoi(world_text, &world) || world < 1)) {
    return Fail("--world '" + world_text + "' must be a positive integer (the number of ranks)");
  }
  if (Status s = ValidateConfig(*config, world); !s.ok()) {
    return Fail(path + ": " + std::string(s.message()));
  }
  StatusOr<ParallelLayout> layout = ResolveLayout(*config, world);
  std::printf("# %s is valid for world size %d: tp=%d pp=%d dp=%d | etp=%d ep=%d edp=%d\n",
              path.c_str(), world, layout->tp, layout->pp, layout->dp, layout->etp, layout->ep,
              layout->edp);
  std::printf("# estimated memory %s, of train.device_memory_gib=%g\n",
              EstimateMemory(*config, *layout).Summary().c_str(),
              config->train().device_memory_gib());
  std::printf("%s", ConfigToText(*config).c_str());
  return 0;
}

}  // namespace

Subcommand CheckConfigCommand() {
  return {"check-config", "load, override and validate a config; print it resolved",
          RunCheckConfig};
}

}  // namespace scalemoe
