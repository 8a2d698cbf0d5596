// Rotary position embedding (rotate-half) and its backward (CPU, f32/f64;
// bf16 computed in f32 and rounded on store, as the GPU does). With a
// table (RopeTable's) the rotation reads cos and sin from it; without one it
// fills its own with the same FillTable, so both give the same bits.
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"
#include "core/head_rows.h"
#include "core/scaled_rms_normalize_checks.h"

namespace scalemoe::cpu {
namespace {

// cos and sin of pos · theta^(−2i/D) for pos < t, i < D/2: the angle in
// f64, each value rounded once to A. cos_t, sin_t: [t, D/2].
template <typename A>
void FillTable(double theta, int64_t t, int64_t d, A* cos_t, A* sin_t) {
  const int64_t half = d / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
  }
  for (int64_t pos = 0; pos < t; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(pos) * inv_freq[i];
      cos_t[pos * half + i] = static_cast<A>(std::cos(angle));
      sin_t[pos * half + i] = static_cast<A>(std::sin(angle));
    }
  }
}

// Rotates every head vector by +angle (sign 1) or −angle (sign −1), the
// table's rows of D/2 per position (−sin rounded is −(sin rounded)). x and
// out [B, T, H, D] with their tokens (b, t) x_stride and out_stride
// elements apart (core/head_rows.h).
template <typename T>
void Rotate(const T* x, int64_t x_stride, T* out, int64_t out_stride, int64_t b, int64_t t,
            int64_t h, int64_t d, const Acc<T>* cos_t, const Acc<T>* sin_t, double sign) {
  using A = Acc<T>;
  const int64_t half = d / 2;
  for (int64_t pos = 0; pos < t; ++pos) {
    const A* c = cos_t + pos * half;
    const A* sn = sin_t + pos * half;
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t hi = 0; hi < h; ++hi) {
        const T* xv = x + (bi * t + pos) * x_stride + hi * d;
        T* ov = out + (bi * t + pos) * out_stride + hi * d;
        for (int64_t i = 0; i < half; ++i) {
          const A s = sign > 0 ? sn[i] : -sn[i];
          const A x1 = static_cast<A>(xv[i]), x2 = static_cast<A>(xv[i + half]);
          ov[i] = T(x1 * c[i] - x2 * s);
          ov[i + half] = T(x2 * c[i] + x1 * s);
        }
      }
    }
  }
}

// The token strides of x and out (either may be token-strided).
struct RopeStrides {
  int64_t x, out;
};

RopeStrides CheckRopeArgs(const char* op, const Tensor& x, const Tensor& out) {
  SM_CHECK_MSG(x.ndim() == 4 && x.device() == Device::kCPU, op, " x must be [B, T, H, D], got ",
               x.DebugString());
  SM_CHECK_MSG(x.dim(3) % 2 == 0, op, " head dim must be even, got ", x.DebugString());
  SM_CHECK_MSG(out.shape() == x.shape() && out.dtype() == x.dtype() && out.device() == Device::kCPU,
               op, " out ", out.DebugString(), " for x ", x.DebugString());
  return {CheckHeadRows(x, op, "x").stride, CheckHeadRows(out, op, "out").stride};
}

// out = x rotated by the cos and sin of table [2, T' >= T, D/2] (RopeTable's
// rows, in Acc of x's dtype).
void RotateByTable(const char* op, const Tensor& x, const Tensor& table, double sign,
                   const Tensor& out) {
  const RopeStrides strides = CheckRopeArgs(op, x, out);
  ops::CheckRopeTableArgs(op, x, table);
  SM_CHECK_MSG(table.is_contiguous() && table.device() == Device::kCPU, op,
               " rope_table must be a contiguous CPU tensor, got ", table.DebugString());
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    const A* cos_t = table.data<A>();
    Rotate(x.data<T>(), strides.x, out.data<T>(), strides.out, x.dim(0), x.dim(1), x.dim(2),
           x.dim(3), cos_t, cos_t + table.dim(1) * table.dim(2), sign);
  });
}

void Run(const char* op, const Tensor& x, double theta, const Tensor& table, const Tensor& out,
         double sign) {
  if (table.defined()) {
    RotateByTable(op, x, table, sign, out);
    return;
  }
  const RopeStrides strides = CheckRopeArgs(op, x, out);
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    using A = Acc<T>;
    const int64_t t = x.dim(1), d = x.dim(3);
    std::vector<A> cos_t(t * (d / 2)), sin_t(t * (d / 2));
    FillTable(theta, t, d, cos_t.data(), sin_t.data());
    Rotate(x.data<T>(), strides.x, out.data<T>(), strides.out, x.dim(0), t, x.dim(2), d,
           cos_t.data(), sin_t.data(), sign);
  });
}

}  // namespace

void Rope(const ExecContext&, const Tensor& x, double theta, const Tensor& out,
          const Tensor& table) {
  Run("Rope", x, theta, table, out, 1.0);
}

void RopeBackward(const ExecContext&, const Tensor& d_out, double theta, const Tensor& d_x,
                  const Tensor& table) {
  Run("RopeBackward", d_out, theta, table, d_x, -1.0);
}

void RopeTable(const ExecContext&, double theta, const Tensor& table) {
  SM_CHECK_MSG(table.ndim() == 3 && table.dim(0) == 2 && table.is_contiguous() &&
                   table.device() == Device::kCPU &&
                   (table.dtype() == DType::kF32 || table.dtype() == DType::kF64),
               "RopeTable table must be a contiguous f32 or f64 CPU [2, T, D/2], got ",
               table.DebugString());
  const int64_t t = table.dim(1), d = 2 * table.dim(2);
  DispatchFloat(table, [&](auto zero) {
    using A = decltype(zero);
    if constexpr (!std::is_same_v<A, bf16>) {
      FillTable(theta, t, d, table.data<A>(), table.data<A>() + t * (d / 2));
    }
  });
}

}  // namespace scalemoe::cpu
