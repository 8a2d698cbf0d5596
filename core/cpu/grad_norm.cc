// The gradient norm on the device (CPU reference): SegmentSumOfSquares over
// ranges of a flat buffer, and GradNormControl, which turns the all-reduced
// sum into the step's clip factor, non-finite flag and update count.
#include <cmath>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/multi_tensor.h"

namespace scalemoe::cpu {
namespace {

using namespace multi_tensor;

template <typename S>
double SumOfSquares(const S* x, int64_t begin, int64_t end) {
  double sum = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    const double v = Load<double>(x[i]);
    sum += v * v;
  }
  return sum;
}

void CheckScalar(const Tensor& t, DType dtype, const char* op, const char* what) {
  CheckCpuContiguous(t, op, what);
  SM_CHECK_MSG(t.dtype() == dtype && t.numel() == 1, op, ": ", what, " must be ", DTypeName(dtype),
               " [1], got ", t.DebugString());
}

}  // namespace

void SegmentSumOfSquares(const ExecContext&, const Tensor& x, const Tensor& segments,
                         const Tensor& sums) {
  constexpr const char* kOp = "SegmentSumOfSquares";
  CheckCpuContiguous(x, kOp, "x");
  CheckCpuContiguous(sums, kOp, "sums");
  const Table table = ReadTable(segments, 2, kOp);
  SM_CHECK_MSG(sums.dtype() == DType::kF64 && sums.ndim() == 1 &&
                   (sums.dim(0) == table.count || sums.dim(0) == 1),
               kOp, ": sums must be f64 [", table.count, "] or [1], got ", sums.DebugString());
  for (int64_t s = 0; s < table.count; ++s) {
    CheckRange(table.row(s)[0], table.row(s)[1], x.numel(), kOp, "segment");
  }
  double* out = sums.data<double>();
  const bool per_row = sums.dim(0) == table.count;
  DispatchStorage(x, kOp, [&](auto zero) {
    using S = decltype(zero);
    const S* xs = x.data<S>();
    for (int64_t s = 0; s < table.count; ++s) {
      out[per_row ? s : 0] += SumOfSquares(xs, table.row(s)[0], table.row(s)[1]);
    }
  });
}

void GradNormControl(const ExecContext&, const Tensor& sum_of_squares, double max_norm,
                     const Tensor& grad_norm, const ops::StepControl& control) {
  constexpr const char* kOp = "GradNormControl";
  CheckScalar(sum_of_squares, DType::kF64, kOp, "sum_of_squares");
  CheckScalar(grad_norm, DType::kF64, kOp, "grad_norm");
  CheckScalar(control.clip_factor, DType::kF64, kOp, "control.clip_factor");
  CheckScalar(control.nonfinite, DType::kI32, kOp, "control.nonfinite");
  CheckScalar(control.num_updates, DType::kI64, kOp, "control.num_updates");
  const double norm = std::sqrt(sum_of_squares.data<double>()[0]);
  const bool finite = std::isfinite(norm);
  grad_norm.data<double>()[0] = norm;
  control.nonfinite.data<int32_t>()[0] = finite ? 0 : 1;
  control.clip_factor.data<double>()[0] =
      max_norm > 0.0 && finite && norm > max_norm ? max_norm / norm : 1.0;
  if (finite) control.num_updates.data<int64_t>()[0] += 1;
}

}  // namespace scalemoe::cpu
