// TrackNonFinite on the GPU (core/ops.h): the trainer's running record of
// non-finite steps, updated on the device by one thread, so that a step needs
// no host read to apply the SKIP/STOP policy. The same values as the CPU
// reference (counts and step numbers are exact in f64).
#include <cmath>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// tracker = {non-finite steps so far, of them in a row now, the first one's
// step (0: none), the longest run in a row}.
__global__ void TrackNonFiniteKernel(const int32_t* nonfinite, const double* loss, double step,
                                     double* tracker) {
  const bool bad = *nonfinite != 0 || !isfinite(*loss);
  if (!bad) {
    tracker[1] = 0;
    return;
  }
  tracker[0] += 1;
  tracker[1] += 1;
  if (tracker[2] == 0) tracker[2] = step;
  tracker[3] = fmax(tracker[3], tracker[1]);
}

}  // namespace

void TrackNonFinite(const ExecContext& ctx, const Tensor& nonfinite, const Tensor& loss,
                    int64_t step, const Tensor& tracker) {
  constexpr const char* kOp = "TrackNonFinite";
  CheckOnDevice(ctx, nonfinite, kOp, "nonfinite");
  CheckOnDevice(ctx, loss, kOp, "loss");
  CheckOnDevice(ctx, tracker, kOp, "tracker");
  SM_CHECK_MSG(nonfinite.dtype() == DType::kI32 && nonfinite.numel() == 1, "TrackNonFinite flag ",
               nonfinite.DebugString());
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, "TrackNonFinite loss ",
               loss.DebugString());
  SM_CHECK_MSG(tracker.dtype() == DType::kF64 && tracker.numel() == 4, "TrackNonFinite tracker ",
               tracker.DebugString());
  TrackNonFiniteKernel<<<1, 1, 0, Stream(ctx)>>>(Ptr<const int32_t>(nonfinite),
                                                 Ptr<const double>(loss), static_cast<double>(step),
                                                 Ptr<double>(tracker));
  SM_CHECK_LAUNCH(ctx, kOp, "TrackNonFiniteKernel");
}

}  // namespace scalemoe::cuda
