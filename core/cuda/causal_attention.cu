// Causal grouped-query attention on the GPU, the contract of core/ops.h
// (core/cpu/causal_attention.cc is the reference): the forward keeps only
// out and the per-row log-sum-exp, never the [B, H, T, T] probabilities;
// the backward recomputes them tile by tile (FlashAttention-2).
//
// Head dims 64 and 128 with f32 or bf16 inputs take the flash kernels: a
// block holds a tile of rows (queries in the forward and d_q, keys in
// d_k/d_v), each row spread over G = D/16 adjacent lanes that own the
// interleaved elements g, g + G, ... of it in registers; the other side
// streams through shared memory in tiles, in f32. Dots are summed over the
// G lanes by a fixed xor butterfly, so every lane holds the same bits.
// Everything else (f64, other head dims up to 256) takes simple one-warp-
// per-row kernels of the same math.
//
// Backward: D = rowsum(d_out ⊙ out) first (scratch [B, H, T]), then d_k and
// d_v with one block per (key tile, kv head, batch) looping over the query
// heads of its group and the query tiles in a fixed order, then d_q in its
// own pass. No atomics: the same inputs give the same bits.
//
// AttentionOptions::bf16_operands sends head dims 64 and 128 (f32 or bf16)
// to the tensor-core kernels of causal_attention_mma.cu instead (mma.sync),
// or of causal_attention_tc.cu (WMMA) when SCALEMOE_ATTENTION=wmma.
#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

#include "core/cuda/causal_attention_mma.h"
#include "core/cuda/causal_attention_tc.h"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"
#include "core/head_rows.h"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

constexpr int kFlashThreads = 256;
constexpr int kKeyTile = 32;    // keys in shared memory at once (forward, d_q)
constexpr int kQueryTile = 32;  // queries in shared memory at once (d_k/d_v)
constexpr int kMaxGenericDim = 256;
constexpr int kGenericWarps = 8;  // warps (rows) per block of the generic kernels

struct AttnDims {
  int b, t, h, kv, d;
  __host__ __device__ int group() const { return h / kv; }
};

__device__ __forceinline__ float Exp(float x) { return expf(x); }
__device__ __forceinline__ double Exp(double x) { return exp(x); }
__device__ __forceinline__ float Log(float x) { return logf(x); }
__device__ __forceinline__ double Log(double x) { return log(x); }

// Offsets of row (b, t, head) in q/out/d_out ([B, T, H, D]), k/v ([B, T, KV,
// D]) and lse/D ([B, H, T]).
__device__ __forceinline__ int64_t RowOffset(const AttnDims& d, int64_t b, int64_t t, int head,
                                             int heads) {
  return ((b * d.t + t) * heads + head) * d.d;
}
__device__ __forceinline__ int64_t LseIndex(const AttnDims& d, int64_t b, int h, int64_t t) {
  return (b * d.h + h) * static_cast<int64_t>(d.t) + t;
}

// The last valid row of the tile of `rows` rows starting at `first`.
__device__ __forceinline__ int64_t LastRow(const AttnDims& d, int64_t first, int rows) {
  return (first + rows < d.t ? first + rows : d.t) - 1;
}

template <int D>
struct Flash {
  static constexpr int kG = D / 16;                 // lanes per row
  static constexpr int kPer = D / kG;               // elements per lane
  static constexpr int kRows = kFlashThreads / kG;  // rows per block
};

// The flash backward's two dot products of a row in registers (a row's
// elements g, g + kG, ... of this lane) with a row in shared memory: s and
// dp, each summed over the row's kG lanes (every lane of the row gets both).
template <int D>
__device__ __forceinline__ void TwoGroupDots(float& s, const float (&a_s)[Flash<D>::kPer],
                                             const float* b_s, float& dp,
                                             const float (&a_dp)[Flash<D>::kPer], const float* b_dp,
                                             int g) {
  using F = Flash<D>;
  s = 0.0f;
  dp = 0.0f;
#pragma unroll
  for (int e = 0; e < F::kPer; ++e) {
    s += a_s[e] * b_s[e * F::kG + g];
    dp += a_dp[e] * b_dp[e * F::kG + g];
  }
  s = GroupSum<F::kG>(s);
  dp = GroupSum<F::kG>(dp);
}

