// Bit-exactness checks of the tests: two CPU tensors hold the same bits.
#pragma once

#include <cstring>

#include "core/tensor.h"

namespace scalemoe::testing {

// Both undefined, or the same shape, dtype and bytes (NaN payloads and the
// sign of zero included).
inline bool SameBits(const Tensor& a, const Tensor& b) {
  return a.defined() == b.defined() &&
         (!a.defined() || (a.shape() == b.shape() && a.dtype() == b.dtype() &&
                           std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0));
}

}  // namespace scalemoe::testing
