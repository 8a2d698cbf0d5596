// One child process of a sweep: started with its output appended to a log
// file, waited for, and ended with the sweep (a sweep that is killed leaves
// no training running behind it to collide with the next sweep's).
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe {

// How a child ended: ok is exit code 0; how reads "exit code 1" or
// "signal 9 (Killed)".
struct ChildEnd {
  bool ok = false;
  std::string how;
};

// Runs argv[0] (looked up on PATH when it has no '/') with `argv`, this
// process's environment with `env_overrides` ("NAME=value") replacing or
// adding variables, stdin from /dev/null and stdout and stderr appended to
// `log_path`, and waits for it. Should this process die first, the child
// gets SIGTERM (Linux PR_SET_PDEATHSIG; mpirun passes it on to its ranks).
// An executable that cannot be started is FailedPrecondition naming it.
StatusOr<ChildEnd> RunChild(const std::vector<std::string>& argv,
                            const std::vector<std::string>& env_overrides,
                            const std::string& log_path);

}  // namespace scalemoe