// Loads rows [first, first + kTile) of one head of a [B, T, heads, D] tensor
// into s[kTile][D] as f32, zeros past T. All threads call it.
template <int D, int kTile, typename T>
__device__ __forceinline__ void LoadTile(const AttnDims& d, const T* x, int64_t b, int64_t first,
                                         int head, int heads, float (*s)[D]) {
  for (int e = threadIdx.x; e < kTile * D; e += kFlashThreads) {
    const int j = e / D, c = e % D;
    const int64_t row = first + j;
    s[j][c] = row < d.t ? ToAcc(x[RowOffset(d, b, row, head, heads) + c]) : 0.0f;
  }
}

// Block (query tile, h, b): out and lse for kRows queries, the key tiles up
// to the tile's last query streamed through shared memory with an online
// softmax. Tiles are taken last first (the longest work starts first).
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    FlashForwardKernel(AttnDims d, float scale, const T* q, const T* k, const T* v, T* out,
                       float* lse) {
  using F = Flash<D>;
  __shared__ float k_s[kKeyTile][D];
  __shared__ float v_s[kKeyTile][D];
  const int64_t tiles = (d.t + F::kRows - 1) / F::kRows;
  const int64_t first = (tiles - 1 - blockIdx.x) * F::kRows;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int g = threadIdx.x % F::kG;
  const int64_t row = first + threadIdx.x / F::kG;
  const bool valid = row < d.t;
  const int64_t base = valid ? RowOffset(d, b, row, h, d.h) : 0;
  float qr[F::kPer], acc[F::kPer];
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) {
    qr[i] = valid ? ToAcc(q[base + i * F::kG + g]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int64_t last = LastRow(d, first, F::kRows);
  for (int64_t k0 = 0; k0 <= last; k0 += kKeyTile) {
    __syncthreads();  // the previous tile is consumed
    LoadTile<D, kKeyTile>(d, k, b, k0, kvh, d.kv, k_s);
    LoadTile<D, kKeyTile>(d, v, b, k0, kvh, d.kv, v_s);
    __syncthreads();
    float s[kKeyTile];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeyTile; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < F::kPer; ++i) dot += qr[i] * k_s[j][i * F::kG + g];
      dot = GroupSum<F::kG>(dot);
      s[j] = k0 + j <= row ? dot * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    // Key 0 is in the first tile and every row attends to it: m_new is finite.
    const float m_new = fmaxf(m, tile_max);
    const float correction = Exp(m - m_new);
    l *= correction;
#pragma unroll
    for (int i = 0; i < F::kPer; ++i) acc[i] *= correction;
#pragma unroll
    for (int j = 0; j < kKeyTile; ++j) {
      const float p = Exp(s[j] - m_new);
      l += p;
#pragma unroll
      for (int i = 0; i < F::kPer; ++i) acc[i] += p * v_s[j][i * F::kG + g];
    }
    m = m_new;
  }
  if (!valid) return;
  const float inv = 1.0f / l;
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) out[base + i * F::kG + g] = FromAcc<T>(acc[i] * inv);
  if (g == 0) lse[LseIndex(d, b, h, row)] = m + Log(l);
}

// D[b, h, t] = Σ_c d_out·out over the row: one warp per row (b, t, h).
template <typename T>
__global__ void RowDotKernel(AttnDims d, const T* out, const T* d_out, Acc<T>* row_dot) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (r >= static_cast<int64_t>(d.b) * d.t * d.h) return;  // warp-uniform
  const int h = static_cast<int>(r % d.h);
  const int64_t t = (r / d.h) % d.t, b = r / (static_cast<int64_t>(d.h) * d.t);
  const int64_t base = r * d.d;
  A acc = 0;
  for (int c = lane; c < d.d; c += 32) acc += ToAcc(out[base + c]) * ToAcc(d_out[base + c]);
  acc = WarpSum(acc);
  if (lane == 0) row_dot[LseIndex(d, b, h, t)] = acc;
}

