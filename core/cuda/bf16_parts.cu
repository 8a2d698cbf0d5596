// SplitBf16 and AddParts on the GPU (core/ops.h; core/cpu/bf16_parts.cc is
// the reference): one thread an element of x (SplitBf16) or of out
// (AddParts), the CPU's arithmetic in the same order, so the same bits.
// The tensors are small (a router's weight, logits and their gradients).
#include "core/bf16_parts_checks.h"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

__global__ void SplitBf16Kernel(int64_t rows, int64_t cols, int64_t reps, const float* x,
                                __nv_bfloat16* out) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const float v = x[i];
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    const float rest = __fsub_rn(v, __bfloat162float(hi));  // exact
    const __nv_bfloat16 mid = __float2bfloat16_rn(rest);
    const __nv_bfloat16 lo = __float2bfloat16_rn(__fsub_rn(rest, __bfloat162float(mid)));
    const __nv_bfloat16 parts[3] = {hi, mid, lo};
    __nv_bfloat16* row = out + r * 3 * reps * cols;
#pragma unroll
    for (int p = 0; p < 3; ++p) {
      for (int64_t q = 0; q < reps; ++q) row[(p * reps + q) * cols + c] = parts[p];
    }
  }
}

__global__ void AddPartsKernel(int64_t rows, int64_t cols, int64_t parts, bool accumulate,
                               const float* x, float* out) {
  const int64_t n = rows * cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    const float* row = x + r * parts * cols + c;
    float sum = 0;
    for (int64_t p = 0; p < parts; ++p) sum = __fadd_rn(sum, row[p * cols]);
    out[i] = accumulate ? __fadd_rn(out[i], sum) : sum;
  }
}

}  // namespace

void SplitBf16(const ExecContext& ctx, const Tensor& x, int64_t reps, const Tensor& out) {
  CheckOnDevice(ctx, x, "SplitBf16", "x");
  CheckOnDevice(ctx, out, "SplitBf16", "out");
  ops::CheckSplitBf16Args(x, reps, out);
  if (x.numel() == 0) return;
  SplitBf16Kernel<<<Blocks(x.numel()), kThreads, 0, Stream(ctx)>>>(
      x.dim(0), x.dim(1), reps, Ptr<const float>(x), Ptr<__nv_bfloat16>(out));
  SM_CHECK_LAUNCH(ctx, "SplitBf16", "SplitBf16Kernel");
}

void AddParts(const ExecContext& ctx, const Tensor& x, double beta, const Tensor& out) {
  CheckOnDevice(ctx, x, "AddParts", "x");
  CheckOnDevice(ctx, out, "AddParts", "out");
  const int64_t parts = ops::CheckAddPartsArgs(x, beta, out);
  if (out.numel() == 0) return;
  AddPartsKernel<<<Blocks(out.numel()), kThreads, 0, Stream(ctx)>>>(
      out.dim(0), out.dim(1), parts, beta != 0.0, Ptr<const float>(x), Ptr<float>(out));
  SM_CHECK_LAUNCH(ctx, "AddParts", "AddPartsKernel");
}

}  // namespace scalemoe::cuda
