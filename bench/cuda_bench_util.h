// Shared by the CUDA benches (cuda_gemm_bench, cuda_fold_bench,
// cuda_attention_bench): exit on a failed Status or CUDA call, naming the
// bench and the call; random device tensors; the median time per call of
// CUDA-event-timed samples.
#pragma once

#include <cuda_runtime.h>
#include <errno.h>  // program_invocation_short_name

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/context.h"
#include "core/cuda/philox_fill.h"
#include "core/ops.h"

namespace scalemoe::bench {

inline void Check(const Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what, st.ToString().c_str());
  std::exit(1);
}

inline void CheckCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  std::fprintf(stderr, "%s: %s: %s\n", program_invocation_short_name, what,
               cudaGetErrorString(err));
  std::exit(1);
}

// A device tensor of N(0, stddev²) values drawn on the device (f32, then
// rounded for other dtypes).
inline Tensor RandomDevice(const ExecContext& ctx, const Shape& shape, DType dtype, uint64_t stream,
                           double stddev) {
  Tensor f32 = ctx.Empty(shape, DType::kF32);
  Check(
      cuda::PhiloxNormalFill(f32.data<float>(), f32.numel(), 2024, stream, 0, stddev, ctx.stream()),
      "PhiloxNormalFill");
  if (dtype == DType::kF32) return f32;
  Tensor out = ctx.Empty(shape, dtype);
  ops::Copy(ctx, f32, out);
  return out;
}

// ms per call: `warmup` calls, then `samples` samples of `inner` calls
// back to back between two CUDA events; the median sample / inner.
// call(i) gets a running index (warm-up 0..warmup-1, then sample*inner+j),
// e.g. to rotate over input sets. `what` names the work in an error.
template <typename F>
double MedianMsPerCall(const ExecContext& ctx, int warmup, int inner, int samples, F&& call,
                       const char* what) {
  for (int i = 0; i < warmup; ++i) call(i);
  Check(ctx.Synchronize(), "warm-up");
  const cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<float> ms(samples);
  for (int sample = 0; sample < samples; ++sample) {
    CheckCuda(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int i = 0; i < inner; ++i) call(sample * inner + i);
    CheckCuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    CheckCuda(cudaEventElapsedTime(&ms[sample], start, stop), "cudaEventElapsedTime");
  }
  CheckCuda(cudaEventDestroy(start), "cudaEventDestroy");
  CheckCuda(cudaEventDestroy(stop), "cudaEventDestroy");
  Check(ctx.status(), what);
  std::sort(ms.begin(), ms.end());
  return ms[samples / 2] / inner;
}

}  // namespace scalemoe::bench
