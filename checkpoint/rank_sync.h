// Internal to checkpoint/: the few collectives a multi-rank save or load
// needs, over any Communicator (nullptr = a world of one). Every rank must
// call each function in the same order, whatever its local status, so that a
// failure on one rank turns into an error on all ranks instead of a hang.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/communicator.h"

namespace scalemoe::checkpoint {

// All-reduces "did phase `phase` succeed here" over `world`. Returns `local`
// when it failed, an Aborted error naming the failed ranks when only others
// failed, and the collective's own error if the reduction itself failed.
// `value` (only rank 0's counts) is broadcast alongside: on return it holds
// rank 0's value on every rank.
Status AgreeOnStatus(Communicator* world, const Status& local, const std::string& phase,
                     double* value = nullptr);

// Every rank's `mine`, in rank order.
StatusOr<std::vector<std::string>> AllGatherStrings(Communicator* world, const std::string& mine);

}  // namespace scalemoe::checkpoint
