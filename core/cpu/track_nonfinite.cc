// The trainer's running record of non-finite steps, kept on the device so
// that a step needs no host read to apply the SKIP/STOP policy.
#include <cmath>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {

void TrackNonFinite(const ExecContext&, const Tensor& nonfinite, const Tensor& loss,
                    int64_t step, const Tensor& tracker) {
  SM_CHECK_MSG(nonfinite.dtype() == DType::kI32 && nonfinite.numel() == 1,
               "TrackNonFinite flag ", nonfinite.DebugString());
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, "TrackNonFinite loss ",
               loss.DebugString());
  SM_CHECK_MSG(tracker.dtype() == DType::kF64 && tracker.numel() == 4 && tracker.is_contiguous(),
               "TrackNonFinite tracker ", tracker.DebugString());
  double* t = tracker.data<double>();
  const bool bad = nonfinite.data<int32_t>()[0] != 0 || !std::isfinite(loss.data<double>()[0]);
  if (!bad) {
    t[1] = 0;
    return;
  }
  t[0] += 1;
  t[1] += 1;
  if (t[2] == 0) t[2] = static_cast<double>(step);
  t[3] = std::max(t[3], t[1]);
}

}  // namespace scalemoe::cpu
