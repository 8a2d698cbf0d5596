// Router auxiliary losses on the GPU, the contracts of core/ops.h and the
// arithmetic of core/cpu/router_losses.cc (f32/f64 scores and logits; the
// statistics in f64 as there): load balancing and z-loss, single-rank and
// token-sharded, their backwards (accumulating), and AssignmentCounts.
//
// Deterministic: the per-expert counts are integers (a shared-memory
// histogram per block, added into 64-bit totals: integer sums do not depend
// on their order); P_e sums its column over fixed row chunks, then the
// chunks in order; the loss sums E (or N) terms in one block in a fixed
// order. No float atomics, no host reads: the loss stays a device scalar.
// Expert ids out of [0, E) (the CPU SM_CHECKs them) are not counted.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// totals[x] += the number of ids equal to x in this block's grid-stride
// share: a shared-memory histogram of E counters, then one integer atomic
// per (block, expert). Dynamic shared memory: E unsigned ints.
__global__ void HistogramKernel(int64_t m, int64_t e, const int32_t* ids,
                                unsigned long long* totals) {
  extern __shared__ unsigned int hist[];
  for (int64_t x = threadIdx.x; x < e; x += blockDim.x) hist[x] = 0;
  __syncthreads();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t id = ids[i];
    if (id >= 0 && id < e) atomicAdd(&hist[id], 1u);
  }
  __syncthreads();
  for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
    if (hist[x] != 0) atomicAdd(&totals[x], static_cast<unsigned long long>(hist[x]));
  }
}

// out[x] = totals[x] / divisor in f64 (exact counts for divisor 1).
__global__ void TotalsToF64Kernel(int64_t e, const unsigned long long* totals, double divisor,
                                  double* out) {
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < e;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[x] = static_cast<double>(totals[x]) / divisor;
  }
}

// Block b: partial[b, x] = Σ s[t, x] over its rows [b·rows, (b+1)·rows) in
// f64, t ascending; a thread per column (consecutive threads read
// consecutive columns of a row).
template <typename T>
__global__ void ColumnPartialsKernel(int64_t n, int64_t e, int64_t rows, const T* s,
                                     double* partial) {
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * rows;
  const int64_t t1 = t0 + rows < n ? t0 + rows : n;
  for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
    double p = 0;
    // Unrolled: the loads go out together, the adds stay in row order.
#pragma unroll 8
    for (int64_t t = t0; t < t1; ++t) p += static_cast<double>(s[t * e + x]);
    partial[blockIdx.x * e + x] = p;
  }
}

// One block: loss[0] = scale · Σ_x f_x · (Σ_b partial[b, x]) / denom, the
// chunks in order, then the terms as FinishSumKernel sums them.
template <typename T>
__global__ void BalanceFinishKernel(int64_t e, int64_t chunks, const double* partial,
                                    const double* f, int64_t denom, double scale, T* loss) {
  double acc = 0;
  for (int64_t x = threadIdx.x; x < e; x += blockDim.x) {
    double p = 0;
    // Unrolled: the loads go out together (one at a time, the 256 chunks
    // of 8192 rows took ~30 us of latency), the adds stay in chunk order.
#pragma unroll 16
    for (int64_t b = 0; b < chunks; ++b) p += partial[b * e + x];
    acc += f[x] * p / static_cast<double>(denom);
  }
  acc = BlockSum(acc);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(scale * acc);
}

// One block: loss[0] = scale · Σ_i terms[i] (fixed order), in T.
template <typename T>
__global__ void FinishSumKernel(int64_t count, const double* terms, double scale, T* loss) {
  double acc = 0;
#pragma unroll 8
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += terms[i];
  acc = BlockSum(acc);
  if (threadIdx.x == 0) loss[0] = static_cast<T>(scale * acc);
}

// d_scores[t, e] += scale·coeff·E·f_e / denom.
template <typename T>
__global__ void BalanceBackwardKernel(int64_t n, int64_t e, const double* f, double factor, T* ds) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n * e;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ds[i] += static_cast<T>(factor * f[i % e]);
  }
}

// logsumexp of row xr (in f64) across one warp; every lane gets it. *sum
// receives Σ exp(x − max) and *mx the max.
template <typename T>
__device__ double WarpLogSumExp(const T* xr, int64_t e, int lane, double* mx_out, double* sum_out) {
  double mx = static_cast<double>(xr[0]);
  for (int64_t j = lane; j < e; j += 32) mx = fmax(mx, static_cast<double>(xr[j]));
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, offset));
  }
  double sum = 0;
  for (int64_t j = lane; j < e; j += 32) sum += exp(static_cast<double>(xr[j]) - mx);
  sum = WarpSum(sum);
  *mx_out = mx;
  *sum_out = sum;
  return mx + log(sum);
}

