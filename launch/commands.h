// One factory per subcommand; each lives in launch/<name>_command.cc and is
// listed in cli.cc's table.
#pragma once

#include "launch/cli.h"

namespace scalemoe {

// Add one line per subcommand, e.g.:
// Subcommand TokenizeCommand();

}  // namespace scalemoe
