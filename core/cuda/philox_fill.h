// Device-side Philox init (see philox_fill.cu). Built only with SCALEMOE_CUDA.
#pragma once

#include <cstdint>

#include "core/status.h"

namespace scalemoe::cuda {

// out[i] = stddev * PhiloxNormal(seed, stream, first_index + i), i < n, on
// `cuda_stream` (asynchronous; `out` is device memory).
Status PhiloxNormalFill(float* out, int64_t n, uint64_t seed, uint64_t stream,
                        int64_t first_index, double stddev, void* cuda_stream);

}  // namespace scalemoe::cuda
