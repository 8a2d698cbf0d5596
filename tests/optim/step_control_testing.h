// Test helper: an ops::StepControl on the CPU with given values, for driving
// AdamW and Muon directly (the optimizers build theirs with CheckGradNorm).
#pragma once

#include <cstdint>

#include "core/ops.h"
#include "core/tensor.h"

namespace scalemoe {

// Update count t (this update included), clip factor, non-finite flag.
inline ops::StepControl TestControl(int64_t t, double clip_factor = 1.0, bool nonfinite = false) {
  ops::StepControl c;
  c.clip_factor = Tensor::FromVector({1}, {clip_factor}, DType::kF64);
  c.nonfinite = Tensor::FromVector({1}, {nonfinite ? 1.0 : 0.0}, DType::kI32);
  c.num_updates = Tensor::FromVector({1}, {static_cast<double>(t)}, DType::kI64);
  return c;
}

}  // namespace scalemoe
