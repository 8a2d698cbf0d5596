// Causal grouped-query attention on tensor cores, the path of
// AttentionOptions::bf16_operands (core/ops.h has the contract;
// core/cuda/causal_attention.cu the exact kernels and the dispatch).
// FlashAttention-2 with WMMA 16x16x16 bf16 fragments and f32 accumulators:
// - operands: q, k, v (and d_out) as bf16: the tensors themselves when they
//   are bf16, else one converted copy per call. The probabilities P and dS
//   are rounded to bf16 before their matmuls; the softmax statistics, lse
//   and every accumulator are f32; outputs keep the tensors' dtype.
// - tiles: a block holds 64 rows (4 warps x 16), the other side streams in
//   tiles of 64 through shared memory (cp.async, double buffered). Query
//   tile i sees key tiles 0..i; only the diagonal tile needs the mask (it is
//   also the only one that reaches past T).
// - forward: block (query tile, h, b). Per warp S = Q Kᵀ is staged in shared
//   memory (f32), two lanes per row take the online-softmax step and write
//   P (bf16) and the row's rescale factor; O stays in accumulator fragments.
// - backward: D = rowsum(d_out ⊙ out) first; block (key tile, kv head, b)
//   sums dV = Pᵀ dO and dK = dSᵀ Q over the group's query heads and the query
//   tiles in a fixed order; block (query tile, h, b) sums dQ = dS K over the
//   key tiles in order. P = exp(S − lse) and dS = P ⊙ (dP − D) are formed
//   element-wise in the accumulator fragments. No atomics: the same inputs
//   give the same bits.
// Element positions inside an accumulator fragment are never assumed: a
// row-index and a column-index fragment are loaded (load_matrix_sync) from a
// 16x16 table, which gives every accumulator fragment of the type the same
// element layout, so element i of any fragment sits at (row.x[i], col.x[i]).
#include <mma.h>

#include <cmath>
#include <type_traits>

#include "core/cuda/attention_launch.cuh"
#include "core/cuda/attention_tiles.cuh"
#include "core/cuda/causal_attention_tc.h"
#include "core/cuda/cp_async.cuh"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/row_reduce.cuh"

namespace scalemoe::cuda {
namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------- kernels

constexpr int kWarps = kAttnWarps;
constexpr int kTcThreads = kAttnThreads;
constexpr int kTile = kAttnTile;
constexpr int kPad = kAttnPad;
constexpr int kPLd = kTile + kPad;  // per-warp bf16 rows of P or dS (16 x kTile)
constexpr int kSLd = kTile + 4;     // per-warp f32 score rows (16 x kTile)
constexpr int kIdsBytes = 2 * 256 * 4;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;

// The backward's two 16 x 16 products of 16-row blocks over D, one fragment
// pair at a time: s = a_s · b_sᵀ and dp = a_dp · b_dpᵀ (rows of ld
// elements). Interleaved as the kernels always did.
template <int D>
__device__ __forceinline__ void TwoRowProducts(AccFrag& s, const bf16* a_s, const bf16* b_s,
                                               AccFrag& dp, const bf16* a_dp, const bf16* b_dp,
                                               int ld) {
  wmma::fill_fragment(s, 0.0f);
  wmma::fill_fragment(dp, 0.0f);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    FragA a;
    FragBCol bc;
    wmma::load_matrix_sync(a, a_s + kk * 16, ld);
    wmma::load_matrix_sync(bc, b_s + kk * 16, ld);
    wmma::mma_sync(s, a, bc, s);
    wmma::load_matrix_sync(a, a_dp + kk * 16, ld);
    wmma::load_matrix_sync(bc, b_dp + kk * 16, ld);
    wmma::mma_sync(dp, a, bc, dp);
  }
}

// Every accumulator of a row block's D / 16 fragments times `scale` (the
// softmax scale the backward applies at the end).
template <int D>
__device__ __forceinline__ void ScaleFragments(AccFrag (&f)[D / 16], float scale) {
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
#pragma unroll
    for (int i = 0; i < f[n].num_elements; ++i) f[n].x[i] *= scale;
  }
}

