// One factory per subcommand; each lives in launch/<name>_command.cc and is
// listed in cli.cc's table.
#pragma once

#include "launch/cli.h"

namespace scalemoe {

// One line per subcommand, in name order.
Subcommand CheckConfigCommand();  // check_command.cc
Subcommand ExportCommand();       // export_command.cc
Subcommand InspectCommand();      // inspect_command.cc
Subcommand PrepareCommand();      // prepare_command.cc
Subcommand SweepCommand();        // sweep_command.cc
Subcommand TokenizeCommand();     // tokenize_command.cc
Subcommand TrainCommand();        // train_command.cc

}  // namespace scalemoe