// One warp per row: sq[t] = lse(x[t])²; with dx, dx[t, j] += g·softmax.
template <typename T>
__global__ void ZLossRowsKernel(int64_t n, int64_t e, const T* x, double factor, double* sq,
                                T* dx) {
  const int lane = threadIdx.x % 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t t = first; t < n; t += warps) {
    const T* xr = x + t * e;
    double mx, sum;
    const double lse = WarpLogSumExp(xr, e, lane, &mx, &sum);
    if (sq != nullptr && lane == 0) sq[t] = lse * lse;
    if (dx != nullptr) {  // d lse² = 2 lse softmax
      const double g = factor * 2.0 * lse;
      for (int64_t j = lane; j < e; j += 32) {
        dx[t * e + j] += static_cast<T>(g * exp(static_cast<double>(xr[j]) - mx) / sum);
      }
    }
  }
}

// ---------------------------------------------------------------- launchers

// Expert counts of expert_ids [N, K] divided by `divisor`, into `out` [E] f64.
void CountsOver(const ExecContext& ctx, const char* op, const Tensor& expert_ids, int64_t e,
                double divisor, const Tensor& out) {
  CheckOnDevice(ctx, expert_ids, op, "expert_ids");
  SM_CHECK_MSG(expert_ids.dtype() == DType::kI32 && expert_ids.ndim() == 2, op,
               ": expert_ids must be i32 [N, K], got ", expert_ids.DebugString());
  if (e == 0) return;
  const int64_t m = expert_ids.numel();
  const Tensor totals = ctx.Empty({e}, DType::kI64);
  SM_CHECK_CUDA_CALL(ctx, cudaMemsetAsync(totals.raw_data(), 0, totals.nbytes(), Stream(ctx)), op);
  auto* t = reinterpret_cast<unsigned long long*>(totals.raw_data());
  if (m > 0) {
    const size_t smem = static_cast<size_t>(e) * sizeof(unsigned int);
    SM_CHECK_MSG(smem <= 48 * 1024, op, ": ", e, " experts exceed the histogram's shared memory");
    const unsigned blocks = static_cast<unsigned>(
        std::clamp<int64_t>((m + 8 * kThreads - 1) / (8 * kThreads), 1, 1024));
    HistogramKernel<<<blocks, kThreads, smem, Stream(ctx)>>>(m, e, Ptr<const int32_t>(expert_ids),
                                                             t);
    SM_CHECK_LAUNCH(ctx, op, "HistogramKernel");
  }
  TotalsToF64Kernel<<<Blocks(e), kThreads, 0, Stream(ctx)>>>(e, t, divisor, Ptr<double>(out));
  SM_CHECK_LAUNCH(ctx, op, "TotalsToF64Kernel");
}

// counts [E] f64 of expert_ids on ctx's device (a temporary unless `into`).
Tensor Counts(const ExecContext& ctx, const char* op, const Tensor& expert_ids, int64_t e,
              const Tensor& into = Tensor()) {
  Tensor counts = into.defined() ? into : ctx.Empty({e}, DType::kF64);
  CountsOver(ctx, op, expert_ids, e, 1.0, counts);
  return counts;
}

// Fractions f_e of the N·K assignments of expert_ids, a temporary [E] f64.
Tensor Fractions(const ExecContext& ctx, const char* op, const Tensor& expert_ids, int64_t e) {
  Tensor f = ctx.Empty({e}, DType::kF64);
  const int64_t m = expert_ids.numel();
  CountsOver(ctx, op, expert_ids, e, static_cast<double>(m > 1 ? m : 1), f);
  return f;
}

void CheckFractions(const ExecContext& ctx, const char* op, const Tensor& fractions, int64_t e) {
  CheckOnDevice(ctx, fractions, op, "fractions");
  SM_CHECK_MSG(fractions.dtype() == DType::kF64 && fractions.numel() == e, op,
               ": fractions must be f64 [E = ", e, "], got ", fractions.DebugString());
}

void CheckLossOut(const ExecContext& ctx, const char* op, const Tensor& loss, const Tensor& like) {
  CheckOnDevice(ctx, loss, op, "loss");
  SM_CHECK_MSG(loss.numel() == 1 && loss.dtype() == like.dtype(), op, ": loss tensor ",
               loss.DebugString(), " for ", like.DebugString());
}

