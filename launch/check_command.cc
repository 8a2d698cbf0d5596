// `scalemoe check-config`: loads a config with overrides, validates it for a
// world size and prints the resolved config (the same text a run writes to
// its run directory), so a layout can be checked before asking for machines.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "launch/commands.h"
#include "launch/config.h"

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
  std::string path;
  std::vector<std::string> overrides;
  std::string world_text;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    // Each flag takes "--flag value" or "--flag=value".
    const size_t eq = arg.find('=');
    const bool inline_value = arg.rfind("--", 0) == 0 && eq != std::string::npos;
    const std::string flag = inline_value ? arg.substr(0, eq) : arg;
    if (flag != "--config" && flag != "--world" && flag != "--set") {
      return Fail("unknown argument '" + arg + "'\n" + kUsage);
    }
    if (!inline_value && i + 1 >= args.size()) return Fail(flag + " needs a value\n" + kUsage);
    const std::string value = inline_value ? arg.substr(eq + 1) : args[++i];
    if (flag == "--config") {
      path = value;
    } else if (flag == "--world") {
      world_text = value;
    } else {
      overrides.push_back(value);
    }
  }
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
  std::printf("%s", ConfigToText(*config).c_str());
  return 0;
}

}  // namespace

Subcommand CheckConfigCommand() {
  return {"check-config", "load, override and validate a config; print it resolved",
          RunCheckConfig};
}

}  // namespace scalemoe
