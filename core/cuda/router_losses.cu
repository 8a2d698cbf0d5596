// Router auxiliary losses on the GPU, the contracts of core/ops.h and the
// arithmetic of core/cpu/router_losses.cc (f32/f64 scores and logits; the
// statistics in f64 as there): load balancing and z-loss, single-rank and
// token-sharded, their backwards (accumulating), and AssignmentCounts.
//
// Deterministic: the per-expert counts are integer counts of one block per
// expert; P_e sums its column in a fixed order (BlockSum); the loss sums
// E (or N) terms in one block in a fixed order. No float atomics, no host
// reads: the loss stays a device scalar. Expert ids out of [0, E) (the CPU
// SM_CHECKs them) are not counted.
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// Block e: counts[e] = number of ids equal to e (exact in f64).
__global__ void CountIdsKernel(int64_t m, int64_t e, const int32_t* ids, double* counts) {
  for (int64_t x = blockIdx.x; x < e; x += gridDim.x) {
    long long c = 0;
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) c += ids[i] == x ? 1 : 0;
    c = BlockSum(c);
    if (threadIdx.x == 0) counts[x] = static_cast<double>(c);
    __syncthreads();  // BlockSum's scratch is reused by the next expert
  }
}

// counts → fractions f_e = counts / max(m, 1), in place.
__global__ void FractionsKernel(int64_t e, int64_t m, double* f) {
  for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < e;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    f[x] /= static_cast<double>(m > 1 ? m : 1);
  }
}

// Block e: terms[e] = f_e · (Σ_t s[t, e]) / denom, the column summed in f64.
template <typename T>
__global__ void BalanceTermsKernel(int64_t n, int64_t e, const T* s, const double* f, int64_t denom,
                                   double* terms) {
  for (int64_t x = blockIdx.x; x < e; x += gridDim.x) {
    double p = 0;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) p += static_cast<double>(s[t * e + x]);
    p = BlockSum(p);
    if (threadIdx.x == 0) terms[x] = f[x] * p / static_cast<double>(denom);
    __syncthreads();
  }
}

// One block: loss[0] = scale · Σ_i terms[i] (fixed order), in T.
template <typename T>
__global__ void FinishSumKernel(int64_t count, const double* terms, double scale, T* loss) {
  double acc = 0;
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

unsigned PerExpertBlocks(int64_t e) {
  return static_cast<unsigned>(std::clamp<int64_t>(e, 1, kMaxBlocks));
}

// counts [E] f64 of expert_ids on ctx's device (a temporary unless `into`).
Tensor Counts(const ExecContext& ctx, const char* op, const Tensor& expert_ids, int64_t e,
              const Tensor& into = Tensor()) {
  CheckOnDevice(ctx, expert_ids, op, "expert_ids");
  SM_CHECK_MSG(expert_ids.dtype() == DType::kI32 && expert_ids.ndim() == 2, op,
               ": expert_ids must be i32 [N, K], got ", expert_ids.DebugString());
  Tensor counts = into.defined() ? into : ctx.Empty({e}, DType::kF64);
  if (e == 0) return counts;
  CountIdsKernel<<<PerExpertBlocks(e), kThreads, 0, Stream(ctx)>>>(
      expert_ids.numel(), e, Ptr<const int32_t>(expert_ids), Ptr<double>(counts));
  SM_CHECK_LAUNCH(ctx, op, "CountIdsKernel");
  return counts;
}

// Fractions f_e of the N·K assignments of expert_ids, a temporary [E] f64.
Tensor Fractions(const ExecContext& ctx, const char* op, const Tensor& expert_ids, int64_t e) {
  Tensor f = Counts(ctx, op, expert_ids, e);
  if (e == 0) return f;
  FractionsKernel<<<Blocks(e), kThreads, 0, Stream(ctx)>>>(e, expert_ids.numel(), Ptr<double>(f));
  SM_CHECK_LAUNCH(ctx, op, "FractionsKernel");
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
  Tensor terms = ctx.Empty({e}, DType::kF64);
  DispatchF32F64(op, scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (e > 0) {
      BalanceTermsKernel<T><<<PerExpertBlocks(e), kThreads, 0, Stream(ctx)>>>(
          n, e, Ptr<const T>(scores), Ptr<const double>(f), denom, Ptr<double>(terms));
      SM_CHECK_LAUNCH(ctx, op, "BalanceTermsKernel");
    }
    FinishSumKernel<T><<<1, kThreads, 0, Stream(ctx)>>>(
        e, Ptr<const double>(terms), coeff * static_cast<double>(e), Ptr<T>(loss));
    SM_CHECK_LAUNCH(ctx, op, "FinishSumKernel");
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
