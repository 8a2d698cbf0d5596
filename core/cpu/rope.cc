// Rotary position embedding (rotate-half) and its backward (CPU, f32/f64;
// bf16 computed in f32 and rounded on store, as the GPU does).
#include <cmath>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"

namespace scalemoe::cpu {
namespace {

// Rotates every head vector by +angle (sign 1) or −angle (sign −1); the
// angle in f64, its cos/sin rounded to the compute type A.
template <typename T>
void Rotate(const T* x, T* out, int64_t b, int64_t t, int64_t h, int64_t d, double theta,
            double sign) {
  using A = Acc<T>;
  const int64_t half = d / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
  }
  std::vector<A> cos_t(half), sin_t(half);
  for (int64_t pos = 0; pos < t; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos) * inv_freq[i];
      cos_t[i] = static_cast<A>(std::cos(angle));
      sin_t[i] = static_cast<A>(sign * std::sin(angle));
    }
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t hi = 0; hi < h; ++hi) {
        const int64_t base = ((bi * t + pos) * h + hi) * d;
        for (int64_t i = 0; i < half; ++i) {
          const A x1 = static_cast<A>(x[base + i]), x2 = static_cast<A>(x[base + i + half]);
          out[base + i] = T(x1 * cos_t[i] - x2 * sin_t[i]);
          out[base + i + half] = T(x2 * cos_t[i] + x1 * sin_t[i]);
        }
      }
    }
  }
}

void Run(const Tensor& x, double theta, const Tensor& out, double sign) {
  SM_CHECK_MSG(x.ndim() == 4 && x.is_contiguous() && x.device() == Device::kCPU,
               "Rope x must be [B, T, H, D], got ", x.DebugString());
  SM_CHECK_MSG(x.dim(3) % 2 == 0, "Rope head dim must be even, got ", x.DebugString());
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype() && out.is_contiguous(),
               "Rope out ", out.DebugString());
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Rotate(x.data<T>(), out.data<T>(), x.dim(0), x.dim(1), x.dim(2), x.dim(3), theta, sign);
  });
}

}  // namespace

void Rope(const ExecContext&, const Tensor& x, double theta, const Tensor& out) {
  Run(x, theta, out, 1.0);
}

void RopeBackward(const ExecContext&, const Tensor& d_out, double theta, const Tensor& d_x) {
  Run(d_out, theta, d_x, -1.0);
}

}  // namespace scalemoe::cpu
