// SwiGLU activation and its backward (CPU reference, f32/f64; bf16 computed
// in f32 and rounded on store).
#include <cmath>
#include <utility>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"

namespace scalemoe::cpu {
namespace {

void CheckSame(const Tensor& a, const Tensor& b, const char* what) {
  SM_CHECK_MSG(a.numel() == b.numel() && a.dtype() == b.dtype() && a.is_contiguous() &&
                   b.is_contiguous() && b.device() == Device::kCPU,
               "SwiGlu ", what, ": ", a.DebugString(), " vs ", b.DebugString());
}

template <typename T>
void Forward(const T* gp, const T* up, T* h, int64_t n) {
  using A = Acc<T>;
  for (int64_t i = 0; i < n; ++i) {
    const A g = static_cast<A>(gp[i]);
    const A s = A(1) / (A(1) + std::exp(-g));
    h[i] = T(g * s * static_cast<A>(up[i]));
  }
}

template <typename T>
void Backward(const T* gp, const T* up, const T* dhp, T* dg, T* du, int64_t n) {
  using A = Acc<T>;
  for (int64_t i = 0; i < n; ++i) {
    const A g = static_cast<A>(gp[i]);
    const A dh = static_cast<A>(dhp[i]);
    const A s = A(1) / (A(1) + std::exp(-g));
    const A silu = g * s;
    du[i] = T(dh * silu);
    dg[i] = T(dh * static_cast<A>(up[i]) * s * (A(1) + g * (A(1) - s)));
  }
}

}  // namespace

void SwiGlu(const ExecContext&, const Tensor& gate, const Tensor& up, const Tensor& h) {
  CheckSame(gate, up, "up");
  CheckSame(gate, h, "h");
  DispatchFloat(h, [&](auto zero) {
    using T = decltype(zero);
    Forward(gate.data<T>(), up.data<T>(), h.data<T>(), h.numel());
  });
}

void SwiGluBackward(const ExecContext&, const Tensor& gate, const Tensor& up, const Tensor& d_h,
                    const Tensor& d_gate, const Tensor& d_up) {
  CheckSame(gate, up, "up");
  CheckSame(gate, d_h, "d_h");
  CheckSame(gate, d_gate, "d_gate");
  CheckSame(gate, d_up, "d_up");
  DispatchFloat(d_h, [&](auto zero) {
    using T = decltype(zero);
    Backward(gate.data<T>(), up.data<T>(), d_h.data<T>(), d_gate.data<T>(), d_up.data<T>(),
             d_h.numel());
  });
}

namespace {
// gate_up [N, 2F] and an F-wide tensor of the same dtype: N and F.
std::pair<int64_t, int64_t> PackedRows(const Tensor& gate_up, const Tensor& half,
                                       const char* what) {
  SM_CHECK_MSG(gate_up.ndim() == 2 && gate_up.dim(1) % 2 == 0 && gate_up.is_contiguous() &&
                   half.is_contiguous() && half.dtype() == gate_up.dtype() &&
                   half.numel() * 2 == gate_up.numel() && gate_up.device() == Device::kCPU &&
                   half.device() == Device::kCPU,
               "SwiGluPacked ", what, ": ", half.DebugString(), " for gate_up ",
               gate_up.DebugString(), " (want gate_up [N, 2F], F-wide [N, F])");
  return {gate_up.dim(0), gate_up.dim(1) / 2};
}
}  // namespace

// Row by row through the unpacked loops: the same bits as SwiGlu on the halves.
void SwiGluPacked(const ExecContext&, const Tensor& gate_up, const Tensor& h) {
  const auto [n, f] = PackedRows(gate_up, h, "h");
  DispatchFloat(h, [&](auto zero) {
    using T = decltype(zero);
    const T* gu = gate_up.data<T>();
    for (int64_t r = 0; r < n; ++r)
      Forward(gu + r * 2 * f, gu + r * 2 * f + f, h.data<T>() + r * f, f);
  });
}

void SwiGluPackedBackward(const ExecContext&, const Tensor& gate_up, const Tensor& d_h,
                          const Tensor& d_gate_up) {
  const auto [n, f] = PackedRows(gate_up, d_h, "d_h");
  SM_CHECK_MSG(d_gate_up.shape() == gate_up.shape() && d_gate_up.dtype() == gate_up.dtype() &&
                   d_gate_up.is_contiguous() && d_gate_up.device() == Device::kCPU,
               "SwiGluPackedBackward d_gate_up: ", d_gate_up.DebugString(), " for gate_up ",
               gate_up.DebugString());
  DispatchFloat(d_h, [&](auto zero) {
    using T = decltype(zero);
    const T* gu = gate_up.data<T>();
    T* dgu = d_gate_up.data<T>();
    for (int64_t r = 0; r < n; ++r) {
      Backward(gu + r * 2 * f, gu + r * 2 * f + f, d_h.data<T>() + r * f, dgu + r * 2 * f,
               dgu + r * 2 * f + f, f);
    }
  });
}

}  // namespace scalemoe::cpu