void CheckTotal(const char* op, int64_t total_tokens, const Tensor& rows) {
  SM_CHECK_MSG(total_tokens >= rows.dim(0) && total_tokens > 0, op, ": total_tokens ", total_tokens,
               " must be >= this rank's ", rows.dim(0), " rows and > 0");
}

void LoadBalancingLossImpl(const char* op, const ExecContext& ctx, const Tensor& scores,
                           const Tensor& f, int64_t denom, double coeff, const Tensor& loss) {
  CheckOnDevice(ctx, scores, op, "scores");
  SM_CHECK_MSG(scores.ndim() == 2 && f.numel() == scores.dim(1), op, " scores ",
               scores.DebugString());
  CheckLossOut(ctx, op, loss, scores);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  // Row chunks of P_e's column sums: 32 rows each, at most 1024 chunks.
  const int64_t chunks = std::clamp<int64_t>((n + 31) / 32, 1, 1024);
  const int64_t rows = (n + chunks - 1) / chunks;
  Tensor partial = ctx.Empty({chunks, std::max<int64_t>(e, 1)}, DType::kF64);
  DispatchF32F64(op, scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (e > 0) {
      ColumnPartialsKernel<T><<<static_cast<unsigned>(chunks), kThreads, 0, Stream(ctx)>>>(
          n, e, rows, Ptr<const T>(scores), Ptr<double>(partial));
      SM_CHECK_LAUNCH(ctx, op, "ColumnPartialsKernel");
    }
    BalanceFinishKernel<T><<<1, kThreads, 0, Stream(ctx)>>>(
        e, chunks, Ptr<const double>(partial), Ptr<const double>(f), denom,
        coeff * static_cast<double>(e), Ptr<T>(loss));
    SM_CHECK_LAUNCH(ctx, op, "BalanceFinishKernel");
  });
}

void LoadBalancingBackwardImpl(const char* op, const ExecContext& ctx, const Tensor& f,
                               int64_t denom, double coeff, double scale, const Tensor& d_scores) {
  CheckOnDevice(ctx, d_scores, op, "d_scores");
  SM_CHECK_MSG(d_scores.ndim() == 2 && f.numel() == d_scores.dim(1), op, " d_scores ",
               d_scores.DebugString());
  const int64_t n = d_scores.dim(0), e = d_scores.dim(1);
  if (n * e == 0) return;
  const double factor = scale * coeff * static_cast<double>(e) / static_cast<double>(denom);
  DispatchF32F64(op, d_scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    BalanceBackwardKernel<T><<<Blocks(n * e), kThreads, 0, Stream(ctx)>>>(
        n, e, Ptr<const double>(f), factor, Ptr<T>(d_scores));
  });
  SM_CHECK_LAUNCH(ctx, op, "BalanceBackwardKernel");
}

void ZLossImpl(const char* op, const ExecContext& ctx, const Tensor& logits, int64_t denom,
               double coeff, const Tensor& loss) {
  CheckOnDevice(ctx, logits, op, "logits");
  SM_CHECK_MSG(logits.ndim() == 2 && logits.dim(1) > 0, op, " logits ", logits.DebugString());
  CheckLossOut(ctx, op, loss, logits);
  const int64_t n = logits.dim(0), e = logits.dim(1);
  Tensor sq = ctx.Empty({n}, DType::kF64);
  DispatchF32F64(op, logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (n > 0) {
      ZLossRowsKernel<T><<<Blocks(n * 32), kThreads, 0, Stream(ctx)>>>(
          n, e, Ptr<const T>(logits), 0.0, Ptr<double>(sq), nullptr);
      SM_CHECK_LAUNCH(ctx, op, "ZLossRowsKernel");
    }
    FinishSumKernel<T><<<1, kThreads, 0, Stream(ctx)>>>(
        n, Ptr<const double>(sq), coeff / static_cast<double>(denom), Ptr<T>(loss));
    SM_CHECK_LAUNCH(ctx, op, "FinishSumKernel");
  });
}

