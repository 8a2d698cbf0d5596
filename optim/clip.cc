#include "optim/clip.h"

#include <cmath>

#include "core/ops.h"

namespace scalemoe {

double SumOfSquares(const Tensor& x) {
  SM_CHECK_MSG(x.device() == Device::kCPU && x.is_contiguous(),
               "SumOfSquares needs a contiguous CPU tensor, got ", x.DebugString());
  double sum = 0.0;
  const int64_t n = x.numel();
  if (x.dtype() == DType::kF32) {
    const float* p = x.data<float>();
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(p[i]) * p[i];
  } else {
    SM_CHECK_MSG(x.dtype() == DType::kF64, "SumOfSquares: f32/f64 only, got ", x.DebugString());
    const double* p = x.data<double>();
    for (int64_t i = 0; i < n; ++i) sum += p[i] * p[i];
  }
  return sum;
}

double GlobalGradNorm(const ParamRegistry& registry) {
  double sum = 0.0;
  for (const auto& p : registry.params()) {
    if (IsTrainable(p->spec.role)) sum += SumOfSquares(p->grad);
  }
  return std::sqrt(sum);
}

double ClipGradients(ParamRegistry& registry, double max_norm) {
  const double norm = GlobalGradNorm(registry);
  if (max_norm <= 0.0 || !std::isfinite(norm) || norm <= max_norm) return norm;
  const double scale = max_norm / norm;
  const ExecContext ctx = ExecContext::Cpu();
  for (const auto& p : registry.params()) {
    if (IsTrainable(p->spec.role)) ops::Scale(ctx, scale, p->grad);
  }
  return norm;
}

}  // namespace scalemoe
