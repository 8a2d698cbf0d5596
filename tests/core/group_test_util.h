// Inputs of the group ops' CPU tests (tests/core/*_group_test.cc): G random
// tensors of one shape, and copies of them.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "tests/testing/gradcheck.h"

namespace scalemoe::testing {

// G random tensors of `shape` in `dtype` (distinct streams: stream * 100 + g).
inline std::vector<Tensor> Randoms(int64_t groups, const Shape& shape, DType dtype,
                                   uint64_t stream) {
  std::vector<Tensor> out;
  for (int64_t g = 0; g < groups; ++g) {
    Tensor t = Tensor::Empty(shape, dtype);
    t.CopyFrom(RandomTensor(shape, stream * 100 + g));
    out.push_back(t);
  }
  return out;
}

inline std::vector<Tensor> Clones(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.Clone());
  return out;
}

}  // namespace scalemoe::testing
