// Argument checks of the group ops (core/ops.h: ScaleRowsColsGroup,
// MagnitudeDirectionGroup and their backwards), shared by the CPU and CUDA
// backends.
#pragma once

#include <cstdint>

#include "core/ops.h"

namespace scalemoe::ops {

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

}  // namespace scalemoe::ops
