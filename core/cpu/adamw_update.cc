// AdamWUpdate (CPU reference): the multi-tensor AdamW step over the rows of
// a segment table, each with its own lr multiplier and weight decay.
#include <cmath>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/multi_tensor.h"

namespace scalemoe::cpu {
namespace {

using namespace multi_tensor;

struct RowScalars {
  double lr, weight_decay, beta1, beta2, eps, bias_correction1, bias_correction2, clip;
};

template <typename T, typename G>
void AdamWRow(T* p, const G* g, T* m, T* v, int64_t n, const RowScalars& s) {
  const T decay = static_cast<T>(1.0 - s.lr * s.weight_decay);
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T one_minus_b1 = static_cast<T>(1.0 - s.beta1);
  const T one_minus_b2 = static_cast<T>(1.0 - s.beta2);
  const T step_size = static_cast<T>(s.lr / s.bias_correction1);
  const T inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(s.bias_correction2));
  const T eps = static_cast<T>(s.eps);
  const T clip = static_cast<T>(s.clip);
  for (int64_t i = 0; i < n; ++i) {
    const T grad = Load<T>(g[i]) * clip;
    p[i] *= decay;
    m[i] = b1 * m[i] + one_minus_b1 * grad;
    v[i] = b2 * v[i] + one_minus_b2 * grad * grad;
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
  }
}

}  // namespace

void AdamWUpdate(const ExecContext&, const Tensor& params, const Tensor& grads,
                 const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& segments,
                 const Tensor& coefficients, const ops::AdamWUpdateOptions& options,
                 const ops::StepControl& control) {
  constexpr const char* kOp = "AdamWUpdate";
  CheckCpuContiguous(params, kOp, "params");
  CheckCpuContiguous(grads, kOp, "grads");
  CheckCpuContiguous(exp_avg, kOp, "exp_avg");
  CheckCpuContiguous(exp_avg_sq, kOp, "exp_avg_sq");
  const int64_t n = params.numel();
  SM_CHECK_MSG(grads.numel() == n && exp_avg.numel() == n && exp_avg_sq.numel() == n &&
                   exp_avg.dtype() == params.dtype() && exp_avg_sq.dtype() == params.dtype(),
               kOp, ": params ", params.DebugString(), ", grads ", grads.DebugString(),
               ", exp_avg ", exp_avg.DebugString(), ", exp_avg_sq ", exp_avg_sq.DebugString(),
               ": one index space; params and state of one dtype");
  const Table table = ReadTable(segments, 2, kOp);
  const double* coeff = ReadCoefficients(coefficients, table.count, 2, kOp);
  for (int64_t s = 0; s < table.count; ++s) {
    CheckRange(table.row(s)[0], table.row(s)[1], n, kOp, "segment");
  }
  const Control c = ReadControl(control, kOp, /*needs_clip=*/true, /*needs_count=*/true);
  if (c.nonfinite || table.count == 0) return;
  SM_CHECK_MSG(c.num_updates >= 1, kOp, ": control.num_updates ", c.num_updates,
               " must count this update (>= 1)");
  RowScalars s{};
  s.beta1 = options.beta1;
  s.beta2 = options.beta2;
  s.eps = options.eps;
  s.bias_correction1 = 1.0 - std::pow(options.beta1, static_cast<double>(c.num_updates));
  s.bias_correction2 = 1.0 - std::pow(options.beta2, static_cast<double>(c.num_updates));
  s.clip = c.clip_factor;
  DispatchReal(params, kOp, [&](auto zero) {
    using T = decltype(zero);
    DispatchSameOrBf16<T>(grads, kOp, "grads", [&](auto gzero) {
      using G = decltype(gzero);
      T* p = params.data<T>();
      const G* g = grads.data<G>();
      T* m = exp_avg.data<T>();
      T* v = exp_avg_sq.data<T>();
      for (int64_t row = 0; row < table.count; ++row) {
        const int64_t begin = table.row(row)[0], end = table.row(row)[1];
        s.lr = options.lr * coeff[2 * row];
        s.weight_decay = coeff[2 * row + 1];
        AdamWRow(p + begin, g + begin, m + begin, v + begin, end - begin, s);
      }
    });
  });
}

}  // namespace scalemoe::cpu
