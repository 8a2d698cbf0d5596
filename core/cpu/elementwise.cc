// Basic elementwise ops on CPU tensors (f32/f64, and bf16 computed in f32 and
// rounded on store; Copy converts any dtype).
#include <cstring>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"

namespace scalemoe::cpu {
namespace {

void CheckCpuContiguous(const Tensor& t) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.is_contiguous(),
               "CPU op needs a contiguous CPU tensor, got ", t.DebugString());
}

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kF64 || d == DType::kBF16; }

// y = x converted element by element; f64 -> bf16 goes through f32, as
// Tensor::CopyFrom (and the CUDA Copy) do.
template <typename From, typename To>
void Convert(const From* x, To* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = To(static_cast<Acc<To>>(static_cast<Acc<From>>(x[i])));
}

}  // namespace

void Copy(const ExecContext&, const Tensor& x, const Tensor& y) {
  const bool fast = x.device() == Device::kCPU && y.device() == Device::kCPU &&
                    x.dtype() != y.dtype() && IsFloat(x.dtype()) && IsFloat(y.dtype()) &&
                    x.is_contiguous() && y.is_contiguous() && x.numel() == y.numel();
  if (!fast) {  // same dtype (memmove), strided views, integers
    Tensor out = y;
    out.CopyFrom(x);
    return;
  }
  DispatchFloat(x, [&](auto from) {
    DispatchFloat(y, [&](auto to) {
      Convert(x.data<decltype(from)>(), y.data<decltype(to)>(), x.numel());
    });
  });
}

void Axpy(const ExecContext&, double alpha, const Tensor& x, const Tensor& y) {
  CheckCpuContiguous(x);
  CheckCpuContiguous(y);
  SM_CHECK_MSG(x.numel() == y.numel() && x.dtype() == y.dtype(), "Axpy ", x.DebugString(),
               " into ", y.DebugString());
  DispatchFloat(y, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    const T* xs = x.data<T>();
    T* ys = y.data<T>();
    const A a = static_cast<A>(alpha);
    for (int64_t i = 0, n = y.numel(); i < n; ++i) {
      ys[i] = T(static_cast<A>(ys[i]) + a * static_cast<A>(xs[i]));
    }
  });
}

void Scale(const ExecContext&, double alpha, const Tensor& x) {
  CheckCpuContiguous(x);
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    T* xs = x.data<T>();
    const A a = static_cast<A>(alpha);
    if (alpha == 0.0) {  // also clears NaN/Inf, as BLAS beta=0 does
      std::memset(static_cast<void*>(xs), 0, x.nbytes());
    } else {
      for (int64_t i = 0, n = x.numel(); i < n; ++i) xs[i] = T(static_cast<A>(xs[i]) * a);
    }
  });
}

void Zero(const ExecContext&, const Tensor& x) {
  CheckCpuContiguous(x);
  std::memset(x.raw_data(), 0, x.nbytes());
}

void Sum(const ExecContext&, const Tensor& x, const Tensor& out) {
  CheckCpuContiguous(x);
  CheckCpuContiguous(out);
  SM_CHECK_MSG(out.numel() == 1 && (out.dtype() == DType::kF32 || out.dtype() == DType::kF64),
               "Sum writes one f32/f64 element, got ", out.DebugString());
  double s = 0;
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    const T* xs = x.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) s += static_cast<double>(static_cast<Acc<T>>(xs[i]));
  });
  if (out.dtype() == DType::kF64) {
    out.data<double>()[0] = s;
  } else {
    out.data<float>()[0] = static_cast<float>(s);
  }
}

}  // namespace scalemoe::cpu
