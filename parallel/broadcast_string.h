// BroadcastString: every rank of a group gets the root's string (a run
// directory chosen on rank 0, say). Built on Communicator::Broadcast, so it
// works on every backend; a collective: every rank of the group calls it.
#pragma once

#include <string>

#include "core/status.h"
#include "parallel/communicator.h"

namespace scalemoe {

// Returns the root's `value` on every rank (the root gets its own back).
// Errors are the Broadcast's, naming the group and the rank.
StatusOr<std::string> BroadcastString(Communicator& comm, const std::string& value,
                                      int root = 0);

}  // namespace scalemoe
