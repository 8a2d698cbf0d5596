// Finite-difference gradient checks for the f64 CPU reference (header-only,
// tests only). The error reported is tensor-wise relative:
//   ‖analytic − numeric‖₂ / max(‖analytic‖₂, ‖numeric‖₂, 1e-30)
// and the standard tolerance for float64 central differences is 1e-6.
#pragma once

#include <cmath>
#include <functional>
#include <string>

#include "core/philox.h"
#include "core/tensor.h"

namespace scalemoe::testing {

constexpr double kGradTolerance = 1e-6;

// Central differences of `loss` with respect to every element of `x`
// (perturbed in place, then restored). `x` must be a contiguous f64 CPU tensor.
// d loss / d *x by central differences; *x is restored.
inline double CentralDifference(const std::function<double()>& loss, double* x,
                                double h = 1e-5) {
  const double saved = *x;
  *x = saved + h;
  const double up = loss();
  *x = saved - h;
  const double down = loss();
  *x = saved;
  return (up - down) / (2 * h);
}

inline Tensor NumericGrad(const std::function<double()>& loss, const Tensor& x,
                          double h = 1e-5) {
  Tensor g = Tensor::Empty(x.shape(), DType::kF64);
  double* xs = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    g.data<double>()[i] = CentralDifference(loss, xs + i, h);
  }
  return g;
}

inline double RelativeError(const Tensor& analytic, const Tensor& numeric) {
  double diff = 0, na = 0, nn = 0;
  for (int64_t i = 0; i < analytic.numel(); ++i) {
    const double a = analytic.At(i), n = numeric.At(i);
    diff += (a - n) * (a - n);
    na += a * a;
    nn += n * n;
  }
  return std::sqrt(diff) / std::max({std::sqrt(na), std::sqrt(nn), 1e-30});
}

// Relative error between `analytic` and the numeric gradient of `loss` wrt `x`.
inline double GradError(const std::function<double()>& loss, const Tensor& x,
                        const Tensor& analytic, double h = 1e-5) {
  return RelativeError(analytic, NumericGrad(loss, x, h));
}

// Deterministic f64 (or f32) tensor with N(0, scale²) entries, for inputs.
inline Tensor RandomTensor(const Shape& shape, uint64_t stream, double scale = 1.0,
                           DType dtype = DType::kF64, double offset = 0.0) {
  Tensor t = Tensor::Empty(shape, DType::kF64);
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data<double>()[i] = offset + scale * PhiloxNormal(2024, stream, i);
  }
  if (dtype == DType::kF64) return t;
  Tensor out = Tensor::Empty(shape, dtype);
  out.CopyFrom(t);
  return out;
}

// Σ w ⊙ y for a fixed random weight w: a scalar loss whose gradient wrt y is w.
inline double WeightedSum(const Tensor& y, const Tensor& w) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += y.At(i) * w.At(i);
  return s;
}

}  // namespace scalemoe::testing