// Block (key tile, kv head, b): d_k and d_v of kRows keys, each summed over
// the query heads of the group (in order) and the queries t ≥ key (query
// tiles in order, each through shared memory).
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    FlashBackwardKvKernel(AttnDims d, float scale, const T* q, const T* k, const T* v,
                          const float* lse, const float* row_dot, const T* d_out, T* d_k, T* d_v) {
  using F = Flash<D>;
  __shared__ float q_s[kQueryTile][D];
  __shared__ float do_s[kQueryTile][D];
  __shared__ float lse_s[kQueryTile];
  __shared__ float dot_s[kQueryTile];
  const int64_t first = static_cast<int64_t>(blockIdx.x) * F::kRows;
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int g = threadIdx.x % F::kG;
  const int64_t key = first + threadIdx.x / F::kG;
  const bool valid = key < d.t;
  const int64_t base = valid ? RowOffset(d, b, key, kvh, d.kv) : 0;
  float kr[F::kPer], vr[F::kPer], dk[F::kPer], dv[F::kPer];
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) {
    kr[i] = valid ? ToAcc(k[base + i * F::kG + g]) : 0.0f;
    vr[i] = valid ? ToAcc(v[base + i * F::kG + g]) : 0.0f;
    dk[i] = dv[i] = 0.0f;
  }
  // Queries before the tile's first key see none of its keys.
  const int64_t q_first = first / kQueryTile * kQueryTile;
  for (int hg = 0; hg < d.group(); ++hg) {
    const int h = kvh * d.group() + hg;
    for (int64_t q0 = q_first; q0 < d.t; q0 += kQueryTile) {
      __syncthreads();  // the previous tile is consumed
      LoadTile<D, kQueryTile>(d, q, b, q0, h, d.h, q_s);
      LoadTile<D, kQueryTile>(d, d_out, b, q0, h, d.h, do_s);
      if (threadIdx.x < kQueryTile) {
        const int64_t t = q0 + threadIdx.x;
        lse_s[threadIdx.x] = t < d.t ? lse[LseIndex(d, b, h, t)] : 0.0f;
        dot_s[threadIdx.x] = t < d.t ? row_dot[LseIndex(d, b, h, t)] : 0.0f;
      }
      __syncthreads();
#pragma unroll 4
      for (int i = 0; i < kQueryTile; ++i) {
        float s, dp;
        TwoGroupDots<D>(s, kr, q_s[i], dp, vr, do_s[i], g);
        const int64_t t = q0 + i;
        const float p = key <= t && t < d.t ? Exp(s * scale - lse_s[i]) : 0.0f;
        const float ds = p * (dp - dot_s[i]) * scale;
#pragma unroll
        for (int e = 0; e < F::kPer; ++e) {
          dv[e] += p * do_s[i][e * F::kG + g];
          dk[e] += ds * q_s[i][e * F::kG + g];
        }
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) {
    d_k[base + i * F::kG + g] = FromAcc<T>(dk[i]);
    d_v[base + i * F::kG + g] = FromAcc<T>(dv[i]);
  }
}

// Block (query tile, h, b): d_q of kRows queries over the key tiles up to
// the tile's last query.
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    FlashBackwardQKernel(AttnDims d, float scale, const T* q, const T* k, const T* v,
                         const float* lse, const float* row_dot, const T* d_out, T* d_q) {
  using F = Flash<D>;
  __shared__ float k_s[kKeyTile][D];
  __shared__ float v_s[kKeyTile][D];
  const int64_t tiles = (d.t + F::kRows - 1) / F::kRows;
  const int64_t first = (tiles - 1 - blockIdx.x) * F::kRows;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int g = threadIdx.x % F::kG;
  const int64_t row = first + threadIdx.x / F::kG;
  const bool valid = row < d.t;
  const int64_t base = valid ? RowOffset(d, b, row, h, d.h) : 0;
  float qr[F::kPer], dor[F::kPer], dq[F::kPer];
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) {
    qr[i] = valid ? ToAcc(q[base + i * F::kG + g]) : 0.0f;
    dor[i] = valid ? ToAcc(d_out[base + i * F::kG + g]) : 0.0f;
    dq[i] = 0.0f;
  }
  const float row_lse = valid ? lse[LseIndex(d, b, h, row)] : 0.0f;
  const float row_d = valid ? row_dot[LseIndex(d, b, h, row)] : 0.0f;
  const int64_t last = LastRow(d, first, F::kRows);
  for (int64_t k0 = 0; k0 <= last; k0 += kKeyTile) {
    __syncthreads();
    LoadTile<D, kKeyTile>(d, k, b, k0, kvh, d.kv, k_s);
    LoadTile<D, kKeyTile>(d, v, b, k0, kvh, d.kv, v_s);
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kKeyTile; ++j) {
      float s, dp;
      TwoGroupDots<D>(s, qr, k_s[j], dp, dor, v_s[j], g);
      const float p = k0 + j <= row ? Exp(s * scale - row_lse) : 0.0f;
      const float ds = p * (dp - row_d) * scale;
#pragma unroll
      for (int i = 0; i < F::kPer; ++i) dq[i] += ds * k_s[j][i * F::kG + g];
    }
  }
  if (!valid) return;
