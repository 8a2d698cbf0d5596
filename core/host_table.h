// Small host-built tables on a context's device, and single values back.
//
// Multi-tensor ops (core/ops.h, "optimizer ops") read segment tables and
// per-segment coefficients from tensors on the context's device. They are
// built on the host once, at set-up, and uploaded here (ordered on the
// context's stream); a step never rebuilds them. The other direction is for
// control flow and logs outside the hot path: ReadScalar is a counted
// ctx.ToHost (a synchronisation on CUDA).
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe {

// A tensor of `shape` on ctx's device (from its allocator) holding `values`
// (row-major): i64 from int64_t values, f64 from doubles.
Tensor TableToDevice(const ExecContext& ctx, const Shape& shape,
                     const std::vector<int64_t>& values);
Tensor TableToDevice(const ExecContext& ctx, const Shape& shape, const std::vector<double>& values);

// The one element of `t` (any dtype) as a double, read through ctx.ToHost.
double ReadScalar(const ExecContext& ctx, const Tensor& t);
// Every element of `t` (any dtype) as doubles, in one ctx.ToHost read.
std::vector<double> ReadValues(const ExecContext& ctx, const Tensor& t);

}  // namespace scalemoe
