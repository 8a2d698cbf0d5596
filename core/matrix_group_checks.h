// Argument checks shared by the CPU and CUDA backends: the group ops'
// (core/ops.h: ScaleRowsColsGroup, MagnitudeDirectionGroup and their
// backwards), and the dtypes ScaleRowsCols' vectors may have.
#pragma once

#include <cstdint>

#include "core/ops.h"

namespace scalemoe::ops {

// The dtypes ScaleRowsCols' row and col may have beside x's.
enum class VectorDTypes : uint8_t {
  kLikeX,       // x's (the backward)
  kLikeXOrF32,  // x's, or f32 for bf16 x (the forward: f32 weights on bf16 rows)
};
inline bool VectorDTypeOk(const Tensor& v, const Tensor& x, VectorDTypes allowed) {
  return v.dtype() == x.dtype() || (allowed == VectorDTypes::kLikeXOrF32 &&
                                    x.dtype() == DType::kBF16 && v.dtype() == DType::kF32);
}

// `g` holds `size` contiguous matrices [rows, cols] of `dtype` on `device`
// (on CUDA also its address table); with `optional`, an empty group (an
// undefined tensor) passes too.
void CheckMatrixGroup(const MatrixGroup& g, int64_t size, int64_t rows, int64_t cols, DType dtype,
                      Device device, bool optional, const char* op, const char* what);
// Each group's sums add into a matrix of its own: no two of g's matrices
// start at the same memory (a vector shared by two groups would take both
// sums at once).
void CheckOwnMatrices(const MatrixGroup& g, const char* op, const char* what);
// The same, or every one of g's matrices is the same memory (one vector
// shared by all groups, whose sums the op adds in group order). Returns
// whether g is shared (two groups or more).
bool CheckOwnOrSharedMatrices(const MatrixGroup& g, const char* op, const char* what);

// Each group op's whole argument contract (core/ops.h), one for both
// backends; `device` is the backend's.
void CheckScaleRowsColsGroup(const MatrixGroup& x, const MatrixGroup& row, const MatrixGroup& col,
                             const MatrixGroup& out, Device device);
// Returns whether d_col is one vector shared by every group.
bool CheckScaleRowsColsBackwardGroup(const MatrixGroup& x, const MatrixGroup& row,
                                     const MatrixGroup& col, const MatrixGroup& d_out,
                                     const MatrixGroup& d_x, const MatrixGroup& d_row,
                                     const MatrixGroup& d_col, Device device);
void CheckMagnitudeDirectionGroup(const MatrixGroup& alpha, const MatrixGroup& beta,
                                  const MatrixGroup& gamma, Device device);
void CheckMagnitudeDirectionBackwardGroup(const MatrixGroup& alpha, const MatrixGroup& beta,
                                          const MatrixGroup& d_gamma, const MatrixGroup& d_alpha,
                                          const MatrixGroup& d_beta, Device device);

}  // namespace scalemoe::ops
