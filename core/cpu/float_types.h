// Storage and compute types of the CPU reference ops: f32 and f64 compute
// in themselves, bf16 is loaded into f32, computed in f32 and rounded (to
// nearest even) on store. Only core/cpu includes this.
#pragma once

#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::cpu {

template <typename T>
struct AccOf {
  using type = T;
};
template <>
struct AccOf<bf16> {
  using type = float;
};
// The type an element of storage type T is computed in.
template <typename T>
using Acc = typename AccOf<T>::type;

// Calls f(T{}) with T the element type of a float dtype (f32, f64, bf16).
template <typename F>
void DispatchFloat(const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kBF16: f(bf16{}); return;
    default: SM_CHECK_MSG(false, "expected an f32/f64/bf16 tensor, got ", t.DebugString());
  }
}

}  // namespace scalemoe::cpu
