// One row of the CPU RMSNorm arithmetic, shared by the ops that must give
// its bits: RmsNormalize and its fused forms (core/cpu/rms_normalize.cc) and
// ScaledRmsNormalize (core/cpu/scaled_rms_normalize.cc). Only core/cpu
// includes this.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/cpu/float_types.h"

namespace scalemoe::cpu {

// 1 / sqrt(mean(x²) + eps) of one row, the squares of the values widened to
// Acc<T> summed in f64 (the f32 path keeps its precision), rounded to
// Acc<T>.
template <typename T>
Acc<T> RowRstd(const T* x, int64_t d, double eps) {
  using A = Acc<T>;
  double sq = 0;
  for (int64_t j = 0; j < d; ++j) {
    const double v = static_cast<A>(x[j]);
    sq += v * v;
  }
  return static_cast<A>(1.0 / std::sqrt(sq / static_cast<double>(d) + eps));
}

// d_x = rstd · (d_n − n · mean(d_n ⊙ n)) of one row, computed in Acc<T> (the
// dot in f64) and rounded to O on store.
template <typename T, typename O>
void RowBackward(const T* n, Acc<T> rstd, const T* dn, O* dx, int64_t d) {
  using A = Acc<T>;
  double dot = 0;
  for (int64_t j = 0; j < d; ++j) {
    dot += static_cast<double>(static_cast<A>(dn[j])) * static_cast<A>(n[j]);
  }
  const A mean = static_cast<A>(dot / static_cast<double>(d));
  for (int64_t j = 0; j < d; ++j) {
    dx[j] = O(rstd * (static_cast<A>(dn[j]) - static_cast<A>(n[j]) * mean));
  }
}

}  // namespace scalemoe::cpu