#pragma unroll
  for (int i = 0; i < F::kPer; ++i) d_q[base + i * F::kG + g] = FromAcc<T>(dq[i]);
}

// ---------------------------------------------------------------- generic kernels
// One warp per row; lane owns elements lane, lane + 32, ... (D ≤ 256).

constexpr int kGenericPer = kMaxGenericDim / 32;

// The backward's two warp-wide dot products of a row held in registers with
// a row in memory: s = Σ a_s·b_s and dp = Σ a_dp·b_dp over dim elements,
// each lane its own elements, then a fixed butterfly (every lane gets both).
template <typename T>
__device__ __forceinline__ void TwoWarpDots(Acc<T>& s, const Acc<T> (&a_s)[kGenericPer],
                                            const T* b_s, Acc<T>& dp,
                                            const Acc<T> (&a_dp)[kGenericPer], const T* b_dp,
                                            int lane, int dim) {
  s = 0;
  dp = 0;
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    if (c < dim) {
      s += a_s[i] * ToAcc(b_s[c]);
      dp += a_dp[i] * ToAcc(b_dp[c]);
    }
  }
  s = WarpSum(s);
  dp = WarpSum(dp);
}

// Row (b, t, h): an online softmax over keys 0..t.
template <typename T>
__global__ void GenericForwardKernel(AttnDims d, Acc<T> scale, const T* q, const T* k, const T* v,
                                     T* out, Acc<T>* lse) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (r >= static_cast<int64_t>(d.b) * d.t * d.h) return;  // warp-uniform
  const int h = static_cast<int>(r % d.h), kvh = h / d.group();
  const int64_t t = (r / d.h) % d.t, b = r / (static_cast<int64_t>(d.h) * d.t);
  const int64_t base = r * d.d;
  A qr[kGenericPer], acc[kGenericPer];
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    qr[i] = c < d.d ? ToAcc(q[base + c]) : A(0);
    acc[i] = 0;
  }
  A m = -INFINITY, l = 0;
  for (int64_t j = 0; j <= t; ++j) {
    const int64_t kb = RowOffset(d, b, j, kvh, d.kv);
    A dot = 0;
#pragma unroll
    for (int i = 0; i < kGenericPer; ++i) {
      const int c = lane + 32 * i;
      if (c < d.d) dot += qr[i] * ToAcc(k[kb + c]);
    }
    const A s = WarpSum(dot) * scale;
    const A m_new = s > m ? s : m;
    const A correction = Exp(m - m_new), p = Exp(s - m_new);
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < kGenericPer; ++i) {
      const int c = lane + 32 * i;
      if (c < d.d) acc[i] = acc[i] * correction + p * ToAcc(v[kb + c]);
    }
    m = m_new;
  }
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    if (c < d.d) out[base + c] = FromAcc<T>(acc[i] / l);
  }
  if (lane == 0) lse[LseIndex(d, b, h, t)] = m + Log(l);
}

