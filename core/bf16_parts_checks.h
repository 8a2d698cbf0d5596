// Argument checks of SplitBf16 and AddParts (core/ops.h) shared by the CPU
// and CUDA backends: dtypes and shapes. Each backend checks where the
// tensors live and that they are contiguous first.
#pragma once

#include <cstdint>

#include "core/ops.h"
#include "core/status.h"

namespace scalemoe::ops {

// x f32 [R, C] into out bf16 [R, 3·reps·C].
inline void CheckSplitBf16Args(const Tensor& x, int64_t reps, const Tensor& out) {
  SM_CHECK_MSG(x.dtype() == DType::kF32 && x.ndim() == 2 && reps >= 1 &&
                   out.dtype() == DType::kBF16 && out.ndim() == 2 && out.dim(0) == x.dim(0) &&
                   out.dim(1) == 3 * reps * x.dim(1),
               "SplitBf16: x ", x.DebugString(), ", reps ", reps, ", out ", out.DebugString(),
               " (want f32 [R, C] into bf16 [R, 3·reps·C], reps >= 1)");
}

// x f32 [R, P·C] into out f32 [R, C], beta 0 or 1: returns P.
inline int64_t CheckAddPartsArgs(const Tensor& x, double beta, const Tensor& out) {
  const bool shapes = x.ndim() == 2 && out.ndim() == 2 && x.dim(0) == out.dim(0) &&
                      out.dim(1) >= 1 && x.dim(1) % out.dim(1) == 0;
  SM_CHECK_MSG(x.dtype() == DType::kF32 && out.dtype() == DType::kF32 && shapes &&
                   (beta == 0.0 || beta == 1.0),
               "AddParts: x ", x.DebugString(), ", out ", out.DebugString(), ", beta ", beta,
               " (want f32 [R, P·C] into f32 [R, C], beta 0 or 1)");
  return x.dim(1) / out.dim(1);
}

}  // namespace scalemoe::ops
