// StateSlice: one rank's piece of one parameter's optimizer state, shared by
// the distributed optimizer (which produces them) and sharded checkpoints
// (which save and reshard them). Keyed per parameter so a checkpoint written
// at one TP/DP/EP/ZeRO layout loads at another.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/params.h"
#include "core/tensor.h"

namespace scalemoe {

// Name "optimizer.<buffer>/<param name>" with buffer adam_m, adam_v or
// muon_momentum. The state has the parameter's layout: this rank holds the
// state of the parameter's local shard (its (E)TP slice, or the whole tensor
// when replicated), flattened row-major, and of that the range
// [start, start + data.numel()) (a ZeRO-1 shard may cut anywhere).
struct StateSlice {
  std::string name;
  Tensor data;                  // 1-D view into the live state: writing into it restores a checkpoint
  const Param* param = nullptr; // whose state (outlives the slice)
  int64_t start = 0;            // local flat index of data[0]
  // Every data-parallel replica holds the same values (zero_stage 0, or
  // Muon's momentum under ZeRO-1); false: this rank's shard only.
  bool replicated = true;
};

// One box of the parameter's GLOBAL shape (spec.shape) holding a piece of a
// StateSlice, for checkpoints: stored under the global shape, state reshards
// across TP as well as DP/ZeRO like the parameter itself.
struct StateBox {
  Tensor data;        // view of the slice's data, shaped as the box
  Shape slice_start;  // global coordinates of the box's first element
};

// Cuts a slice's flat local range into boxes that are each contiguous in the
// local row-major order (a partial innermost row, whole rows, ..., a partial
// last row: at most 2·rank − 1 boxes, one for a whole shard), then shifts the
// split dim by Param::SplitStart(coords). Empty for an empty slice. A 0-d
// parameter gives one 0-d box.
std::vector<StateBox> StateBoxes(const StateSlice& slice, const ShardCoords& coords);

}  // namespace scalemoe