constexpr int MaxOf(int a, int b) { return a > b ? a : b; }

// ids[0, 256): the row of each element of a 16x16 table, ids[256, 512): its
// column (all threads call it; visible after the next __syncthreads).
__device__ __forceinline__ void FillIndexTable(float* ids) {
  for (int e = threadIdx.x; e < 256; e += kTcThreads) {
    ids[e] = static_cast<float>(e / 16);
    ids[256 + e] = static_cast<float>(e % 16);
  }
}

// A warp's 16 x D accumulators into rows [first, first + 16) of a head
// (rows `stride` elements apart; rows at or past `limit` skipped), through
// the warp's f32 staging rows `stage` (16 x (D + 4)).
template <typename T, int D>
__device__ __forceinline__ void StoreRows(const AccFrag (&acc)[D / 16], float* stage, T* head,
                                          int64_t stride, int64_t first, int64_t limit) {
  constexpr int kLd = D + 4;
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
    wmma::store_matrix_sync(stage + n * 16, acc[n], kLd, wmma::mem_row_major);
  }
  __syncwarp();
  for (int e = threadIdx.x % 32; e < 16 * D; e += 32) {
    const int r = e / D, c = e % D;
    const int64_t row = first + r;
    if (row < limit) head[row * stride + c] = FromAcc<T>(stage[r * kLd + c]);
  }
}

// Shared memory of the forward, in bytes from the start.
template <int D>
struct FwdSmem {
  using Tile = AttnRows<D>;
  static constexpr int kKv = 0;  // 2 stages x {K, V}; the output staging at the end
  static constexpr int kS = kKv + 4 * Tile::kBytes;  // per-warp scores; the Q tile first
  static constexpr int kP = kS + MaxOf(kWarps * 16 * kSLd * 4, Tile::kBytes);  // per-warp P
  static constexpr int kFactor = kP + kWarps * 16 * kPLd * 2;  // per-warp row factors
  static constexpr int kIds = kFactor + kWarps * 16 * 4;
  static constexpr int kBytes = kIds + kIdsBytes;
  static_assert(kWarps * 16 * (D + 4) * 4 <= 4 * Tile::kBytes, "output staging fits the stages");
};

