// Helpers shared by the tensor-parallel layer tests: slicing the single-rank
// reference into a TP rank's shard, and comparing within a relative bound.
#pragma once

#include <algorithm>
#include <cmath>

#include "core/params.h"
#include "core/tensor.h"
#include "parallel/process_groups.h"

namespace scalemoe::testing {

// A world of `tp` ranks that is one TP group (the expert view folds it into EDP).
inline GridSizes TpGrid(int tp) { return {.tp = tp, .edp = tp}; }

inline ShardCoords TpCoords(const Communicator& tp) {
  return {.tp_rank = tp.rank(), .tp_size = tp.size()};
}

// Contiguous copy of rows / columns [index*len, (index+1)*len) of a 2-D
// tensor (or of the elements of a 1-D one, for Rows).
inline Tensor Rows(const Tensor& t, int index, int parts) {
  const int64_t len = t.dim(0) / parts;
  return t.Narrow(0, index * len, len).Clone();
}
inline Tensor Cols(const Tensor& t, int index, int parts) {
  const int64_t len = t.dim(1) / parts;
  return t.Narrow(1, index * len, len).Clone();
}

// max |a − b| / max(1, max |b|); infinity on a size mismatch.
inline double RelDiff(const Tensor& a, const Tensor& b) {
  if (a.numel() != b.numel()) return INFINITY;
  double diff = 0, scale = 1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    diff = std::max(diff, std::abs(a.At(i) - b.At(i)));
    scale = std::max(scale, std::abs(b.At(i)));
  }
  return diff / scale;
}

constexpr double kTpTolerance = 1e-12;

}  // namespace scalemoe::testing
