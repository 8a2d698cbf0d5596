// Router math on the GPU, the contracts of core/ops.h and the arithmetic of
// core/cpu/router_scores.cc, topk_routing.cc and moe_routing_stats.cc:
// RouterScores (+ backward), TopKRouting (+ backward), TopKWeightsAt, SelectedScores,
// AccumulateExpertLoads and ExpertBiasUpdate. (CapacityDrop sorts, so it
// lives with SortByExpert in permute_rows.cu.)
//
// One warp per token row; f32 rows compute in f32 and f64 rows in f64, like
// the CPU. Top-k selects in K warp-wide rounds: round r takes the largest
// key strictly after round r−1's in the order (key descending, index
// ascending), so ties go to the lower expert index exactly as the CPU's
// partial_sort comparator does, and the keys (score + bias) are formed in
// the element type as there. Every sum is a fixed-order warp or block sum.
// Expert ids out of [0, E) cannot be SM_CHECKed without a host read: they
// are skipped (the CPU fails on them).
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

__device__ __forceinline__ float Exp(float v) { return expf(v); }
__device__ __forceinline__ double Exp(double v) { return exp(v); }

template <typename A>
__device__ __forceinline__ A WarpMax(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v = fmax(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Warp-uniform loop over rows, one warp each.
#define SM_FOR_EACH_WARP_ROW(row, rows)                                                         \
  const int lane = threadIdx.x % 32;                                                            \
  const int64_t first_row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; \
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;                      \
  for (int64_t row = first_row; row < (rows); row += warps)

template <typename T>
__global__ void ScoresKernel(int64_t n, int64_t e, bool sigmoid, const T* x, T* s) {
  SM_FOR_EACH_WARP_ROW(t, n) {
    const T* xr = x + t * e;
    T* sr = s + t * e;
    if (sigmoid) {
      for (int64_t j = lane; j < e; j += 32) sr[j] = T(1) / (T(1) + Exp(-xr[j]));
      continue;
    }
    T mx = xr[0];
    for (int64_t j = lane; j < e; j += 32) mx = fmax(mx, xr[j]);
    mx = WarpMax(mx);
    T sum = 0;
    for (int64_t j = lane; j < e; j += 32) sum += Exp(xr[j] - mx);
    sum = WarpSum(sum);
    for (int64_t j = lane; j < e; j += 32) sr[j] = Exp(xr[j] - mx) / sum;
  }
}

template <typename T>
__global__ void ScoresBackwardKernel(int64_t n, int64_t e, bool sigmoid, const T* s, const T* ds,
                                     T* dx) {
  SM_FOR_EACH_WARP_ROW(t, n) {
    const T* sr = s + t * e;
    const T* dr = ds + t * e;
    T* xr = dx + t * e;
    if (sigmoid) {
      for (int64_t j = lane; j < e; j += 32) xr[j] = dr[j] * sr[j] * (T(1) - sr[j]);
      continue;
    }
    T dot = 0;  // softmax: dx = s ⊙ (ds − <s, ds>)
    for (int64_t j = lane; j < e; j += 32) dot += sr[j] * dr[j];
    dot = WarpSum(dot);
    for (int64_t j = lane; j < e; j += 32) xr[j] = sr[j] * (dr[j] - dot);
  }
}

// a before b in the selection order: larger key first, equal keys by index.
template <typename T>
__device__ __forceinline__ bool Before(T ka, int32_t a, T kb, int32_t b) {
  return ka > kb || (ka == kb && a < b);
}

template <typename T>
__global__ void TopKKernel(int64_t n, int64_t e, int k, bool normalize, const T* s, const T* bias,
                           int32_t* ids, T* w) {
  SM_FOR_EACH_WARP_ROW(t, n) {
    const T* sr = s + t * e;
    T prev_key = 0;
    int32_t prev = -1;  // none selected yet
    T sum = 0;
    for (int r = 0; r < k; ++r) {
      // This lane's best candidate strictly after the previous selection.
      T best_key = 0;
      int32_t best = -1;
      for (int64_t j = lane; j < e; j += 32) {
        const int32_t jj = static_cast<int32_t>(j);
        const T key = bias ? sr[j] + bias[j] : sr[j];
        if (prev >= 0 && !Before(prev_key, prev, key, jj)) continue;
        if (best < 0 || Before(key, jj, best_key, best)) {
          best_key = key;
          best = jj;
        }
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        const T other_key = __shfl_xor_sync(0xffffffffu, best_key, offset);
        const int32_t other = __shfl_xor_sync(0xffffffffu, best, offset);
        if (other >= 0 && (best < 0 || Before(other_key, other, best_key, best))) {
          best_key = other_key;
          best = other;
        }
      }
      prev_key = best_key;
      prev = best;
      if (lane == 0) {
        ids[t * k + r] = best;
        w[t * k + r] = sr[best];
      }
      sum += sr[best];  // every lane: the CPU's order of the sum
    }
    if (normalize) {
      __syncwarp();
      for (int r = lane; r < k; r += 32) w[t * k + r] /= sum;
    }
  }
}

// One thread per row: the scores at given ids, over their sum in slot order
// (TopKKernel's arithmetic: the same ids give the same bits). An id outside
// [0, E) gets weight 0 and adds nothing to the sum.
template <typename T>
__global__ void WeightsAtKernel(int64_t n, int64_t e, int k, bool normalize, const T* s,
                                const int32_t* ids, T* w) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += stride) {
    const T* sr = s + t * e;
    const int32_t* id = ids + t * k;
    T* wr = w + t * k;
    T sum = 0;
    for (int j = 0; j < k; ++j) {
      const bool valid = id[j] >= 0 && id[j] < e;
      wr[j] = valid ? sr[id[j]] : T(0);
      if (valid) sum += sr[id[j]];
    }
    if (normalize) {
      for (int j = 0; j < k; ++j) wr[j] /= sum;
    }
  }
}