// Block (query tile, h, b): out and lse of kTile queries. Tiles are taken
// last first (the longest work starts first).
template <typename T, int D>
__global__ void __launch_bounds__(kTcThreads)
    FlashTcForwardKernel(AttnDims d, float scale_log2, const bf16* __restrict__ q,
                         const bf16* __restrict__ k, const bf16* __restrict__ v,
                         T* __restrict__ out, float* __restrict__ lse) {
  using Tile = AttnRows<D>;
  using L = FwdSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* kv_s = reinterpret_cast<bf16*>(smem + L::kKv);
  float* ids = reinterpret_cast<float*>(smem + L::kIds);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* s_w = reinterpret_cast<float*>(smem + L::kS) + warp * 16 * kSLd;
  bf16* p_w = reinterpret_cast<bf16*>(smem + L::kP) + warp * 16 * kPLd;
  float* factor_w = reinterpret_cast<float*>(smem + L::kFactor) + warp * 16;

  const int tile = d.tiles() - 1 - static_cast<int>(blockIdx.x);
  const int64_t q0 = static_cast<int64_t>(tile) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  auto load_kv = [&](int stage, int j) {
    bf16* k_s = kv_s + 2 * stage * Tile::kElems;
    const int64_t first = static_cast<int64_t>(j) * kTile;
    LoadAttnTile<D>(k_s, k + kv_head, kv_stride, first, d.t);
    LoadAttnTile<D>(k_s + Tile::kElems, v + kv_head, kv_stride, first, d.t);
  };

  // The Q tile lands in the score rows' memory and is read into fragments once.
  bf16* q_s = reinterpret_cast<bf16*>(smem + L::kS);
  LoadAttnTile<D>(q_s, q + q_head, q_stride, q0, d.t);
  load_kv(0, 0);
  CpAsyncCommit();
  FillIndexTable(ids);
  CpAsyncWait<0>();
  __syncthreads();
  FragA qf[D / 16];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    wmma::load_matrix_sync(qf[kk], q_s + warp * 16 * Tile::kLd + kk * 16, Tile::kLd);
  }
  AccFrag row_id;
  wmma::load_matrix_sync(row_id, ids, 16, wmma::mem_row_major);
  __syncthreads();  // the Q tile's memory becomes score rows

  AccFrag o[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(o[n], 0.0f);
  // The softmax step of row r: lanes 2r and 2r + 1, the even and the odd
  // keys (interleaved: fewer shared-memory bank conflicts than halves).
  const int r = lane / 2, half = lane % 2;
  const int64_t row = q0 + warp * 16 + r;
  float m = -INFINITY, l = 0.0f;  // running max (log2 units) and sum
  for (int j = 0; j <= tile; ++j) {
    const int stage = j & 1;
    if (j < tile) load_kv(stage ^ 1, j + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();  // tile j has landed; tile j + 1 may be in flight
    __syncthreads();
    const bf16* k_s = kv_s + 2 * stage * Tile::kElems;
    const bf16* v_s = k_s + Tile::kElems;
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {
      AccFrag s;
      wmma::fill_fragment(s, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        FragBCol kb;
        wmma::load_matrix_sync(kb, k_s + n * 16 * Tile::kLd + kk * 16, Tile::kLd);
        wmma::mma_sync(s, qf[kk], kb, s);
      }
      wmma::store_matrix_sync(s_w + n * 16, s, kSLd, wmma::mem_row_major);
    }
    __syncwarp();
    const int64_t key0 = static_cast<int64_t>(j) * kTile + half;
    const bool diag = j == tile;
    const float* s_row = s_w + r * kSLd + half;
    float tile_max = -INFINITY;
#pragma unroll 8
    for (int c = 0; c < kTile; c += 2) {
      const bool keep = !diag || (key0 + c <= row && key0 + c < d.t);
      tile_max = fmaxf(tile_max, keep ? s_row[c] * scale_log2 : -INFINITY);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    // Every row keeps key 0 (tile 0): m_new is finite from the first tile on.
    const float m_new = fmaxf(m, tile_max);
    const float factor = exp2f(m - m_new);
    float sum = 0.0f;
    bf16* p_row = p_w + r * kPLd + half;
#pragma unroll 8
    for (int c = 0; c < kTile; c += 2) {
      const bool keep = !diag || (key0 + c <= row && key0 + c < d.t);
      const float p = keep ? exp2f(s_row[c] * scale_log2 - m_new) : 0.0f;
      sum += p;
      p_row[c] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * factor + sum;
    m = m_new;
    if (half == 0) factor_w[r] = factor;
    __syncwarp();
    // O = diag(factor) O + P V.
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
#pragma unroll
      for (int i = 0; i < o[n].num_elements; ++i) {
        o[n].x[i] *= factor_w[static_cast<int>(row_id.x[i])];
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      FragA pa;
      wmma::load_matrix_sync(pa, p_w + kk * 16, kPLd);
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
        FragBRow vb;
        wmma::load_matrix_sync(vb, v_s + kk * 16 * Tile::kLd + n * 16, Tile::kLd);
        wmma::mma_sync(o[n], pa, vb, o[n]);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next; the last one frees the stages
  }
  // out = O / l through the stages' memory; lse = ln Σ exp = (m + log2 l) ln 2.
  if (half == 0) {
    factor_w[r] = 1.0f / l;
    if (row < d.t) lse[(static_cast<int64_t>(b) * d.h + h) * d.t + row] = (m + log2f(l)) * kLn2;
  }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
#pragma unroll
    for (int i = 0; i < o[n].num_elements; ++i) {
      o[n].x[i] *= factor_w[static_cast<int>(row_id.x[i])];
    }
  }
  float* stage_w = reinterpret_cast<float*>(smem + L::kKv) + warp * 16 * (D + 4);
  StoreRows<T, D>(o, stage_w, out + q_head, q_stride, q0 + warp * 16, d.t);
}

// D[b, h, t] = Σ_c d_out·out over the row, f32: G lanes per row (b, t, h),
// V elements a lane per load (16 bytes where the rows allow). One warp a
// row of 64 took 26 µs on [8, 1024, 12, 64] bf16 (H200): shuffles, not
// bytes, were its bound.
template <typename T, int G, int V>
__global__ void TcRowDotKernel(AttnDims d, int dim, const T* out, const T* d_out, float* row_dot) {
  const int lane = static_cast<int>(threadIdx.x % G);
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / G;
  const bool ok = r < static_cast<int64_t>(d.b) * d.t * d.h;
  float acc = 0.0f;
  if (ok) {
    const int64_t base = r * dim;
    for (int c = lane * V; c < dim; c += G * V) {
      Acc<T> o[V], g[V];
      LoadPack<V>(out + base, c, V, o);
      LoadPack<V>(d_out + base, c, V, g);
#pragma unroll
      for (int e = 0; e < V; ++e) acc += o[e] * g[e];
    }
  }
  acc = GroupSum<G>(acc);  // every lane of the warp takes part
  if (!ok || lane != 0) return;
  const int h = static_cast<int>(r % d.h);
  const int64_t t = (r / d.h) % d.t, b = r / (static_cast<int64_t>(d.h) * d.t);
  row_dot[(b * d.h + h) * d.t + t] = acc;
}

// Shared memory of the d_k/d_v pass.
template <int D>
struct KvSmem {
  using Tile = AttnRows<D>;
  static constexpr int kK = 0;
  static constexpr int kV = kK + Tile::kBytes;
  static constexpr int kStages = kV + Tile::kBytes;  // 2 x {Q, dO}; the output staging at the end
  static constexpr int kStats = kStages + 4 * Tile::kBytes;  // 2 x {lse·log2 e, D} [kTile]
  static constexpr int kP = kStats + 2 * 2 * kTile * 4;      // per warp: Pᵀ, then dSᵀ
  static constexpr int kIds = kP + kWarps * 2 * 16 * kPLd * 2;
  static constexpr int kBytes = kIds + kIdsBytes;
  static_assert(kWarps * 2 * 16 * (D + 4) * 4 <= 4 * Tile::kBytes,
                "d_k and d_v staging fits the stages");
};

// Block (key tile, kv head, b): d_k and d_v of kTile keys, summed over the
// group's query heads (in order) and, per head, the query tiles from the
// key tile on (in order). Each warp owns 16 keys: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ.
template <typename T, int D>
__global__ void __launch_bounds__(kTcThreads)
    FlashTcBackwardKvKernel(AttnDims d, float scale, float scale_log2, const bf16* __restrict__ q,
                            const bf16* __restrict__ k, const bf16* __restrict__ v,
                            const float* __restrict__ lse, const float* __restrict__ row_dot,
                            const bf16* __restrict__ d_out, T* __restrict__ d_k,
                            T* __restrict__ d_v) {
  using Tile = AttnRows<D>;
  using L = KvSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* v_s = reinterpret_cast<bf16*>(smem + L::kV);
  bf16* stages = reinterpret_cast<bf16*>(smem + L::kStages);
  float* stats = reinterpret_cast<float*>(smem + L::kStats);
  float* ids = reinterpret_cast<float*>(smem + L::kIds);
  const int warp = threadIdx.x / 32;
  bf16* pt_w = reinterpret_cast<bf16*>(smem + L::kP) + warp * 2 * 16 * kPLd;
  bf16* dst_w = pt_w + 16 * kPLd;

  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int group = d.group(), per_head = d.tiles() - kt, steps = group * per_head;
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  const int64_t k0 = static_cast<int64_t>(kt) * kTile;
  // Step s: query head kvh·group + s / per_head, query tile kt + s % per_head.
  auto load_step = [&](int stage, int s) {
    const int h = kvh * group + s / per_head;
    const int64_t t0 = static_cast<int64_t>(kt + s % per_head) * kTile;
    const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
    bf16* q_s = stages + 2 * stage * Tile::kElems;
    LoadAttnTile<D>(q_s, q + q_head, q_stride, t0, d.t);
    LoadAttnTile<D>(q_s + Tile::kElems, d_out + q_head, q_stride, t0, d.t);
    float* st = stats + stage * 2 * kTile;
    for (int e = threadIdx.x; e < kTile; e += kTcThreads) {
      const int64_t t = t0 + e, li = (static_cast<int64_t>(b) * d.h + h) * d.t + t;
      st[e] = t < d.t ? lse[li] * kLog2e : 0.0f;
      st[kTile + e] = t < d.t ? row_dot[li] : 0.0f;
    }
  };

  LoadAttnTile<D>(k_s, k + kv_head, kv_stride, k0, d.t);
  LoadAttnTile<D>(v_s, v + kv_head, kv_stride, k0, d.t);
  load_step(0, 0);
  CpAsyncCommit();
  FillIndexTable(ids);
  CpAsyncWait<0>();
  __syncthreads();
  AccFrag row_id, col_id;
  wmma::load_matrix_sync(row_id, ids, 16, wmma::mem_row_major);
  wmma::load_matrix_sync(col_id, ids + 256, 16, wmma::mem_row_major);
  AccFrag dk[D / 16], dv[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
    wmma::fill_fragment(dk[n], 0.0f);
    wmma::fill_fragment(dv[n], 0.0f);
  }
  const int64_t key_base = k0 + warp * 16;
  const bf16* k_w = k_s + warp * 16 * Tile::kLd;
  const bf16* v_w = v_s + warp * 16 * Tile::kLd;
  for (int s = 0; s < steps; ++s) {
    const int stage = s & 1;
    if (s + 1 < steps) load_step(stage ^ 1, s + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();  // also publishes the step's plainly stored statistics
    const bf16* q_s = stages + 2 * stage * Tile::kElems;
    const bf16* do_s = q_s + Tile::kElems;
    const float* lse2_s = stats + stage * 2 * kTile;
    const float* di_s = lse2_s + kTile;
    const int64_t t0 = static_cast<int64_t>(kt + s % per_head) * kTile;
    // Pᵀ and dSᵀ, 16 queries at a time.
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {
      AccFrag sf, dpf;
      TwoRowProducts<D>(sf, k_w, q_s + n * 16 * Tile::kLd, dpf, v_w, do_s + n * 16 * Tile::kLd,
                        Tile::kLd);
#pragma unroll
      for (int i = 0; i < sf.num_elements; ++i) {
        const int rr = static_cast<int>(row_id.x[i]);
        const int cc = n * 16 + static_cast<int>(col_id.x[i]);
        const int64_t query = t0 + cc;
        const float p =
            key_base + rr <= query && query < d.t ? exp2f(sf.x[i] * scale_log2 - lse2_s[cc]) : 0.0f;
        pt_w[rr * kPLd + cc] = __float2bfloat16_rn(p);
        dst_w[rr * kPLd + cc] = __float2bfloat16_rn(p * (dpf.x[i] - di_s[cc]));
      }
    }
    __syncwarp();
    // dV += Pᵀ dO, dK += dSᵀ Q (the softmax scale at the end).
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      FragA pa, dsa;
      wmma::load_matrix_sync(pa, pt_w + kk * 16, kPLd);
      wmma::load_matrix_sync(dsa, dst_w + kk * 16, kPLd);
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
        FragBRow br;
        wmma::load_matrix_sync(br, do_s + kk * 16 * Tile::kLd + n * 16, Tile::kLd);
        wmma::mma_sync(dv[n], pa, br, dv[n]);
        wmma::load_matrix_sync(br, q_s + kk * 16 * Tile::kLd + n * 16, Tile::kLd);
        wmma::mma_sync(dk[n], dsa, br, dk[n]);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next; the last one frees the stages
  }
  ScaleFragments<D>(dk, scale);
  float* stage_w = reinterpret_cast<float*>(stages) + warp * 2 * 16 * (D + 4);
  StoreRows<T, D>(dk, stage_w, d_k + kv_head, kv_stride, key_base, d.t);
  StoreRows<T, D>(dv, stage_w + 16 * (D + 4), d_v + kv_head, kv_stride, key_base, d.t);
}

// Shared memory of the d_q pass.
template <int D>
struct QSmem {
  using Tile = AttnRows<D>;
  static constexpr int kQ = 0;
  static constexpr int kDo = kQ + Tile::kBytes;
  static constexpr int kStages = kDo + Tile::kBytes;  // 2 x {K, V}; the output staging at the end
  static constexpr int kStats = kStages + 4 * Tile::kBytes;  // lse·log2 e, D [kTile]
  static constexpr int kDs = kStats + 2 * kTile * 4;         // per-warp dS
  static constexpr int kIds = kDs + kWarps * 16 * kPLd * 2;
  static constexpr int kBytes = kIds + kIdsBytes;
  static_assert(kWarps * 16 * (D + 4) * 4 <= 4 * Tile::kBytes, "d_q staging fits the stages");
};

// Block (query tile, h, b): d_q of kTile queries over the key tiles 0..tile
// in order. Tiles last first, as in the forward.
template <typename T, int D>
__global__ void __launch_bounds__(kTcThreads)
    FlashTcBackwardQKernel(AttnDims d, float scale, float scale_log2, const bf16* __restrict__ q,
                           const bf16* __restrict__ k, const bf16* __restrict__ v,
                           const float* __restrict__ lse, const float* __restrict__ row_dot,
                           const bf16* __restrict__ d_out, T* __restrict__ d_q) {
  using Tile = AttnRows<D>;
  using L = QSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* do_s = reinterpret_cast<bf16*>(smem + L::kDo);
  bf16* stages = reinterpret_cast<bf16*>(smem + L::kStages);
  float* stats = reinterpret_cast<float*>(smem + L::kStats);
  float* ids = reinterpret_cast<float*>(smem + L::kIds);
  const int warp = threadIdx.x / 32;
  bf16* ds_w = reinterpret_cast<bf16*>(smem + L::kDs) + warp * 16 * kPLd;

  const int tile = d.tiles() - 1 - static_cast<int>(blockIdx.x);
  const int64_t q0 = static_cast<int64_t>(tile) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  auto load_kv = [&](int stage, int j) {
    bf16* k_s = stages + 2 * stage * Tile::kElems;
    const int64_t first = static_cast<int64_t>(j) * kTile;
    LoadAttnTile<D>(k_s, k + kv_head, kv_stride, first, d.t);
    LoadAttnTile<D>(k_s + Tile::kElems, v + kv_head, kv_stride, first, d.t);
  };

  LoadAttnTile<D>(q_s, q + q_head, q_stride, q0, d.t);
  LoadAttnTile<D>(do_s, d_out + q_head, q_stride, q0, d.t);
  load_kv(0, 0);
  CpAsyncCommit();
  for (int e = threadIdx.x; e < kTile; e += kTcThreads) {
    const int64_t t = q0 + e, li = (static_cast<int64_t>(b) * d.h + h) * d.t + t;
    stats[e] = t < d.t ? lse[li] * kLog2e : 0.0f;
    stats[kTile + e] = t < d.t ? row_dot[li] : 0.0f;
  }
  FillIndexTable(ids);
  CpAsyncWait<0>();
  __syncthreads();
  AccFrag row_id, col_id;
  wmma::load_matrix_sync(row_id, ids, 16, wmma::mem_row_major);
  wmma::load_matrix_sync(col_id, ids + 256, 16, wmma::mem_row_major);
  AccFrag dq[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(dq[n], 0.0f);
  const int64_t row_base = q0 + warp * 16;
  const bf16* q_w = q_s + warp * 16 * Tile::kLd;
  const bf16* do_w = do_s + warp * 16 * Tile::kLd;
  const float* lse2_w = stats + warp * 16;
  const float* di_w = stats + kTile + warp * 16;
  for (int j = 0; j <= tile; ++j) {
    const int stage = j & 1;
    if (j < tile) load_kv(stage ^ 1, j + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    const bf16* k_s = stages + 2 * stage * Tile::kElems;
    const bf16* v_s = k_s + Tile::kElems;
    const int64_t key0 = static_cast<int64_t>(j) * kTile;
    // dS, 16 keys at a time. Keys past T exist only in the diagonal tile,
    // where key ≤ query < T drops them for every row that is written.
#pragma unroll
    for (int n = 0; n < kTile / 16; ++n) {
      AccFrag sf, dpf;
      TwoRowProducts<D>(sf, q_w, k_s + n * 16 * Tile::kLd, dpf, do_w, v_s + n * 16 * Tile::kLd,
                        Tile::kLd);
#pragma unroll
      for (int i = 0; i < sf.num_elements; ++i) {
        const int rr = static_cast<int>(row_id.x[i]);
        const int cc = n * 16 + static_cast<int>(col_id.x[i]);
        const float p =
            key0 + cc <= row_base + rr ? exp2f(sf.x[i] * scale_log2 - lse2_w[rr]) : 0.0f;
        ds_w[rr * kPLd + cc] = __float2bfloat16_rn(p * (dpf.x[i] - di_w[rr]));
      }
    }
    __syncwarp();
    // dQ += dS K (the softmax scale at the end).
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      FragA dsa;
      wmma::load_matrix_sync(dsa, ds_w + kk * 16, kPLd);
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
        FragBRow kb;
        wmma::load_matrix_sync(kb, k_s + kk * 16 * Tile::kLd + n * 16, Tile::kLd);
        wmma::mma_sync(dq[n], dsa, kb, dq[n]);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next; the last one frees the stages
  }
  ScaleFragments<D>(dq, scale);
  float* stage_w = reinterpret_cast<float*>(stages) + warp * 16 * (D + 4);
  StoreRows<T, D>(dq, stage_w, d_q + q_head, q_stride, row_base, d.t);
}

// ---------------------------------------------------------------- launchers

AttnDims DimsOf(const Tensor& q, const Tensor& k) {
  return {static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)), static_cast<int>(q.dim(2)),
          static_cast<int>(k.dim(2))};
}

template <typename T, int D>
void RunForward(const ExecContext& ctx, const AttnDims& d, const Tensor& q, const Tensor& k,
                const Tensor& v, const Tensor& out, const Tensor& lse) {
  const char* op = "CausalAttention";
  constexpr int kBytes = FwdSmem<D>::kBytes;
  static const cudaError_t attr = AllowDynamicSmem(FlashTcForwardKernel<T, D>, kBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  const dim3 grid(static_cast<unsigned>(d.tiles()), d.h, d.b);
  FlashTcForwardKernel<T, D><<<grid, kTcThreads, kBytes, Stream(ctx)>>>(
      d, AttentionScaleLog2(D), Ptr<const bf16>(q), Ptr<const bf16>(k), Ptr<const bf16>(v),
      Ptr<T>(out), Ptr<float>(lse));
  SM_CHECK_LAUNCH(ctx, op, "FlashTcForwardKernel");
}

// q, k, v, d_out: the bf16 operands; out and the gradients in T.
template <typename T, int D>
void RunBackward(const ExecContext& ctx, const AttnDims& d, const Tensor& q, const Tensor& k,
                 const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& d_out_bf16,
                 const Tensor& d_out, const Tensor& d_q, const Tensor& d_k, const Tensor& d_v) {
  const char* op = "CausalAttentionBackward";
  const Tensor row_dot = AttentionRowDot(ctx, out, d_out, op);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D)), scale_log2 = AttentionScaleLog2(D);
  const bf16 *qp = Ptr<const bf16>(q), *kp = Ptr<const bf16>(k), *vp = Ptr<const bf16>(v);
  const bf16* dop = Ptr<const bf16>(d_out_bf16);
  const float *lp = Ptr<const float>(lse), *rp = Ptr<const float>(row_dot);

  constexpr int kKvBytes = KvSmem<D>::kBytes;
  static const cudaError_t kv_attr = AllowDynamicSmem(FlashTcBackwardKvKernel<T, D>, kKvBytes);
  SM_CHECK_CUDA_CALL(ctx, kv_attr, op);
  FlashTcBackwardKvKernel<T, D>
      <<<dim3(static_cast<unsigned>(d.tiles()), d.kv, d.b), kTcThreads, kKvBytes, Stream(ctx)>>>(
          d, scale, scale_log2, qp, kp, vp, lp, rp, dop, Ptr<T>(d_k), Ptr<T>(d_v));
  SM_CHECK_LAUNCH(ctx, op, "FlashTcBackwardKvKernel");

  constexpr int kQBytes = QSmem<D>::kBytes;
  static const cudaError_t q_attr = AllowDynamicSmem(FlashTcBackwardQKernel<T, D>, kQBytes);
  SM_CHECK_CUDA_CALL(ctx, q_attr, op);
  FlashTcBackwardQKernel<T, D>
      <<<dim3(static_cast<unsigned>(d.tiles()), d.h, d.b), kTcThreads, kQBytes, Stream(ctx)>>>(
          d, scale, scale_log2, qp, kp, vp, lp, rp, dop, Ptr<T>(d_q));
  SM_CHECK_LAUNCH(ctx, op, "FlashTcBackwardQKernel");
}

}  // namespace

Tensor AttentionBf16Operand(const ExecContext& ctx, const Tensor& x) {
  if (x.dtype() == DType::kBF16 && Aligned16(x.raw_data())) return x;
  Tensor y = ctx.Empty(x.shape(), DType::kBF16);
  Copy(ctx, x, y);
  SM_CHECK_MSG(Aligned16(y.raw_data()), "CausalAttention: the allocator returned ", y.DebugString(),
               " not 16-byte aligned");
  return y;
}

Tensor AttentionRowDot(const ExecContext& ctx, const Tensor& out, const Tensor& d_out,
                       const char* op) {
  const AttnDims d{static_cast<int>(out.dim(0)), static_cast<int>(out.dim(1)),
                   static_cast<int>(out.dim(2)), static_cast<int>(out.dim(2))};
  const int dim = static_cast<int>(out.dim(3));
  const Tensor row_dot = ctx.Empty({d.b, d.h, d.t}, DType::kF32);
  const int64_t rows = static_cast<int64_t>(d.b) * d.t * d.h;
  auto launch = [&](auto tag) {
    using T = typename decltype(tag)::type;
    LaunchLaneGroups<T>(dim, {out.raw_data(), d_out.raw_data()}, [&](auto g, auto v) {
      constexpr int G = decltype(g)::value, V = decltype(v)::value;
      const auto blocks = static_cast<unsigned>((rows * G + kThreads - 1) / kThreads);
      TcRowDotKernel<T, G, V><<<blocks, kThreads, 0, Stream(ctx)>>>(
          d, dim, Ptr<const T>(out), Ptr<const T>(d_out), Ptr<float>(row_dot));
    });
  };
  if (out.dtype() == DType::kBF16) {
    launch(Tag<bf16>{});
  } else {
    launch(Tag<float>{});
  }
  SM_CHECK_LAUNCH(ctx, op, "TcRowDotKernel");
  return row_dot;
}

bool AttentionTcFits(const Tensor& q) {
  return q.ndim() == 4 && (q.dim(3) == 64 || q.dim(3) == 128) &&
         (q.dtype() == DType::kF32 || q.dtype() == DType::kBF16);
}

void CausalAttentionTc(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& out, const Tensor& lse) {
  const AttnDims d = DimsOf(q, k);
  const Tensor qb = AttentionBf16Operand(ctx, q), kb = AttentionBf16Operand(ctx, k),
               vb = AttentionBf16Operand(ctx, v);
  DispatchAttention(q, [&](auto tag, auto dim) {
    RunForward<typename decltype(tag)::type, decltype(dim)::value>(ctx, d, qb, kb, vb, out, lse);
  });
}

void CausalAttentionBackwardTc(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& out, const Tensor& lse,
                               const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                               const Tensor& d_v) {
  const AttnDims d = DimsOf(q, k);
  const Tensor qb = AttentionBf16Operand(ctx, q), kb = AttentionBf16Operand(ctx, k),
               vb = AttentionBf16Operand(ctx, v);
  const Tensor dob = AttentionBf16Operand(ctx, d_out);
  DispatchAttention(q, [&](auto tag, auto dim) {
    RunBackward<typename decltype(tag)::type, decltype(dim)::value>(ctx, d, qb, kb, vb, out, lse,
                                                                    dob, d_out, d_q, d_k, d_v);
  });
}

}  // namespace scalemoe::cuda
