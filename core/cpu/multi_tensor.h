// Helpers of the CPU multi-tensor optimizer ops (core/ops.h, "optimizer
// ops"): segment tables, the step control and element types. f32 and f64
// compute in themselves; bf16 is loaded into f32 and rounded (to nearest
// even) on store. Only core/cpu includes this.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/ops.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe::cpu::multi_tensor {

inline void CheckCpuContiguous(const Tensor& t, const char* op, const char* what) {
  SM_CHECK_MSG(t.defined() && t.device() == Device::kCPU && t.is_contiguous(), op, " ", what,
               ": needs a contiguous CPU tensor, got ",
               t.defined() ? t.DebugString() : std::string("an undefined tensor"));
}

// The rows of a segment table i64 [S, width], checked.
struct Table {
  const int64_t* rows = nullptr;
  int64_t count = 0;
  int width = 0;
  const int64_t* row(int64_t s) const { return rows + s * width; }
};

inline Table ReadTable(const Tensor& segments, int width, const char* op) {
  CheckCpuContiguous(segments, op, "segments");
  SM_CHECK_MSG(segments.dtype() == DType::kI64 && segments.ndim() == 2 && segments.dim(1) == width,
               op, ": segments must be i64 [S, ", width, "], got ", segments.DebugString());
  return {segments.data<int64_t>(), segments.dim(0), width};
}

// Checks that [begin, end) lies inside a buffer of n elements.
inline void CheckRange(int64_t begin, int64_t end, int64_t n, const char* op, const char* what) {
  SM_CHECK_MSG(0 <= begin && begin <= end && end <= n, op, ": ", what, " range [", begin, ", ", end,
               ") outside [0, ", n, ")");
}

// Per-row coefficients f64 [S, width].
inline const double* ReadCoefficients(const Tensor& c, int64_t rows, int width, const char* op) {
  CheckCpuContiguous(c, op, "coefficients");
  SM_CHECK_MSG(c.dtype() == DType::kF64 && c.ndim() == 2 && c.dim(0) == rows && c.dim(1) == width,
               op, ": coefficients must be f64 [", rows, ", ", width, "], got ", c.DebugString());
  return c.data<double>();
}

// The step control's values, read on the host (a CPU op runs on the host).
struct Control {
  double clip_factor = 1.0;
  bool nonfinite = false;
  int64_t num_updates = 0;
};

inline Control ReadControl(const ops::StepControl& c, const char* op, bool needs_clip,
                           bool needs_count) {
  Control out;
  CheckCpuContiguous(c.nonfinite, op, "control.nonfinite");
  SM_CHECK_MSG(c.nonfinite.dtype() == DType::kI32 && c.nonfinite.numel() == 1, op,
               ": control.nonfinite must be i32 [1], got ", c.nonfinite.DebugString());
  out.nonfinite = c.nonfinite.data<int32_t>()[0] != 0;
  if (needs_clip) {
    CheckCpuContiguous(c.clip_factor, op, "control.clip_factor");
    SM_CHECK_MSG(c.clip_factor.dtype() == DType::kF64 && c.clip_factor.numel() == 1, op,
                 ": control.clip_factor must be f64 [1], got ", c.clip_factor.DebugString());
    out.clip_factor = c.clip_factor.data<double>()[0];
  }
  if (needs_count) {
    CheckCpuContiguous(c.num_updates, op, "control.num_updates");
    SM_CHECK_MSG(c.num_updates.dtype() == DType::kI64 && c.num_updates.numel() == 1, op,
                 ": control.num_updates must be i64 [1], got ", c.num_updates.DebugString());
    out.num_updates = c.num_updates.data<int64_t>()[0];
  }
  return out;
}

// Load an element of storage type S as compute type T; store T as D.
template <typename T, typename S>
inline T Load(S v) {
  if constexpr (std::is_same_v<S, bf16>) {
    return static_cast<T>(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}
template <typename D, typename T>
inline D Store(T v) {
  if constexpr (std::is_same_v<D, bf16>) {
    return bf16(static_cast<float>(v));
  } else {
    return static_cast<D>(v);
  }
}

// Calls f(T{}) for the f32/f64 compute dtype of `t`.
template <typename F>
void DispatchReal(const Tensor& t, const char* op, F&& f) {
  switch (t.dtype()) {
    case DType::kF32:
      f(float{});
      return;
    case DType::kF64:
      f(double{});
      return;
    default:
      SM_CHECK_MSG(false, op, ": expected f32 or f64, got ", t.DebugString());
  }
}

// Calls f(S{}) for the storage type of a float tensor (f32, f64, bf16).
template <typename F>
void DispatchStorage(const Tensor& t, const char* op, F&& f) {
  switch (t.dtype()) {
    case DType::kF32:
      f(float{});
      return;
    case DType::kF64:
      f(double{});
      return;
    case DType::kBF16:
      f(bf16{});
      return;
    default:
      SM_CHECK_MSG(false, op, ": expected f32, f64 or bf16, got ", t.DebugString());
  }
}

// Calls f(G{}) for a gradient-like tensor: T itself or bf16.
template <typename T, typename F>
void DispatchSameOrBf16(const Tensor& t, const char* op, const char* what, F&& f) {
  if (t.dtype() == DTypeOf<T>::value) {
    f(T{});
  } else if (t.dtype() == DType::kBF16) {
    f(bf16{});
  } else {
    SM_CHECK_MSG(false, op, ": ", what, " must be ", DTypeName(DTypeOf<T>::value), " or bf16, got ",
                 t.DebugString());
  }
}

}  // namespace scalemoe::cpu::multi_tensor
