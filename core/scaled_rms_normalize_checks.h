// Argument checks of ScaledRmsNormalize and its backward (core/ops.h) shared
// by the CPU and CUDA backends: dtypes and sizes. Each backend checks where
// the tensors live (and the CPU that they are contiguous) first.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "core/ops.h"
#include "core/status.h"

namespace scalemoe::ops {

// Rows of x [R, D]; γ [D] and rstd [R] in StatDType(x); the io tensors (y,
// or d_y and d_x) of x's numel, all of x's dtype or all bf16 for f32 x.
inline int64_t CheckScaledRmsNormalizeArgs(
    const char* op, const Tensor& x, const Tensor& gamma, const Tensor& rstd,
    std::initializer_list<std::pair<const char*, const Tensor*>> io) {
  SM_CHECK_MSG(x.ndim() >= 1 && (x.dtype() == DType::kF32 || x.dtype() == DType::kF64 ||
                                 x.dtype() == DType::kBF16),
               op, " x must be f32, f64 or bf16 rows, got ", x.DebugString());
  const int64_t d = x.dim(-1);
  SM_CHECK_MSG(d >= 1 && d <= kScaledRmsNormalizeMaxDim, op, ": rows of ", d, " elements (",
               x.DebugString(), "); this op serves rows of 1..", kScaledRmsNormalizeMaxDim,
               " (per-head vectors): use RmsNormalize and ScaleRowsCols for longer ones");
  const int64_t rows = x.numel() / d;
  const DType stat = StatDType(x.dtype());
  SM_CHECK_MSG(gamma.numel() == d && gamma.dtype() == stat, op, " gamma ", gamma.DebugString(),
               " for x ", x.DebugString(), " (want ", d, " ", DTypeName(stat), ")");
  SM_CHECK_MSG(rstd.numel() == rows && rstd.dtype() == stat, op, " rstd ", rstd.DebugString(),
               " for x ", x.DebugString(), " (want ", rows, " ", DTypeName(stat), ")");
  const DType dt = io.begin()->second->dtype();
  for (const auto& [what, t] : io) {
    SM_CHECK_MSG(t->numel() == x.numel() && t->dtype() == dt &&
                     (dt == x.dtype() || (dt == DType::kBF16 && x.dtype() == DType::kF32)),
                 op, " ", what, " ", t->DebugString(), " for x ", x.DebugString(),
                 " (x's dtype, or bf16 for f32 x, the same for every output)");
  }
  return rows;
}

// ScaledRmsNormalizeRope's extra terms: x [B, T, H, D] (D even) and a rope
// table [2, T', D/2] with T' >= T in StatDType(x).
inline void CheckRopeTableArgs(const char* op, const Tensor& x, const Tensor& table) {
  SM_CHECK_MSG(x.ndim() == 4 && x.dim(3) % 2 == 0, op, " x must be [B, T, H, D] with D even, got ",
               x.DebugString());
  const DType stat = StatDType(x.dtype());
  SM_CHECK_MSG(table.ndim() == 3 && table.dim(0) == 2 && table.dim(1) >= x.dim(1) &&
                   table.dim(2) == x.dim(3) / 2 && table.dtype() == stat,
               op, " rope_table ", table.DebugString(), " for x ", x.DebugString(),
               " (want [2, >= ", x.dim(1), ", ", x.dim(3) / 2, "] ", DTypeName(stat),
               ", from RopeTable)");
}

}  // namespace scalemoe::ops
