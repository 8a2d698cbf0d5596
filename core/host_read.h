// Host values of small device tensors, read through the context: the
// documented device→host reads (the MoE layer's per-expert counts, once per
// forward; statistics, flags and losses when they are logged or checked).
// Each call is ONE ctx.ToHost (counted in ctx.counters().host_reads; on
// CUDA it waits for the stream), then a copy of the elements out of the host
// copy. Callers name each use in their header, so that the reads of a step
// can be listed and held to a count by tests.
#pragma once

#include <cstdint>
#include <vector>

#include "core/context.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

// The elements of an i32 or i64 tensor (contiguous), as int64.
inline std::vector<int64_t> ReadHostInts(const ExecContext& ctx, const Tensor& t) {
  SM_CHECK_MSG(t.is_contiguous() && (t.dtype() == DType::kI32 || t.dtype() == DType::kI64),
               "ReadHostInts: a contiguous i32/i64 tensor, got ", t.DebugString());
  const Tensor host = ctx.ToHost(t);
  std::vector<int64_t> out(static_cast<size_t>(host.numel()));
  if (host.dtype() == DType::kI64) {
    const int64_t* v = host.data<int64_t>();
    out.assign(v, v + host.numel());
  } else {
    const int32_t* v = host.data<int32_t>();
    out.assign(v, v + host.numel());
  }
  return out;
}

// The elements of an f32, f64 or bf16 tensor (contiguous), as double.
inline std::vector<double> ReadHostDoubles(const ExecContext& ctx, const Tensor& t) {
  SM_CHECK_MSG(t.is_contiguous() && (t.dtype() == DType::kF32 || t.dtype() == DType::kF64 ||
                                     t.dtype() == DType::kBF16),
               "ReadHostDoubles: a contiguous f32/f64/bf16 tensor, got ", t.DebugString());
  const Tensor host = ctx.ToHost(t);
  std::vector<double> out(static_cast<size_t>(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) {
    switch (host.dtype()) {
      case DType::kF32: out[i] = host.data<float>()[i]; break;
      case DType::kF64: out[i] = host.data<double>()[i]; break;
      default: out[i] = static_cast<float>(host.data<bf16>()[i]); break;
    }
  }
  return out;
}

}  // namespace scalemoe
