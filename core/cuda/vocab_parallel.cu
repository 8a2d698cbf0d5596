// Vocab-parallel cross-entropy and embedding ops on the GPU, the contract
// of core/ops.h (core/cpu/vocab_parallel.cc is the reference): logits
// [N, V_local] (f32, f64 or bf16) of the shard [vocab_start, vocab_start +
// V_local); row_max [N] and stats [2, N] f64; targets / tokens [N] int32.
//   VocabRowMax               row_max[n] = max over the shard (exact)
//   VocabSoftmaxStats         stats[0, n] = Σ exp(logits − row_max),
//                             stats[1, n] = the target's logit, or 0
//   VocabCrossEntropyLoss     loss[0] = mean (log stats[0] + row_max − stats[1])
//   VocabCrossEntropyBackward d_logits = (softmax − onehot) / N (overwritten)
//   VocabShardRows            rows[n] = tokens[n] − vocab_start inside the shard, else −1
//   CountOutOfRange           count[0] = ids outside [begin, end)
// Row ops give a block to each row; exp is computed in f32 for f32 and bf16
// logits (of the difference taken in f64), in f64 for f64; sums are f64.
// Every float sum is a fixed-order butterfly or loop: deterministic. The
// only atomic is CountOutOfRange's integer add (exact in any order).
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    VocabRowMaxKernel(int64_t n, int64_t v, const T* logits, double* row_max) {
  using A = Acc<T>;
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {  // uniform over the block
    const T* row = logits + r * v;
    A m = NegInf<A>();
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) m = MaxOp{}(m, ToAcc(row[j]));
    m = BlockAllReduce(m, MaxOp{});
    if (threadIdx.x == 0) row_max[r] = static_cast<double>(m);
  }
}

// exp(x − max) with the difference in f64 and the exp in the compute type.
template <typename A>
__device__ __forceinline__ A ExpShifted(A x, double max) {
  return exp(static_cast<A>(static_cast<double>(x) - max));
}

template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    VocabSoftmaxStatsKernel(int64_t n, int64_t v, int64_t vocab_start, const T* logits,
                            const int32_t* targets, const double* row_max, double* stats) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const T* row = logits + r * v;
    const double mx = row_max[r];
    double sum = 0;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      sum += static_cast<double>(ExpShifted(ToAcc(row[j]), mx));
    }
    sum = BlockAllReduce(sum, SumOp{});
    if (threadIdx.x == 0) {
      stats[r] = sum;
      const int64_t local = static_cast<int64_t>(targets[r]) - vocab_start;
      stats[n + r] = local >= 0 && local < v ? static_cast<double>(ToAcc(row[local])) : 0.0;
    }
  }
}

// loss[0] = Σ_r (log stats[0, r] + row_max[r] − stats[1, r]) / N; one block,
// each thread a fixed stride of rows in order, then a fixed butterfly.
__global__ void VocabLossKernel(int64_t n, const double* row_max, const double* stats,
                                double* loss) {
  double acc = 0;
  for (int64_t r = threadIdx.x; r < n; r += blockDim.x) {
    acc += log(stats[r]) + row_max[r] - stats[n + r];
  }
  acc = BlockAllReduce(acc, SumOp{});
  if (threadIdx.x == 0) loss[0] = acc / static_cast<double>(n);
}

template <typename T>
__global__ void __launch_bounds__(kMaxRowThreads)
    VocabCrossEntropyBackwardKernel(int64_t n, int64_t v, int64_t vocab_start, const T* logits,
                                    const int32_t* targets, const double* row_max,
                                    const double* stats, T* d_logits) {
  using A = Acc<T>;
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const T* row = logits + r * v;
    T* d = d_logits + r * v;
    const double mx = row_max[r];
    const A scale = static_cast<A>(inv_n / stats[r]);  // softmax's 1/Σ and the mean's 1/N
    const A onehot = static_cast<A>(inv_n);
    const int64_t local = static_cast<int64_t>(targets[r]) - vocab_start;
    for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
      A g = ExpShifted(ToAcc(row[j]), mx) * scale;
      if (j == local) g -= onehot;
      d[j] = FromAcc<T>(g);
    }
  }
}

__global__ void VocabShardRowsKernel(int64_t n, int64_t vocab_start, int64_t shard_size,
                                     const int32_t* tokens, int32_t* rows) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t local = static_cast<int64_t>(tokens[i]) - vocab_start;
    rows[i] = local >= 0 && local < shard_size ? static_cast<int32_t>(local) : -1;
  }
}

// count[0] (zeroed before) += the block's count of ids outside [begin, end).
__global__ void CountOutOfRangeKernel(int64_t n, int64_t begin, int64_t end, const int32_t* ids,
                                      unsigned long long* count) {
  unsigned long long bad = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    bad += ids[i] < begin || ids[i] >= end ? 1 : 0;
  }
  bad = BlockAllReduce(bad, SumOp{});
  if (threadIdx.x == 0 && bad > 0) atomicAdd(count, bad);
}

// ---------------------------------------------------------------- launchers

void CheckLogits(const ExecContext& ctx, const char* op, const Tensor& logits) {
  CheckOnDevice(ctx, logits, op, "logits");
  SM_CHECK_MSG(logits.ndim() == 2, op, ": logits must be [N, V_local], got ", logits.DebugString());
}

void CheckTensor(const ExecContext& ctx, const char* op, const char* what, const Tensor& t,
                 DType dtype, int64_t numel) {
  CheckOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(t.dtype() == dtype && t.numel() == numel, op, ": ", what, " ", t.DebugString(),
               " (want ", numel, " ", DTypeName(dtype), ")");
}

}  // namespace

