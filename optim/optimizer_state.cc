#include "optim/optimizer_state.h"

#include <algorithm>

#include "core/status.h"

namespace scalemoe {

std::vector<StateBox> StateBoxes(const StateSlice& slice, const ShardCoords& coords) {
  SM_CHECK_MSG(slice.param != nullptr, "StateBoxes(", slice.name, "): no parameter");
  const Param& p = *slice.param;
  const Shape& local = p.local_shape;
  const int nd = static_cast<int>(local.size());
  const int64_t n = slice.data.numel();
  SM_CHECK_MSG(slice.start >= 0 && slice.start + n <= p.local_numel(), "StateBoxes(", slice.name,
               "): range [", slice.start, ", ", slice.start + n, ") outside the local shard of ",
               p.local_numel(), " elements");
  std::vector<StateBox> out;
  if (nd == 0) {
    if (n > 0) out.push_back({slice.data.View({}), {}});
    return out;
  }
  const Shape strides = ContiguousStrides(local);
  const int split = p.spec.layout.tp_split_dim;
  const int64_t split_start = p.SplitStart(coords);
  for (int64_t a = slice.start, b = slice.start + n; a < b;) {
    // The outermost dim whose whole steps start at `a` and fit before `b`
    // (the innermost dim always qualifies: its stride is 1).
    int d = nd - 1;
    for (int k = 0; k < nd; ++k) {
      if (a % strides[k] == 0 && b - a >= strides[k]) {
        d = k;
        break;
      }
    }
    Shape start(nd, 0), size(local);
    int64_t rest = a;
    for (int k = 0; k < nd; ++k) {
      start[k] = rest / strides[k];
      rest %= strides[k];
    }
    for (int k = 0; k < d; ++k) size[k] = 1;
    size[d] = std::min((b - a) / strides[d], local[d] - start[d]);
    const int64_t count = size[d] * strides[d];
    if (split >= 0) start[split] += split_start;
    out.push_back({slice.data.Narrow(0, a - slice.start, count).View(size), std::move(start)});
    a += count;
  }
  return out;
}

}  // namespace scalemoe