// One thread per row (the K ids of a row are distinct: no two threads and
// no two slots write one element).
template <typename T>
__global__ void TopKBackwardKernel(int64_t n, int64_t e, int k, bool normalize, const T* s,
                                   const int32_t* ids, const T* dw, T* ds) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < n;
       t += stride) {
    const T* sr = s + t * e;
    T* dr = ds + t * e;
    const int32_t* id = ids + t * k;
    const T* dwr = dw + t * k;
    if (!normalize) {
      for (int j = 0; j < k; ++j) {
        if (id[j] >= 0 && id[j] < e) dr[id[j]] += dwr[j];
      }
      continue;
    }
    T sum = 0, dot = 0;
    for (int j = 0; j < k; ++j) {
      if (id[j] >= 0 && id[j] < e) sum += sr[id[j]];
    }
    for (int j = 0; j < k; ++j) {
      if (id[j] >= 0 && id[j] < e) dot += dwr[j] * sr[id[j]] / sum;
    }
    for (int j = 0; j < k; ++j) {
      if (id[j] >= 0 && id[j] < e) dr[id[j]] += (dwr[j] - dot) / sum;
    }
  }
}

template <typename T>
__global__ void SelectedScoresKernel(int64_t m, int64_t e, int64_t k, const T* s,
                                     const int32_t* ids, T* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m;
       i += stride) {
    const int32_t id = ids[i];
    if (id < 0 || id >= e) continue;
    out[i] = s[(i / k) * e + id];
  }
}

// One block: step[e] += counts[e], step[E] += assignments − Σ counts.
__global__ void AccumulateLoadsKernel(int64_t e, const int64_t* counts, int64_t assignments,
                                      int64_t* step) {
  long long kept = 0;
  for (int64_t i = threadIdx.x; i < e; i += blockDim.x) {
    step[i] += counts[i];
    kept += counts[i];
  }
  kept = BlockSum(kept);
  if (threadIdx.x == 0) step[e] += assignments - kept;
}

