// What one training rank saves and loads: its parameters and optimizer state
// as NamedTensors of their global tensors (launch/train_checkpoint.cc; tests).
#pragma once

#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/params.h"
#include "optim/optimizer_state.h"
#include "parallel/process_groups.h"

namespace scalemoe::checkpoint {

// Parameters (kModel) under their global shape, a split one as this rank's
// (E)TP slice at Param::SplitStart; optimizer state (kState) under the
// parameter's global shape as StateBoxes. `state` comes from
// DistributedOptimizer::StateSlices, each saying whether it is replicated
// over dp/edp (zero_stage 0: all of it; 1: only Muon momentum).
// for_save: each element once over the world: a tensor replicated over
// dp/edp by group rank 0, one replicated over its (E)TP group by (E)TP rank
// 0 (split ones by every (E)TP rank), a tied embedding (kEmbedding on a
// pipeline stage > 0) and its state by the first stage only. For a load
// (for_save false): everything this rank holds.
std::vector<NamedTensor> TrainingTensors(const ParamRegistry& registry,
                                         const std::vector<StateSlice>& state,
                                         const GridCoords& coords, bool for_save);

}  // namespace scalemoe::checkpoint
