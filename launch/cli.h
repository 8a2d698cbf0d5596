// Subcommand table of the `scalemoe` binary. Each subcommand parses its own
// flags, prints `--help`, and returns a process exit code (0 ok, 1 runtime
// failure, 2 bad usage/config). Errors go to stderr.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace scalemoe {

struct Subcommand {
  std::string name;
  std::string summary;
  std::function<int(const std::vector<std::string>& args)> run;
};

// All subcommands, in --help order.
const std::vector<Subcommand>& Subcommands();

// Entry point used by main(): dispatches argv[1] to its subcommand.
int RunCli(int argc, char** argv);

}  // namespace scalemoe
