// Mean token cross-entropy with its logits gradient (CPU; f32, f64 or bf16
// logits, the statistics in f64). d_logits is in the logits' dtype, or bf16
// (the LM head's GEMMs read it so, without a copy): the gradient is computed
// in the logits' compute type (f32 for bf16 logits, as on CUDA) and rounded
// on store as ops::Copy would round it (f64 through f32), so a bf16
// d_logits holds the same bits as the logits-dtype gradient copied to bf16.
#include <algorithm>
#include <cmath>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"

namespace scalemoe::cpu {
namespace {

// T: the logits' type, Acc<T> the gradient's arithmetic; D: d_logits' type.
template <typename T, typename D>
double Run(const T* logits, const int32_t* targets, D* d_logits, int64_t n, int64_t v) {
  using A = Acc<T>;
  const auto value = [](T x) { return static_cast<double>(static_cast<A>(x)); };
  double total = 0;
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t r = 0; r < n; ++r) {
    const T* row = logits + r * v;
    const int64_t y = targets[r];
    SM_CHECK_MSG(y >= 0 && y < v, "target id ", y, " at position ", r,
                 " outside the vocabulary [0, ", v, ")");
    double max = value(row[0]);
    for (int64_t j = 1; j < v; ++j) max = std::max(max, value(row[j]));
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(value(row[j]) - max);
    const double log_z = max + std::log(sum);
    total += log_z - value(row[y]);
    if (d_logits) {
      D* d = d_logits + r * v;
      for (int64_t j = 0; j < v; ++j) {
        A g = static_cast<A>(std::exp(value(row[j]) - log_z) * inv_n);
        if (j == y) g -= static_cast<A>(inv_n);
        d[j] = D(static_cast<Acc<D>>(g));  // as Copy converts (f64 -> bf16 through f32)
      }
    }
  }
  return total * inv_n;
}

template <typename T>
double RunInto(const Tensor& logits, const Tensor& targets, const Tensor& d_logits) {
  const int64_t n = logits.dim(0), v = logits.dim(1);
  const T* x = logits.data<T>();
  const int32_t* y = targets.data<int32_t>();
  if (!d_logits.defined()) return Run<T, T>(x, y, nullptr, n, v);
  if (d_logits.dtype() == DType::kBF16) return Run(x, y, d_logits.data<bf16>(), n, v);
  return Run(x, y, d_logits.data<T>(), n, v);
}

}  // namespace

void CrossEntropy(const ExecContext&, const Tensor& logits, const Tensor& targets,
                  const Tensor& d_logits, const Tensor& loss) {
  SM_CHECK_MSG(logits.ndim() == 2 && logits.is_contiguous() && logits.device() == Device::kCPU,
               "CrossEntropy logits must be [N, V], got ", logits.DebugString());
  SM_CHECK_MSG(logits.dtype() == DType::kF32 || logits.dtype() == DType::kF64 ||
                   logits.dtype() == DType::kBF16,
               "CrossEntropy logits must be f32, f64 or bf16, got ", logits.DebugString());
  SM_CHECK_MSG(targets.dtype() == DType::kI32 && targets.numel() == logits.dim(0),
               "CrossEntropy targets ", targets.DebugString(), " for ", logits.DebugString());
  if (d_logits.defined()) {
    SM_CHECK_MSG(d_logits.numel() == logits.numel() && d_logits.is_contiguous() &&
                     d_logits.device() == Device::kCPU,
                 "CrossEntropy d_logits ", d_logits.DebugString(),
                 " must be a contiguous CPU tensor of the logits' size, for logits ",
                 logits.DebugString());
    SM_CHECK_MSG(d_logits.dtype() == logits.dtype() || d_logits.dtype() == DType::kBF16,
                 "CrossEntropy d_logits ", d_logits.DebugString(),
                 " must be in the logits' dtype or bf16, for logits ", logits.DebugString());
  }
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, "CrossEntropy loss ",
               loss.DebugString(), " (want f64[1])");
  double& out = loss.data<double>()[0];
  if (logits.dim(0) == 0) {
    out = 0.0;
  } else {
    DispatchFloat(logits,
                  [&](auto tag) { out = RunInto<decltype(tag)>(logits, targets, d_logits); });
  }
}

}  // namespace scalemoe::cpu