// Key row (b, j, kv head): d_k, d_v over the group's heads in order and the
// queries t ≥ j in order.
template <typename T>
__global__ void GenericBackwardKvKernel(AttnDims d, Acc<T> scale, const T* q, const T* k,
                                        const T* v, const Acc<T>* lse, const Acc<T>* row_dot,
                                        const T* d_out, T* d_k, T* d_v) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (r >= static_cast<int64_t>(d.b) * d.t * d.kv) return;  // warp-uniform
  const int kvh = static_cast<int>(r % d.kv);
  const int64_t j = (r / d.kv) % d.t, b = r / (static_cast<int64_t>(d.kv) * d.t);
  const int64_t base = r * d.d;
  A kr[kGenericPer], vr[kGenericPer], dk[kGenericPer], dv[kGenericPer];
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    kr[i] = c < d.d ? ToAcc(k[base + c]) : A(0);
    vr[i] = c < d.d ? ToAcc(v[base + c]) : A(0);
    dk[i] = dv[i] = 0;
  }
  for (int hg = 0; hg < d.group(); ++hg) {
    const int h = kvh * d.group() + hg;
    for (int64_t t = j; t < d.t; ++t) {
      const int64_t qb = RowOffset(d, b, t, h, d.h);
      A s, dp;
      TwoWarpDots(s, kr, q + qb, dp, vr, d_out + qb, lane, d.d);
      const A p = Exp(s * scale - lse[LseIndex(d, b, h, t)]);
      const A ds = p * (dp - row_dot[LseIndex(d, b, h, t)]) * scale;
#pragma unroll
      for (int i = 0; i < kGenericPer; ++i) {
        const int c = lane + 32 * i;
        if (c < d.d) {
          dv[i] += p * ToAcc(d_out[qb + c]);
          dk[i] += ds * ToAcc(q[qb + c]);
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    if (c < d.d) {
      d_k[base + c] = FromAcc<T>(dk[i]);
      d_v[base + c] = FromAcc<T>(dv[i]);
    }
  }
}

// Query row (b, t, h): d_q over keys 0..t in order.
template <typename T>
__global__ void GenericBackwardQKernel(AttnDims d, Acc<T> scale, const T* q, const T* k, const T* v,
                                       const Acc<T>* lse, const Acc<T>* row_dot, const T* d_out,
                                       T* d_q) {
  using A = Acc<T>;
  const int lane = threadIdx.x % 32;
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (r >= static_cast<int64_t>(d.b) * d.t * d.h) return;  // warp-uniform
  const int h = static_cast<int>(r % d.h), kvh = h / d.group();
  const int64_t t = (r / d.h) % d.t, b = r / (static_cast<int64_t>(d.h) * d.t);
  const int64_t base = r * d.d;
  A qr[kGenericPer], dor[kGenericPer], dq[kGenericPer];
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    qr[i] = c < d.d ? ToAcc(q[base + c]) : A(0);
    dor[i] = c < d.d ? ToAcc(d_out[base + c]) : A(0);
    dq[i] = 0;
  }
  const A row_lse = lse[LseIndex(d, b, h, t)], row_d = row_dot[LseIndex(d, b, h, t)];
  for (int64_t j = 0; j <= t; ++j) {
    const int64_t kb = RowOffset(d, b, j, kvh, d.kv);
    A s, dp;
    TwoWarpDots(s, qr, k + kb, dp, dor, v + kb, lane, d.d);
    const A p = Exp(s * scale - row_lse);
    const A ds = p * (dp - row_d) * scale;
#pragma unroll
    for (int i = 0; i < kGenericPer; ++i) {
      const int c = lane + 32 * i;
      if (c < d.d) dq[i] += ds * ToAcc(k[kb + c]);
    }
  }
#pragma unroll
  for (int i = 0; i < kGenericPer; ++i) {
    const int c = lane + 32 * i;
    if (c < d.d) d_q[base + c] = FromAcc<T>(dq[i]);
  }
}

// ---------------------------------------------------------------- launchers

// q, k and v may be head rows (core/head_rows.h); AttentionTakesHeadRows
// says which paths read them so, the others run on contiguous copies.
AttnDims CheckAttention(const ExecContext& ctx, const char* op, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse) {
  CheckHeadRowsOnDevice(ctx, q, op, "q");
  SM_CHECK_MSG(q.ndim() == 4, op, " q must be [B, T, H, D], got ", q.DebugString());
  for (const auto& [t, what] : {std::pair{&k, "k"}, {&v, "v"}}) {
    CheckHeadRowsOnDevice(ctx, *t, op, what);
    SM_CHECK_MSG(t->ndim() == 4 && t->dim(0) == q.dim(0) && t->dim(1) == q.dim(1) &&
                     t->dim(3) == q.dim(3) && t->dim(2) == k.dim(2) && t->dtype() == q.dtype(),
                 op, " ", what, " ", t->DebugString(), " for q ", q.DebugString());
  }
  CheckOnDevice(ctx, out, op, "out");
  SM_CHECK_MSG(out.shape() == q.shape() && out.dtype() == q.dtype(), op, " out ", out.DebugString(),
               " for q ", q.DebugString());
  for (int i = 0; i < 4; ++i) {
    SM_CHECK_MSG(q.dim(i) < (int64_t{1} << 31), op, " q ", q.DebugString(), " too large");
  }
  const AttnDims d{static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)),
                   static_cast<int>(q.dim(2)), static_cast<int>(k.dim(2)),
                   static_cast<int>(q.dim(3))};
  SM_CHECK_MSG(d.kv > 0 && d.h % d.kv == 0, op, ": kv heads ", d.kv, " must divide query heads ",
               d.h);
  SM_CHECK_MSG(d.h <= 65535 && d.b <= 65535, op, ": grid limits (H, B ≤ 65535), got ",
               q.DebugString());
  SM_CHECK_MSG(d.d <= kMaxGenericDim, op, ": head dim ", d.d, " above ", kMaxGenericDim);
  CheckOnDevice(ctx, lse, op, "lse");
  const DType lse_dtype = q.dtype() == DType::kF64 ? DType::kF64 : DType::kF32;
  SM_CHECK_MSG(lse.ndim() == 3 && lse.dim(0) == d.b && lse.dim(1) == d.h && lse.dim(2) == d.t &&
                   lse.dtype() == lse_dtype,
               op, " lse must be [B, H, T] ", DTypeName(lse_dtype), ", got ", lse.DebugString());
  return d;
}

