// Muon's elementwise ops (CPU reference): MuonMomentum (momentum and
// Nesterov into the packed update), FrobeniusNormalize (Newton–Schulz's
// first step, per matrix) and MuonApply (decay and the orthogonalised step).
// The Newton–Schulz products themselves are ops::Gemm (optim/muon.cc).
#include <cmath>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/multi_tensor.h"

namespace scalemoe::cpu {
namespace {

using namespace multi_tensor;

void CheckRows(const Table& table, int64_t n, int64_t packed_n, const char* op) {
  for (int64_t s = 0; s < table.count; ++s) {
    const int64_t* r = table.row(s);
    CheckRange(r[0], r[1], n, op, "segment");
    CheckRange(r[2], r[2] + (r[1] - r[0]), packed_n, op, "packed");
  }
}

}  // namespace

void MuonMomentum(const ExecContext&, const Tensor& grads, const Tensor& momentum,
                  const Tensor& update, const Tensor& segments,
                  const ops::MuonMomentumOptions& options, const ops::StepControl& control) {
  constexpr const char* kOp = "MuonMomentum";
  CheckCpuContiguous(grads, kOp, "grads");
  CheckCpuContiguous(momentum, kOp, "momentum");
  CheckCpuContiguous(update, kOp, "update");
  SM_CHECK_MSG(grads.numel() == momentum.numel() && update.dtype() == momentum.dtype(), kOp,
               ": grads ", grads.DebugString(), ", momentum ", momentum.DebugString(), ", update ",
               update.DebugString());
  const Table table = ReadTable(segments, 3, kOp);
  CheckRows(table, momentum.numel(), update.numel(), kOp);
  const Control c = ReadControl(control, kOp, /*needs_clip=*/true, /*needs_count=*/false);
  if (c.nonfinite) return;
  DispatchReal(momentum, kOp, [&](auto zero) {
    using T = decltype(zero);
    DispatchSameOrBf16<T>(grads, kOp, "grads", [&](auto gzero) {
      using G = decltype(gzero);
      const T mu = static_cast<T>(options.momentum);
      const T clip = static_cast<T>(c.clip_factor);
      for (int64_t row = 0; row < table.count; ++row) {
        const int64_t* r = table.row(row);
        const G* g = grads.data<G>() + r[0];
        T* b = momentum.data<T>() + r[0];
        T* u = update.data<T>() + r[2];
        for (int64_t i = 0, n = r[1] - r[0]; i < n; ++i) {
          const T grad = Load<T>(g[i]) * clip;
          b[i] = b[i] * mu + grad;
          u[i] = options.nesterov ? grad + mu * b[i] : b[i];
        }
      }
    });
  });
}

void FrobeniusNormalize(const ExecContext&, const Tensor& x, double eps) {
  constexpr const char* kOp = "FrobeniusNormalize";
  CheckCpuContiguous(x, kOp, "x");
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, kOp, ": x must be [R, C] or [B, R, C], got ",
               x.DebugString());
  const int64_t batch = x.ndim() == 3 ? x.dim(0) : 1;
  const int64_t size = x.dim(-2) * x.dim(-1);
  DispatchStorage(x, kOp, [&](auto zero) {
    using S = decltype(zero);
    using A = std::conditional_t<std::is_same_v<S, double>, double, float>;
    for (int64_t b = 0; b < batch; ++b) {
      S* m = x.data<S>() + b * size;
      double sum = 0.0;
      for (int64_t i = 0; i < size; ++i) {
        const double v = Load<double>(m[i]);
        sum += v * v;
      }
      const A scale = static_cast<A>(1.0 / (std::sqrt(sum) + eps));
      for (int64_t i = 0; i < size; ++i) m[i] = Store<S>(Load<A>(m[i]) * scale);
    }
  });
}

void MuonApply(const ExecContext&, const Tensor& params, const Tensor& ortho,
               const Tensor& segments, const Tensor& coefficients, double lr,
               const ops::StepControl& control) {
  constexpr const char* kOp = "MuonApply";
  CheckCpuContiguous(params, kOp, "params");
  CheckCpuContiguous(ortho, kOp, "ortho");
  const Table table = ReadTable(segments, 3, kOp);
  const double* coeff = ReadCoefficients(coefficients, table.count, 3, kOp);
  CheckRows(table, params.numel(), ortho.numel(), kOp);
  const Control c = ReadControl(control, kOp, /*needs_clip=*/false, /*needs_count=*/false);
  if (c.nonfinite) return;
  DispatchReal(params, kOp, [&](auto zero) {
    using T = decltype(zero);
    DispatchSameOrBf16<T>(ortho, kOp, "ortho", [&](auto ozero) {
      using O = decltype(ozero);
      for (int64_t row = 0; row < table.count; ++row) {
        const int64_t* r = table.row(row);
        const double* k = coeff + 3 * row;
        const double lr_s = lr * k[0];
        const T decay = static_cast<T>(1.0 - lr_s * k[1]);
        const T step = static_cast<T>(-lr_s * k[2]);
        T* p = params.data<T>() + r[0];
        const O* o = ortho.data<O>() + r[2];
        for (int64_t i = 0, n = r[1] - r[0]; i < n; ++i) {
          p[i] *= decay;
          p[i] += step * Load<T>(o[i]);
        }
      }
    });
  });
}

}  // namespace scalemoe::cpu
