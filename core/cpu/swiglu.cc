// SwiGLU activation and its backward (CPU reference, f32/f64).
#include <cmath>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void CheckSame(const Tensor& a, const Tensor& b, const char* what) {
  SM_CHECK_MSG(a.numel() == b.numel() && a.dtype() == b.dtype() && a.is_contiguous() &&
                   b.is_contiguous() && b.device() == Device::kCPU,
               "SwiGlu ", what, ": ", a.DebugString(), " vs ", b.DebugString());
}

template <typename T>
void Forward(const T* g, const T* u, T* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    h[i] = g[i] * s * u[i];
  }
}

template <typename T>
void Backward(const T* g, const T* u, const T* dh, T* dg, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T s = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * s;
    du[i] = dh[i] * silu;
    dg[i] = dh[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
  }
}

}  // namespace

void SwiGlu(const ExecContext&, const Tensor& gate, const Tensor& up, const Tensor& h) {
  CheckSame(gate, up, "up");
  CheckSame(gate, h, "h");
  if (h.dtype() == DType::kF64) {
    Forward(gate.data<double>(), up.data<double>(), h.data<double>(), h.numel());
  } else {
    Forward(gate.data<float>(), up.data<float>(), h.data<float>(), h.numel());
  }
}

void SwiGluBackward(const ExecContext&, const Tensor& gate, const Tensor& up, const Tensor& d_h,
                    const Tensor& d_gate, const Tensor& d_up) {
  CheckSame(gate, up, "up");
  CheckSame(gate, d_h, "d_h");
  CheckSame(gate, d_gate, "d_gate");
  CheckSame(gate, d_up, "d_up");
  if (d_h.dtype() == DType::kF64) {
    Backward(gate.data<double>(), up.data<double>(), d_h.data<double>(), d_gate.data<double>(),
             d_up.data<double>(), d_h.numel());
  } else {
    Backward(gate.data<float>(), up.data<float>(), d_h.data<float>(), d_gate.data<float>(),
             d_up.data<float>(), d_h.numel());
  }
}

}  // namespace scalemoe::cpu