// The flash kernels' head dims, for f32 and bf16.
template <typename T>
constexpr bool kFlashType = !std::is_same_v<T, double>;
bool FlashDim(int d) { return d == 64 || d == 128; }

unsigned GenericBlocks(int64_t rows) {
  return static_cast<unsigned>((rows + kGenericWarps - 1) / kGenericWarps);
}

template <typename T, int D>
dim3 FlashGrid(const AttnDims& d, int heads) {
  return dim3(static_cast<unsigned>((d.t + Flash<D>::kRows - 1) / Flash<D>::kRows), heads, d.b);
}

// Whether the path these operands take reads them where they lie: all
// contiguous, or the mma.sync kernels on bf16 head rows whose rows start
// 16 bytes apart (cp.async); else the caller makes contiguous copies.
bool AttentionTakesHeadRows(const AttentionOptions& options,
                            std::initializer_list<const Tensor*> tensors) {
  bool contiguous = true, mma_rows = true;
  for (const Tensor* t : tensors) {
    contiguous = contiguous && t->is_contiguous();
    const HeadRows rows = CheckHeadRows(*t, "CausalAttention", "operand");
    mma_rows = mma_rows && t->dtype() == DType::kBF16 && rows.stride % 8 == 0 &&
               reinterpret_cast<uintptr_t>(t->raw_data()) % 16 == 0;
  }
  if (contiguous) return true;
  const Tensor& q = **tensors.begin();
  return options.bf16_operands && AttentionTcFits(q) && UseAttentionMma() && mma_rows;
}

}  // namespace