// One block: bias[e] += rate · sign(mean − loads[e]) unless *skip.
template <typename T>
__global__ void BiasUpdateKernel(int64_t e, const int64_t* loads, double rate, const int32_t* skip,
                                 T* bias) {
  if (skip != nullptr && *skip != 0) return;
  __shared__ double mean;
  double part = 0;  // integers: exact in any order
  for (int64_t i = threadIdx.x; i < e; i += blockDim.x) part += static_cast<double>(loads[i]);
  part = BlockSum(part);
  if (threadIdx.x == 0) mean = part / static_cast<double>(e);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < e; i += blockDim.x) {
    const double load = static_cast<double>(loads[i]);
    const double step = rate * (load < mean ? 1.0 : load > mean ? -1.0 : 0.0);
    bias[i] += static_cast<T>(step);
  }
}

#undef SM_FOR_EACH_WARP_ROW

// ---------------------------------------------------------------- launchers

void CheckRows(const ExecContext& ctx, const char* op, const char* what, const Tensor& a,
               const Tensor& b) {
  CheckOnDevice(ctx, b, op, what);
  SM_CHECK_MSG(a.ndim() == 2 && a.shape() == b.shape() && a.dtype() == b.dtype(), op, " ", what,
               " ", b.DebugString(), " for ", a.DebugString());
}

void CheckIds(const ExecContext& ctx, const char* op, const Tensor& ids, int64_t n, int64_t k) {
  CheckOnDevice(ctx, ids, op, "expert_ids");
  SM_CHECK_MSG(ids.dtype() == DType::kI32 && ids.ndim() == 2 && ids.dim(0) == n && ids.dim(1) == k,
               op, ": expert_ids must be i32 [", n, ", ", k, "], got ", ids.DebugString());
}

unsigned WarpBlocks(int64_t rows) { return Blocks(rows * 32); }

}  // namespace

void RouterScores(const ExecContext& ctx, ScoreFunction fn, const Tensor& logits,
                  const Tensor& scores) {
  CheckOnDevice(ctx, logits, "RouterScores", "logits");
  CheckRows(ctx, "RouterScores", "scores", logits, scores);
  const int64_t n = logits.dim(0), e = logits.dim(1);
  if (n == 0 || e == 0) return;
  DispatchF32F64("RouterScores", logits, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ScoresKernel<T><<<WarpBlocks(n), kThreads, 0, Stream(ctx)>>>(
        n, e, fn == ScoreFunction::kSigmoid, Ptr<const T>(logits), Ptr<T>(scores));
  });
  SM_CHECK_LAUNCH(ctx, "RouterScores", "ScoresKernel");
}

void RouterScoresBackward(const ExecContext& ctx, ScoreFunction fn, const Tensor& scores,
                          const Tensor& d_scores, const Tensor& d_logits) {
  CheckOnDevice(ctx, scores, "RouterScoresBackward", "scores");
  CheckRows(ctx, "RouterScoresBackward", "d_scores", scores, d_scores);
  CheckRows(ctx, "RouterScoresBackward", "d_logits", scores, d_logits);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  if (n == 0 || e == 0) return;
  DispatchF32F64("RouterScoresBackward", scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ScoresBackwardKernel<T><<<WarpBlocks(n), kThreads, 0, Stream(ctx)>>>(
        n, e, fn == ScoreFunction::kSigmoid, Ptr<const T>(scores), Ptr<const T>(d_scores),
        Ptr<T>(d_logits));
  });
  SM_CHECK_LAUNCH(ctx, "RouterScoresBackward", "ScoresBackwardKernel");
}

