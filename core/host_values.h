// Small values between the host and a context's device — the only way
// code above core/ moves elements either way.
//
// Down: multi-tensor ops (core/ops.h) read segment tables and per-segment
// coefficients from tensors on the context's device; they are built on the
// host once, at set-up, and uploaded here (ordered on the stream).
//
// Up: the documented device→host reads (the MoE layer's per-expert counts,
// once per forward; losses, norms, flags and statistics when the trainer
// logs, evaluates or saves). Each call is ONE ctx.ToHost (counted in
// ctx.counters().host_reads; on CUDA it waits for the stream); callers name
// each use in their header, so that a step's reads can be listed and held
// to a count by tests.
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

// The one element of `t` (any dtype) as a double.
double ReadScalar(const ExecContext& ctx, const Tensor& t);
// The elements of an i32 or i64 tensor (contiguous), as int64.
std::vector<int64_t> ReadHostInts(const ExecContext& ctx, const Tensor& t);
// The elements of an f32, f64 or bf16 tensor (contiguous), as double.
std::vector<double> ReadHostDoubles(const ExecContext& ctx, const Tensor& t);

}  // namespace scalemoe
