#include "launch/cli.h"

#include <cstdio>

#include "core/context.h"
#include "launch/commands.h"

namespace scalemoe {
namespace {

void PrintTopHelp() {
  std::printf("scalemoe: Mixture-of-Experts trainer with scale-vector strategies\n\n");
  std::printf("usage: scalemoe <command> [flags]   (scalemoe <command> --help)\n\ncommands:\n");
  for (const Subcommand& s : Subcommands()) {
    std::printf("  %-10s %s\n", s.name.c_str(), s.summary.c_str());
  }
  // What train.device can be here (scripts/run_default.sh reads this line).
#if SCALEMOE_CUDA
  std::printf("\ndevices: CPU, CUDA (%d visible)\n", ExecContext::CudaDeviceCount());
#else
  std::printf("\ndevices: CPU (built without the CUDA backend)\n");
#endif
}

}  // namespace

const std::vector<Subcommand>& Subcommands() {
  static const std::vector<Subcommand>* table = new std::vector<Subcommand>{
      // One line per subcommand, in --help order.
      CheckConfigCommand(),
      ExportCommand(),
      InspectCommand(),
      PrepareCommand(),
      SweepCommand(),
      TokenizeCommand(),
      TrainCommand(),
  };
  return *table;
}

int RunCli(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    PrintTopHelp();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  for (const Subcommand& s : Subcommands()) {
    if (s.name == name) return s.run(std::vector<std::string>(argv + 2, argv + argc));
  }
  std::fprintf(stderr, "scalemoe: unknown command '%s'; run 'scalemoe --help' for the list\n",
               name.c_str());
  return 2;
}

}  // namespace scalemoe