void TopKRouting(const ExecContext& ctx, const Tensor& scores, const Tensor& bias, int k,
                 bool normalize, const Tensor& expert_ids, const Tensor& weights) {
  CheckOnDevice(ctx, scores, "TopKRouting", "scores");
  SM_CHECK_MSG(scores.ndim() == 2 && k >= 1 && k <= scores.dim(1), "TopKRouting scores ",
               scores.DebugString(), " k=", k);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  SM_CHECK_MSG(e <= INT32_MAX, "TopKRouting: ", e, " experts do not fit i32 ids");
  CheckIds(ctx, "TopKRouting", expert_ids, n, k);
  CheckOnDevice(ctx, weights, "TopKRouting", "weights");
  SM_CHECK_MSG(weights.dtype() == scores.dtype() && weights.numel() == n * k,
               "TopKRouting weights ", weights.DebugString());
  if (bias.defined()) {
    CheckOnDevice(ctx, bias, "TopKRouting", "bias");
    SM_CHECK_MSG(bias.dtype() == scores.dtype() && bias.numel() == e, "TopKRouting bias ",
                 bias.DebugString());
  }
  if (n == 0) return;
  DispatchF32F64("TopKRouting", scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    TopKKernel<T><<<WarpBlocks(n), kThreads, 0, Stream(ctx)>>>(
        n, e, k, normalize, Ptr<const T>(scores), Ptr<const T>(bias), Ptr<int32_t>(expert_ids),
        Ptr<T>(weights));
  });
  SM_CHECK_LAUNCH(ctx, "TopKRouting", "TopKKernel");
}

void TopKWeightsAt(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                   bool normalize, const Tensor& weights) {
  CheckOnDevice(ctx, scores, "TopKWeightsAt", "scores");
  SM_CHECK_MSG(scores.ndim() == 2 && expert_ids.ndim() == 2, "TopKWeightsAt scores ",
               scores.DebugString(), " expert_ids ", expert_ids.DebugString());
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const int k = static_cast<int>(expert_ids.dim(1));
  CheckIds(ctx, "TopKWeightsAt", expert_ids, n, k);
  CheckOnDevice(ctx, weights, "TopKWeightsAt", "weights");
  SM_CHECK_MSG(weights.dtype() == scores.dtype() && weights.numel() == n * k,
               "TopKWeightsAt weights ", weights.DebugString());
  if (n == 0 || k == 0) return;
  DispatchF32F64("TopKWeightsAt", scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    WeightsAtKernel<T><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
        n, e, k, normalize, Ptr<const T>(scores), Ptr<const int32_t>(expert_ids), Ptr<T>(weights));
  });
  SM_CHECK_LAUNCH(ctx, "TopKWeightsAt", "WeightsAtKernel");
}

void TopKRoutingBackward(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                         bool normalize, const Tensor& d_weights, const Tensor& d_scores) {
  CheckOnDevice(ctx, scores, "TopKRoutingBackward", "scores");
  SM_CHECK_MSG(scores.ndim() == 2 && expert_ids.ndim() == 2, "TopKRoutingBackward scores ",
               scores.DebugString(), " expert_ids ", expert_ids.DebugString());
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const int k = static_cast<int>(expert_ids.dim(1));
  CheckIds(ctx, "TopKRoutingBackward", expert_ids, n, k);
  CheckRows(ctx, "TopKRoutingBackward", "d_scores", scores, d_scores);
  CheckOnDevice(ctx, d_weights, "TopKRoutingBackward", "d_weights");
  SM_CHECK_MSG(d_weights.numel() == n * k && d_weights.dtype() == scores.dtype(),
               "TopKRoutingBackward d_weights ", d_weights.DebugString());
  if (n == 0 || k == 0) return;
  DispatchF32F64("TopKRoutingBackward", scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    TopKBackwardKernel<T><<<Blocks(n), kThreads, 0, Stream(ctx)>>>(
        n, e, k, normalize, Ptr<const T>(scores), Ptr<const int32_t>(expert_ids),
        Ptr<const T>(d_weights), Ptr<T>(d_scores));
  });
  SM_CHECK_LAUNCH(ctx, "TopKRoutingBackward", "TopKBackwardKernel");
}

