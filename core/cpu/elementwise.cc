// Basic elementwise ops on CPU tensors (f32/f64; Copy converts any dtype).
#include <cstring>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

template <typename F>
void DispatchFloat(const Tensor& t, F&& f) {
  if (t.dtype() == DType::kF32) {
    f(float{});
  } else if (t.dtype() == DType::kF64) {
    f(double{});
  } else {
    SM_CHECK_MSG(false, "expected an f32/f64 tensor, got ", t.DebugString());
  }
}

void CheckCpuContiguous(const Tensor& t) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.is_contiguous(),
               "CPU op needs a contiguous CPU tensor, got ", t.DebugString());
}

}  // namespace

void Copy(const ExecContext&, const Tensor& x, const Tensor& y) {
  Tensor out = y;
  out.CopyFrom(x);
}

void Axpy(const ExecContext&, double alpha, const Tensor& x, const Tensor& y) {
  CheckCpuContiguous(x);
  CheckCpuContiguous(y);
  SM_CHECK_MSG(x.numel() == y.numel() && x.dtype() == y.dtype(), "Axpy ", x.DebugString(),
               " into ", y.DebugString());
  DispatchFloat(y, [&](auto zero) {
    using T = decltype(zero);
    const T* xs = x.data<T>();
    T* ys = y.data<T>();
    const T a = static_cast<T>(alpha);
    for (int64_t i = 0, n = y.numel(); i < n; ++i) ys[i] += a * xs[i];
  });
}

void Scale(const ExecContext&, double alpha, const Tensor& x) {
  CheckCpuContiguous(x);
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    T* xs = x.data<T>();
    const T a = static_cast<T>(alpha);
    if (alpha == 0.0) {  // also clears NaN/Inf, as BLAS beta=0 does
      for (int64_t i = 0, n = x.numel(); i < n; ++i) xs[i] = T(0);
    } else {
      for (int64_t i = 0, n = x.numel(); i < n; ++i) xs[i] *= a;
    }
  });
}

void Zero(const ExecContext&, const Tensor& x) {
  CheckCpuContiguous(x);
  std::memset(x.raw_data(), 0, x.nbytes());
}

double Sum(const ExecContext&, const Tensor& x) {
  CheckCpuContiguous(x);
  double s = 0;
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    const T* xs = x.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) s += xs[i];
  });
  return s;
}

}  // namespace scalemoe::cpu