void CausalAttention(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& out, const Tensor& lse, const AttentionOptions& options) {
  const char* op = "CausalAttention";
  const AttnDims d = CheckAttention(ctx, op, q, k, v, out, lse);
  if (q.numel() == 0) return;
  if (!AttentionTakesHeadRows(options, {&q, &k, &v})) {
    return cuda::CausalAttention(ctx, ContiguousHeads(ctx, q), ContiguousHeads(ctx, k),
                                 ContiguousHeads(ctx, v), out, lse, options);
  }
  if (options.bf16_operands && AttentionTcFits(q)) {
    if (UseAttentionMma()) {
      CausalAttentionMma(ctx, q, k, v, out, lse);
    } else {
      CausalAttentionTc(ctx, q, k, v, out, lse);
    }
    return;
  }
  DispatchFloat(q, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = Acc<T>;
    const A scale = static_cast<A>(1.0 / std::sqrt(static_cast<double>(d.d)));
    const T *qp = Ptr<const T>(q), *kp = Ptr<const T>(k), *vp = Ptr<const T>(v);
    if constexpr (kFlashType<T>) {
      if (d.d == 64) {
        FlashForwardKernel<T, 64><<<FlashGrid<T, 64>(d, d.h), kFlashThreads, 0, Stream(ctx)>>>(
            d, scale, qp, kp, vp, Ptr<T>(out), Ptr<float>(lse));
        SM_CHECK_LAUNCH(ctx, op, "FlashForwardKernel<64>");
        return;
      }
      if (d.d == 128) {
        FlashForwardKernel<T, 128><<<FlashGrid<T, 128>(d, d.h), kFlashThreads, 0, Stream(ctx)>>>(
            d, scale, qp, kp, vp, Ptr<T>(out), Ptr<float>(lse));
        SM_CHECK_LAUNCH(ctx, op, "FlashForwardKernel<128>");
        return;
      }
    }
    GenericForwardKernel<T>
        <<<GenericBlocks(static_cast<int64_t>(d.b) * d.t * d.h), kGenericWarps * 32, 0,
           Stream(ctx)>>>(d, scale, qp, kp, vp, Ptr<T>(out), Ptr<A>(lse));
    SM_CHECK_LAUNCH(ctx, op, "GenericForwardKernel");
  });
}