void SelectedScores(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                    const Tensor& out) {
  CheckOnDevice(ctx, scores, "SelectedScores", "scores");
  CheckOnDevice(ctx, expert_ids, "SelectedScores", "expert_ids");
  CheckOnDevice(ctx, out, "SelectedScores", "out");
  SM_CHECK_MSG(scores.ndim() == 2 && expert_ids.ndim() == 2 && expert_ids.dtype() == DType::kI32 &&
                   expert_ids.dim(0) == scores.dim(0) && out.numel() == expert_ids.numel() &&
                   out.dtype() == scores.dtype(),
               "SelectedScores: scores ", scores.DebugString(), " expert_ids ",
               expert_ids.DebugString(), " out ", out.DebugString());
  const int64_t m = expert_ids.numel(), e = scores.dim(1), k = expert_ids.dim(1);
  if (m == 0) return;
  DispatchFloat(scores, [&](auto tag) {
    using T = typename decltype(tag)::type;
    SelectedScoresKernel<T><<<Blocks(m), kThreads, 0, Stream(ctx)>>>(
        m, e, k, Ptr<const T>(scores), Ptr<const int32_t>(expert_ids), Ptr<T>(out));
  });
  SM_CHECK_LAUNCH(ctx, "SelectedScores", "SelectedScoresKernel");
}

void AccumulateExpertLoads(const ExecContext& ctx, const Tensor& counts, int64_t assignments,
                           const Tensor& step) {
  CheckOnDevice(ctx, counts, "AccumulateExpertLoads", "counts");
  CheckOnDevice(ctx, step, "AccumulateExpertLoads", "step");
  const int64_t e = counts.numel();
  SM_CHECK_MSG(
      counts.dtype() == DType::kI64 && step.dtype() == DType::kI64 && step.numel() == e + 1,
      "AccumulateExpertLoads: step ", step.DebugString(), " must be i64 [E + 1] for ",
      counts.DebugString());
  AccumulateLoadsKernel<<<1, kThreads, 0, Stream(ctx)>>>(e, Ptr<const int64_t>(counts), assignments,
                                                         Ptr<int64_t>(step));
  SM_CHECK_LAUNCH(ctx, "AccumulateExpertLoads", "AccumulateLoadsKernel");
}

void ExpertBiasUpdate(const ExecContext& ctx, const Tensor& loads, double rate, const Tensor& skip,
                      const Tensor& bias) {
  CheckOnDevice(ctx, loads, "ExpertBiasUpdate", "loads");
  CheckOnDevice(ctx, bias, "ExpertBiasUpdate", "bias");
  const int64_t e = loads.numel();
  SM_CHECK_MSG(loads.dtype() == DType::kI64 && bias.numel() == e && e > 0,
               "ExpertBiasUpdate: bias ", bias.DebugString(), " for loads ", loads.DebugString());
  if (skip.defined()) {
    CheckOnDevice(ctx, skip, "ExpertBiasUpdate", "skip");
    SM_CHECK_MSG(skip.dtype() == DType::kI32 && skip.numel() == 1, "ExpertBiasUpdate: skip ",
                 skip.DebugString());
  }
  DispatchF32F64("ExpertBiasUpdate", bias, [&](auto tag) {
    using T = typename decltype(tag)::type;
    BiasUpdateKernel<T><<<1, kThreads, 0, Stream(ctx)>>>(e, Ptr<const int64_t>(loads), rate,
                                                         Ptr<const int32_t>(skip), Ptr<T>(bias));
  });
  SM_CHECK_LAUNCH(ctx, "ExpertBiasUpdate", "BiasUpdateKernel");
}

}  // namespace scalemoe::cuda