void ZLossBackwardImpl(const char* op, const ExecContext& ctx, const Tensor& logits, int64_t denom,
                       double coeff, double scale, const Tensor& d_logits) {
  CheckOnDevice(ctx, logits, op, "logits");
  CheckOnDevice(ctx, d_logits, op, "d_logits");
  SM_CHECK_MSG(logits.ndim() == 2 && d_logits.shape() == logits.shape() &&
                   d_logits.dtype() == logits.dtype(),
               op, " d_logits ", d_logits.DebugString(), " for logits ", logits.DebugString());
  const int64_t n = logits.dim(0), e = logits.dim(1);
  if (n == 0 || e == 0) return;
  const double factor = scale * coeff / static_cast<double>(denom);
  DispatchF32F64(op, logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ZLossRowsKernel<T><<<Blocks(n * 32), kThreads, 0, Stream(ctx)>>>(
        n, e, Ptr<const T>(logits), factor, nullptr, Ptr<T>(d_logits));
  });
  SM_CHECK_LAUNCH(ctx, op, "ZLossRowsKernel");
}

}  // namespace

void LoadBalancingLoss(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                       double coeff, const Tensor& loss) {
  SM_CHECK_MSG(expert_ids.ndim() == 2 && scores.ndim() == 2 && expert_ids.dim(0) == scores.dim(0),
               "LoadBalancingLoss scores ", scores.DebugString(), " expert_ids ",
               expert_ids.DebugString());
  const Tensor f = Fractions(ctx, "LoadBalancingLoss", expert_ids, scores.dim(1));
  LoadBalancingLossImpl("LoadBalancingLoss", ctx, scores, f, scores.dim(0), coeff, loss);
}

void LoadBalancingLossBackward(const ExecContext& ctx, const Tensor& expert_ids, double coeff,
                               double scale, const Tensor& d_scores) {
  SM_CHECK_MSG(
      d_scores.ndim() == 2 && expert_ids.ndim() == 2 && d_scores.dim(0) == expert_ids.dim(0),
      "LoadBalancingLossBackward d_scores ", d_scores.DebugString());
  const Tensor f = Fractions(ctx, "LoadBalancingLossBackward", expert_ids, d_scores.dim(1));
  LoadBalancingBackwardImpl("LoadBalancingLossBackward", ctx, f, d_scores.dim(0), coeff, scale,
                            d_scores);
}

void ZLoss(const ExecContext& ctx, const Tensor& logits, double coeff, const Tensor& loss) {
  ZLossImpl("ZLoss", ctx, logits, logits.dim(0), coeff, loss);
}

void ZLossBackward(const ExecContext& ctx, const Tensor& logits, double coeff, double scale,
                   const Tensor& d_logits) {
  ZLossBackwardImpl("ZLossBackward", ctx, logits, logits.dim(0), coeff, scale, d_logits);
}

void AssignmentCounts(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& counts) {
  CheckOnDevice(ctx, counts, "AssignmentCounts", "counts");
  SM_CHECK_MSG(counts.dtype() == DType::kF64 && counts.ndim() == 1,
               "AssignmentCounts: counts must be f64 [E], got ", counts.DebugString());
  Counts(ctx, "AssignmentCounts", expert_ids, counts.numel(), counts);
}

void LoadBalancingLossShare(const ExecContext& ctx, const Tensor& scores, const Tensor& fractions,
                            int64_t total_tokens, double coeff, const Tensor& loss) {
  const char* op = "LoadBalancingLossShare";
  CheckTotal(op, total_tokens, scores);
  CheckFractions(ctx, op, fractions, scores.dim(1));
  LoadBalancingLossImpl(op, ctx, scores, fractions, total_tokens, coeff, loss);
}

void LoadBalancingLossShareBackward(const ExecContext& ctx, const Tensor& fractions,
                                    int64_t total_tokens, double coeff, double scale,
                                    const Tensor& d_scores) {
  const char* op = "LoadBalancingLossShareBackward";
  CheckTotal(op, total_tokens, d_scores);
  CheckFractions(ctx, op, fractions, d_scores.dim(1));
  LoadBalancingBackwardImpl(op, ctx, fractions, total_tokens, coeff, scale, d_scores);
}

void ZLossShare(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens, double coeff,
                const Tensor& loss) {
  CheckTotal("ZLossShare", total_tokens, logits);
  ZLossImpl("ZLossShare", ctx, logits, total_tokens, coeff, loss);
}

void ZLossShareBackward(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens,
                        double coeff, double scale, const Tensor& d_logits) {
  CheckTotal("ZLossShareBackward", total_tokens, logits);
  ZLossBackwardImpl("ZLossShareBackward", ctx, logits, total_tokens, coeff, scale, d_logits);
}

}  // namespace scalemoe::cuda