void CausalAttentionBackward(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                             const Tensor& v, const Tensor& out, const Tensor& lse,
                             const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                             const Tensor& d_v, const AttentionOptions& options) {
  const char* op = "CausalAttentionBackward";
  const AttnDims d = CheckAttention(ctx, op, q, k, v, out, lse);
  CheckOnDevice(ctx, d_out, op, "d_out");
  for (const auto& [grad, like, what] :
       {std::tuple{&d_out, &q, "d_out"}, {&d_q, &q, "d_q"}, {&d_k, &k, "d_k"}, {&d_v, &v, "d_v"}}) {
    CheckHeadRowsOnDevice(ctx, *grad, op, what);
    SM_CHECK_MSG(grad->shape() == like->shape() && grad->dtype() == q.dtype(), op, " ", what, " ",
                 grad->DebugString(), " for ", like->DebugString());
  }
  if (q.numel() == 0) return;
  if (!AttentionTakesHeadRows(options, {&q, &k, &v, &d_q, &d_k, &d_v})) {
    BackwardOnContiguousHeads(ctx, q, k, v, d_q, d_k, d_v,
                              [&](const Tensor& q2, const Tensor& k2, const Tensor& v2,
                                  const Tensor& dq, const Tensor& dk, const Tensor& dv) {
                                cuda::CausalAttentionBackward(ctx, q2, k2, v2, out, lse, d_out, dq,
                                                              dk, dv, options);
                              });
    return;
  }
  if (options.bf16_operands && AttentionTcFits(q)) {
    if (UseAttentionMma()) {
      CausalAttentionBackwardMma(ctx, q, k, v, out, lse, d_out, d_q, d_k, d_v);
    } else {
      CausalAttentionBackwardTc(ctx, q, k, v, out, lse, d_out, d_q, d_k, d_v);
    }
    return;
  }
  // D = rowsum(d_out ⊙ out), in lse's dtype; scratch for this call.
  const Tensor row_dot = ctx.Empty(lse.shape(), lse.dtype());
  DispatchFloat(q, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = Acc<T>;
    const A scale = static_cast<A>(1.0 / std::sqrt(static_cast<double>(d.d)));
    const T *qp = Ptr<const T>(q), *kp = Ptr<const T>(k), *vp = Ptr<const T>(v);
    const T* dop = Ptr<const T>(d_out);
    const A* lp = Ptr<const A>(lse);
    A* dp = Ptr<A>(row_dot);
    const int64_t q_rows = static_cast<int64_t>(d.b) * d.t * d.h;
    RowDotKernel<T><<<GenericBlocks(q_rows), kGenericWarps * 32, 0, Stream(ctx)>>>(
        d, Ptr<const T>(out), dop, dp);
    SM_CHECK_LAUNCH(ctx, op, "RowDotKernel");
    if constexpr (kFlashType<T>) {
      if (FlashDim(d.d)) {
        auto launch = [&](auto dim) {
          constexpr int D = decltype(dim)::value;
          FlashBackwardKvKernel<T, D><<<FlashGrid<T, D>(d, d.kv), kFlashThreads, 0, Stream(ctx)>>>(
              d, scale, qp, kp, vp, lp, dp, dop, Ptr<T>(d_k), Ptr<T>(d_v));
          SM_CHECK_LAUNCH(ctx, op, "FlashBackwardKvKernel");
          FlashBackwardQKernel<T, D><<<FlashGrid<T, D>(d, d.h), kFlashThreads, 0, Stream(ctx)>>>(
              d, scale, qp, kp, vp, lp, dp, dop, Ptr<T>(d_q));
          SM_CHECK_LAUNCH(ctx, op, "FlashBackwardQKernel");
        };
        if (d.d == 64) {
          launch(std::integral_constant<int, 64>{});
        } else {
          launch(std::integral_constant<int, 128>{});
        }
        return;
      }
    }
    GenericBackwardKvKernel<T>
        <<<GenericBlocks(static_cast<int64_t>(d.b) * d.t * d.kv), kGenericWarps * 32, 0,
           Stream(ctx)>>>(d, scale, qp, kp, vp, lp, dp, dop, Ptr<T>(d_k), Ptr<T>(d_v));
    SM_CHECK_LAUNCH(ctx, op, "GenericBackwardKvKernel");
    GenericBackwardQKernel<T><<<GenericBlocks(q_rows), kGenericWarps * 32, 0, Stream(ctx)>>>(
        d, scale, qp, kp, vp, lp, dp, dop, Ptr<T>(d_q));
    SM_CHECK_LAUNCH(ctx, op, "GenericBackwardQKernel");
  });
}

}  // namespace scalemoe::cuda
