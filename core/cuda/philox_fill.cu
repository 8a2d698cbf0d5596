// Philox parameter init on the GPU: the same (seed, name, global index) ->
// value function as the CPU path in core/params.cc, so a parameter created
// directly on the device equals its host-initialised twin bit for bit.
#include <cuda_runtime.h>

#include "core/cuda/philox_fill.h"
#include "core/philox.h"

namespace scalemoe::cuda {
namespace {

__global__ void PhiloxNormalFillKernel(float* out, int64_t n, uint64_t seed, uint64_t stream,
                                       int64_t first_index, double stddev) {
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[i] = static_cast<float>(stddev * PhiloxNormal(seed, stream, first_index + i));
}

}  // namespace

Status PhiloxNormalFill(float* out, int64_t n, uint64_t seed, uint64_t stream,
                        int64_t first_index, double stddev, void* cuda_stream) {
  if (n == 0) return absl::OkStatus();
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  PhiloxNormalFillKernel<<<blocks, threads, 0, static_cast<cudaStream_t>(cuda_stream)>>>(
      out, n, seed, stream, first_index, stddev);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return absl::InternalError(absl::StrCat(__FILE__, ":", __LINE__,
                                            ": PhiloxNormalFillKernel launch failed: ",
                                            cudaGetErrorString(err)));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe::cuda
