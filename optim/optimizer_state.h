// StateSlice: one rank's piece of one parameter's optimizer state, shared by
// the distributed optimizer (which produces them) and sharded checkpoints
// (which save and reshard them). Keyed per parameter so a checkpoint written
// at one DP/EP layout loads at another.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace scalemoe {

// Name "optimizer.<buffer>/<param name>" with buffer adam_m, adam_v or
// muon_momentum; the parameter is flattened to 1-D (global_numel elements)
// and this rank holds [start, start + data.numel()) of it.
struct StateSlice {
  std::string name;
  Tensor data;  // 1-D view into the live state: writing into it restores a checkpoint
  int64_t global_numel = 0;
  int64_t start = 0;
};

}  // namespace scalemoe
