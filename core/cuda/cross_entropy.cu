// CrossEntropy on the GPU, the contract of core/ops.h (core/cpu/
// cross_entropy.cc is the reference): logits [N, V] (f32, f64 or bf16),
// targets int32 [N], loss f64[1] = mean_n (log Σ_v exp(logits[n, v]) −
// logits[n, targets[n]]), d_logits (if defined) = (softmax − onehot) / N.
//
// A block per row: one pass keeps each thread's running max and sum of
// exp (exp in the compute type: f32 for f32 and bf16, f64 for f64; the sum
// in f64), combined by a fixed butterfly; a second pass writes the row's
// gradient. Row losses go to an f64 scratch [N] and one block adds them in
// a fixed order: deterministic, no atomics. The CPU SM_CHECKs the targets;
// here a target outside [0, V) makes its row's loss, so the mean, NaN, and
// its gradient row NaN (loud, without a host read).
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// A running softmax denominator: Σ exp(x − max) over the values seen.
template <typename A>
struct MaxSum {
  A max;
  double sum;
};

template <typename A>
__device__ __forceinline__ MaxSum<A> Add(MaxSum<A> m, A v) {
  if (v > m.max) {
    m.sum = m.sum * static_cast<double>(exp(m.max - v)) + 1.0;
    m.max = v;
  } else if (v != NegInf<A>()) {  // exp(−inf − −inf) would be NaN; a NaN v lands here
    m.sum += static_cast<double>(exp(v - m.max));
  }
  return m;
}

// Commutative (both lanes of a butterfly pair get the same bits).
template <typename A>
__device__ __forceinline__ MaxSum<A> Merge(MaxSum<A> a, MaxSum<A> b) {
  const A max = a.max > b.max ? a.max : b.max;
  const double sa = a.max == NegInf<A>() ? 0.0 : a.sum * static_cast<double>(exp(a.max - max));
  const double sb = b.max == NegInf<A>() ? 0.0 : b.sum * static_cast<double>(exp(b.max - max));
  return {max, sa + sb};
}

template <typename A>
__device__ MaxSum<A> BlockMaxSum(MaxSum<A> m) {
  __shared__ A maxes[32];
  __shared__ double sums[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum<A> other{__shfl_xor_sync(0xffffffffu, m.max, offset),
                          __shfl_xor_sync(0xffffffffu, m.sum, offset)};
    m = Merge(m, other);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    maxes[warp] = m.max;
    sums[warp] = m.sum;
  }
  __syncthreads();
  MaxSum<A> total{maxes[0], sums[0]};
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
    total = Merge(total, MaxSum<A>{maxes[w], sums[w]});
  }
  __syncthreads();
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    CrossEntropyRowKernel(int64_t n, int64_t v, const T* logits, const int32_t* targets,
                          T* d_logits, double* row_loss) {
  using A = Acc<T>;
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {  // uniform over the block
    const T* row = logits + r * v;
    MaxSum<A> m{NegInf<A>(), 0.0};
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = Add(m, ToAcc(row[j]));
    m = BlockMaxSum(m);
    const double log_z = static_cast<double>(m.max) + log(m.sum);
    const int64_t y = targets[r];
    const bool valid = y >= 0 && y < v;
    if (threadIdx.x == 0) {
      row_loss[r] = valid ? log_z - static_cast<double>(ToAcc(row[y])) : NanOf<double>();
    }
    if (d_logits == nullptr) continue;
    T* d = d_logits + r * v;
    const A scale = static_cast<A>(inv_n);
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      const A p = exp(static_cast<A>(static_cast<double>(ToAcc(row[j])) - log_z));
      A g = p * scale;
      if (j == y) g -= scale;
      d[j] = valid ? FromAcc<T>(g) : NanOf<T>();
    }
  }
}

// loss[0] = (Σ_r row_loss[r]) / N: each thread sums a fixed stride of rows
// in order, then the block's fixed butterfly.
__global__ void MeanLossKernel(int64_t n, const double* row_loss, double* loss) {
  double acc = 0;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) acc += row_loss[r];
  acc = BlockAllReduce(acc, SumOp{});
  if (threadIdx.x == 0) loss[0] = acc * (1.0 / static_cast<double>(n));
}

}  // namespace

void CrossEntropy(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                  const Tensor& d_logits, const Tensor& loss) {
  constexpr const char* kOp = "CrossEntropy";
  CheckOnDevice(ctx, logits, kOp, "logits");
  SM_CHECK_MSG(logits.ndim() == 2, kOp, " logits must be [N, V], got ", logits.DebugString());
  CheckOnDevice(ctx, targets, kOp, "targets");
  SM_CHECK_MSG(targets.dtype() == DType::kI32 && targets.numel() == logits.dim(0), kOp, " targets ",
               targets.DebugString(), " for ", logits.DebugString());
  if (d_logits.defined()) {
    CheckOnDevice(ctx, d_logits, kOp, "d_logits");
    SM_CHECK_MSG(d_logits.numel() == logits.numel() && d_logits.dtype() == logits.dtype(), kOp,
                 " d_logits ", d_logits.DebugString(), " for ", logits.DebugString());
  }
  CheckOnDevice(ctx, loss, kOp, "loss");
  SM_CHECK_MSG(loss.dtype() == DType::kF64 && loss.numel() == 1, kOp, " loss ", loss.DebugString(),
               " (want f64[1])");
  const int64_t n = logits.dim(0), v = logits.dim(1);
  if (n == 0) {
    SM_CHECK_CUDA_CALL(ctx, cudaMemsetAsync(loss.raw_data(), 0, sizeof(double), Stream(ctx)),
                       kOp);  // +0.0
    return;
  }
  SM_CHECK_MSG(v > 0, kOp, " needs a vocabulary, got ", logits.DebugString());
  const Tensor row_loss = ctx.Empty({n}, DType::kF64);
  DispatchFloat(logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    CrossEntropyRowKernel<T><<<RowBlocks(n), RowBlockThreads(v), 0, Stream(ctx)>>>(
        n, v, Ptr<const T>(logits), Ptr<const int32_t>(targets), Ptr<T>(d_logits),
        Ptr<double>(row_loss));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "CrossEntropyRowKernel");
  MeanLossKernel<<<1, kThreads, 0, Stream(ctx)>>>(n, Ptr<const double>(row_loss),
                                                  Ptr<double>(loss));
  SM_CHECK_LAUNCH(ctx, kOp, "MeanLossKernel");
}

}  // namespace scalemoe::cuda
