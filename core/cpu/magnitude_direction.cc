// Dot products into a device scalar and the magnitude–direction
// reparameterisation of a scale vector (SCALE_VECTORS.md, "OR"):
// γ = β·α·s with s = 1, or s = √(dim/‖α‖²) in the normalized form; the
// plain form's group ops call the single ones per vector, in group order.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/matrix_group_checks.h"

namespace scalemoe::cpu {
namespace {

template <typename F>
void Floats(const Tensor& t, F&& f) {
  SM_CHECK_MSG(t.is_contiguous(), "needs a contiguous tensor, got ", t.DebugString());
  if (t.dtype() == DType::kF64) {
    f(double{});
  } else {
    SM_CHECK_MSG(t.dtype() == DType::kF32, "expected f32/f64, got ", t.DebugString());
    f(float{});
  }
}

void CheckScalar(const Tensor& t, int64_t n, const char* what) {
  SM_CHECK_MSG(t.dtype() == DType::kF64 && t.numel() == n && t.is_contiguous(), what,
               " must be f64[", n, "], got ", t.DebugString());
}

}  // namespace

void Dot(const ExecContext&, const Tensor& x, const Tensor& y, const Tensor& out) {
  SM_CHECK_MSG(x.numel() == y.numel() && x.dtype() == y.dtype(), "Dot ", x.DebugString(), " . ",
               y.DebugString());
  CheckScalar(out, 1, "Dot output");
  double dot = 0;
  Floats(x, [&](auto zero) {
    using T = decltype(zero);
    const T* a = x.data<T>();
    const T* b = y.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n; ++i) dot += static_cast<double>(a[i]) * b[i];
  });
  out.data<double>()[0] = dot;
}

void MagnitudeDirection(const ExecContext&, const Tensor& alpha, const Tensor& beta,
                        const Tensor& norm_sq, int64_t dim, const Tensor& gamma) {
  SM_CHECK_MSG(gamma.numel() == alpha.numel() && gamma.dtype() == alpha.dtype() &&
                   beta.numel() == 1 && beta.dtype() == alpha.dtype(),
               "MagnitudeDirection α ", alpha.DebugString(), " β ", beta.DebugString(), " γ ",
               gamma.DebugString());
  if (norm_sq.defined()) CheckScalar(norm_sq, 1, "MagnitudeDirection ‖α‖²");
  Floats(alpha, [&](auto zero) {
    using T = decltype(zero);
    const T* a = alpha.data<T>();
    T scale = beta.data<T>()[0];
    if (norm_sq.defined()) {
      scale = static_cast<T>(scale * std::sqrt(static_cast<double>(dim) / norm_sq.data<double>()[0]));
    }
    T* g = gamma.data<T>();
    for (int64_t j = 0, n = alpha.numel(); j < n; ++j) g[j] = scale * a[j];
  });
}

void MagnitudeDirectionBackward(const ExecContext&, const Tensor& alpha, const Tensor& beta,
                                const Tensor& dots, int64_t dim, const Tensor& d_gamma,
                                const Tensor& d_alpha, const Tensor& d_beta) {
  SM_CHECK_MSG(d_gamma.numel() == alpha.numel() && d_alpha.numel() == alpha.numel() &&
                   d_beta.numel() == 1 && d_gamma.dtype() == alpha.dtype(),
               "MagnitudeDirectionBackward shapes");
  CheckScalar(dots, 3, "MagnitudeDirectionBackward dots");
  const double* s = dots.data<double>();  // ‖α‖², <α,dγ> whole, <α,dγ> this slice
  Floats(alpha, [&](auto zero) {
    using T = decltype(zero);
    const T* a = alpha.data<T>();
    const T b = beta.data<T>()[0];
    const T* dg = d_gamma.data<T>();
    T* da = d_alpha.data<T>();
    const int64_t n = alpha.numel();
    if (dim <= 0) {  // γ = β·α: dα = β·dγ, dβ = <α, dγ>
      for (int64_t j = 0; j < n; ++j) da[j] += b * dg[j];
      d_beta.data<T>()[0] += static_cast<T>(s[2]);
      return;
    }
    // γ = β·s·α with s = √d/‖α‖: dβ = s<α,dγ>, dα = β·s·(dγ − α<α,dγ>/‖α‖²),
    // the inner products over the whole vector except dβ's, a slice share.
    const double scale = std::sqrt(static_cast<double>(dim) / s[0]);
    d_beta.data<T>()[0] += static_cast<T>(scale * s[2]);
    for (int64_t j = 0; j < n; ++j) {
      da[j] += static_cast<T>(b * scale * (dg[j] - a[j] * s[1] / s[0]));
    }
  });
}

void MagnitudeDirectionGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                             const MatrixGroup& beta, const MatrixGroup& gamma) {
  ops::CheckMagnitudeDirectionGroup(alpha, beta, gamma, Device::kCPU);
  for (int64_t g = 0; g < alpha.size(); ++g) {
    MagnitudeDirection(ctx, alpha.matrices[g], beta.matrices[g], Tensor(), 0, gamma.matrices[g]);
  }
}

void MagnitudeDirectionBackwardGroup(const ExecContext& ctx, const MatrixGroup& alpha,
                                     const MatrixGroup& beta, const MatrixGroup& d_gamma,
                                     const MatrixGroup& d_alpha, const MatrixGroup& d_beta) {
  ops::CheckMagnitudeDirectionBackwardGroup(alpha, beta, d_gamma, d_alpha, d_beta, Device::kCPU);
  const int64_t n = alpha.size();
  // {‖α‖², <α,dγ> whole, <α,dγ>}: the plain form reads only the last.
  Tensor dots = Tensor::Zeros({3}, DType::kF64);
  for (int64_t g = 0; g < n; ++g) {
    Dot(ctx, alpha.matrices[g], d_gamma.matrices[g], dots.Narrow(0, 2, 1));
    MagnitudeDirectionBackward(ctx, alpha.matrices[g], beta.matrices[g], dots, 0,
                               d_gamma.matrices[g], d_alpha.matrices[g], d_beta.matrices[g]);
  }
}

}  // namespace scalemoe::cpu