void VocabRowMax(const ExecContext& ctx, const Tensor& logits, const Tensor& row_max) {
  constexpr const char* kOp = "VocabRowMax";
  CheckLogits(ctx, kOp, logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckTensor(ctx, kOp, "row_max", row_max, DType::kF64, n);
  if (n == 0) return;
  DispatchFloat(logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    VocabRowMaxKernel<T><<<RowBlocks(n), RowBlockThreads(v), 0, Stream(ctx)>>>(
        n, v, Ptr<const T>(logits), Ptr<double>(row_max));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "VocabRowMaxKernel");
}

void VocabSoftmaxStats(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                       int64_t vocab_start, const Tensor& row_max, const Tensor& stats) {
  constexpr const char* kOp = "VocabSoftmaxStats";
  CheckLogits(ctx, kOp, logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckTensor(ctx, kOp, "targets", targets, DType::kI32, n);
  CheckTensor(ctx, kOp, "row_max", row_max, DType::kF64, n);
  CheckTensor(ctx, kOp, "stats", stats, DType::kF64, 2 * n);
  if (n == 0) return;
  DispatchFloat(logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    VocabSoftmaxStatsKernel<T><<<RowBlocks(n), RowBlockThreads(v), 0, Stream(ctx)>>>(
        n, v, vocab_start, Ptr<const T>(logits), Ptr<const int32_t>(targets),
        Ptr<const double>(row_max), Ptr<double>(stats));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "VocabSoftmaxStatsKernel");
}

void VocabCrossEntropyLoss(const ExecContext& ctx, const Tensor& row_max, const Tensor& stats,
                           const Tensor& loss) {
  constexpr const char* kOp = "VocabCrossEntropyLoss";
  const int64_t n = row_max.numel();
  CheckTensor(ctx, kOp, "row_max", row_max, DType::kF64, n);
  CheckTensor(ctx, kOp, "stats", stats, DType::kF64, 2 * n);
  CheckTensor(ctx, kOp, "loss", loss, DType::kF64, 1);
  SM_CHECK_MSG(n > 0, kOp, ": no rows (row_max ", row_max.DebugString(), ")");
  VocabLossKernel<<<1, kThreads, 0, Stream(ctx)>>>(n, Ptr<const double>(row_max),
                                                   Ptr<const double>(stats), Ptr<double>(loss));
  SM_CHECK_LAUNCH(ctx, kOp, "VocabLossKernel");
}

void VocabCrossEntropyBackward(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                               int64_t vocab_start, const Tensor& row_max, const Tensor& stats,
                               const Tensor& d_logits) {
  constexpr const char* kOp = "VocabCrossEntropyBackward";
  CheckLogits(ctx, kOp, logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckTensor(ctx, kOp, "targets", targets, DType::kI32, n);
  CheckTensor(ctx, kOp, "row_max", row_max, DType::kF64, n);
  CheckTensor(ctx, kOp, "stats", stats, DType::kF64, 2 * n);
  CheckOnDevice(ctx, d_logits, kOp, "d_logits");
  SM_CHECK_MSG(d_logits.shape() == logits.shape() && d_logits.dtype() == logits.dtype(), kOp,
               ": d_logits ", d_logits.DebugString(), " for logits ", logits.DebugString());
  if (n == 0) return;
  DispatchFloat(logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    VocabCrossEntropyBackwardKernel<T><<<RowBlocks(n), RowBlockThreads(v), 0, Stream(ctx)>>>(
        n, v, vocab_start, Ptr<const T>(logits), Ptr<const int32_t>(targets),
        Ptr<const double>(row_max), Ptr<const double>(stats), Ptr<T>(d_logits));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "VocabCrossEntropyBackwardKernel");
}

void VocabShardRows(const ExecContext& ctx, const Tensor& tokens, int64_t vocab_start,
                    int64_t shard_size, const Tensor& rows) {
  constexpr const char* kOp = "VocabShardRows";
  CheckTensor(ctx, kOp, "tokens", tokens, DType::kI32, tokens.numel());
  CheckTensor(ctx, kOp, "rows", rows, DType::kI32, tokens.numel());
  SM_CHECK_MSG(shard_size >= 0, kOp, ": shard size ", shard_size);
  const int64_t n = tokens.numel();
  if (n == 0) return;
  VocabShardRowsKernel<<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
      n, vocab_start, shard_size, Ptr<const int32_t>(tokens), Ptr<int32_t>(rows));
  SM_CHECK_LAUNCH(ctx, kOp, "VocabShardRowsKernel");
}

void CountOutOfRange(const ExecContext& ctx, const Tensor& ids, int64_t begin, int64_t end,
                     const Tensor& count) {
  constexpr const char* kOp = "CountOutOfRange";
  CheckTensor(ctx, kOp, "ids", ids, DType::kI32, ids.numel());
  CheckTensor(ctx, kOp, "count", count, DType::kI64, 1);
  SM_CHECK_CUDA_CALL(ctx, cudaMemsetAsync(count.raw_data(), 0, sizeof(int64_t), Stream(ctx)), kOp);
  const int64_t n = ids.numel();
  if (n == 0) return;
  CountOutOfRangeKernel<<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
      n, begin, end, Ptr<const int32_t>(ids), Ptr<unsigned long long>(count));
  SM_CHECK_LAUNCH(ctx, kOp, "CountOutOfRangeKernel");
}

}  // namespace scalemoe::cuda
