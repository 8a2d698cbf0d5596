// Mean token cross-entropy with its logits gradient (CPU, f32/f64).
#include <cmath>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

template <typename T>
double Run(const T* logits, const int32_t* targets, T* d_logits, int64_t n, int64_t v) {
  double total = 0;
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t r = 0; r < n; ++r) {
    const T* row = logits + r * v;
    const int64_t y = targets[r];
    SM_CHECK_MSG(y >= 0 && y < v, "target id ", y, " at position ", r,
                 " outside the vocabulary [0, ", v, ")");
    double max = row[0];
    for (int64_t j = 1; j < v; ++j) max = std::max(max, static_cast<double>(row[j]));
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(row[j]) - max);
    const double log_z = max + std::log(sum);
    total += log_z - static_cast<double>(row[y]);
    if (d_logits) {
      T* d = d_logits + r * v;
      for (int64_t j = 0; j < v; ++j) {
        d[j] = static_cast<T>(std::exp(static_cast<double>(row[j]) - log_z) * inv_n);
      }
      d[y] -= static_cast<T>(inv_n);
    }
  }
  return total * inv_n;
}

}  // namespace

void CrossEntropy(const ExecContext&, const Tensor& logits, const Tensor& targets,
                  const Tensor& d_logits, const Tensor& loss) {
  SM_CHECK_MSG(logits.ndim() == 2 && logits.is_contiguous() && logits.device() == Device::kCPU,
               "CrossEntropy logits must be [N, V], got ", logits.DebugString());
  SM_CHECK_MSG(targets.dtype() == DType::kI32 && targets.numel() == logits.dim(0),
               "CrossEntropy targets ", targets.DebugString(), " for ", logits.DebugString());
  if (d_logits.defined()) {
    SM_CHECK_MSG(d_logits.numel() == logits.numel() && d_logits.dtype() == logits.dtype(),
                 "CrossEntropy d_logits ", d_logits.DebugString());
  }
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, "CrossEntropy loss ",
               loss.DebugString(), " (want f64[1])");
  const int64_t n = logits.dim(0), v = logits.dim(1);
  double& out = loss.data<double>()[0];
  if (n == 0) {
    out = 0.0;
  } else if (logits.dtype() == DType::kF64) {
    out = Run(logits.data<double>(), targets.data<int32_t>(),
              d_logits.defined() ? d_logits.data<double>() : nullptr, n, v);
  } else {
    out = Run(logits.data<float>(), targets.data<int32_t>(),
              d_logits.defined() ? d_logits.data<float>() : nullptr, n, v);
  }
}

}  // namespace scalemoe::cpu
