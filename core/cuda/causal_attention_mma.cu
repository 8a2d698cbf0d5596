// Causal grouped-query attention on mma.sync m16n8k16 (bf16 operands, f32
// accumulators), FlashAttention-2 style: the default path of
// AttentionOptions::bf16_operands (the WMMA kernels of causal_attention_tc.cu
// behind SCALEMOE_ATTENTION=wmma), the same contract (core/ops.h, AttentionOptions::bf16_operands).
// - S = Q Kᵀ, P and dS never leave registers: a C fragment pair is the A
//   fragment of the next mma (attention_mma_lane.h has the lane math and
//   tests/core/attention_mma_lane_test.cc simulates it on the CPU).
// - tiles: a block holds 64 rows (4 warps x 16); the other side streams in
//   tiles of 64 through shared memory (cp.async, double buffered) and is
//   read with ldmatrix (.trans where the operand is stored the other way).
//   Only diagonal tiles are masked (the only ones that reach past T too).
// - forward: block (query tile, h, b); per warp the online softmax over the
//   key tiles, row max and sum over the quad of lanes that share a row.
// - backward: D = rowsum(d_out ⊙ out) first; block (key tile, kv head, b)
//   sums dV = Pᵀ dO and dK = dSᵀ Q over the group's query heads and query
//   tiles in order, 16 queries at a time from Sᵀ = K Qᵀ and dPᵀ = V dOᵀ;
//   the d_k/d_v pass also stores dSᵀ (bf16, the operand the d_q product
//   takes anyway) tile by tile, and block (query tile, h, b) sums dQ = dS K
//   over key tiles in order, 16 keys at a time, from those tiles: one
//   product instead of recomputing S, P and dP (three). The stored tiles
//   take H·n(n+1)/2 tiles of 64 x 64 bf16 a sequence (n = T/64: 107 MB at
//   B 8, H 12, T 1024), allocated per call, the batch in slices that fit
//   ops::kAttentionDsBudgetBytes; past it, and under
//   SCALEMOE_ATTENTION_DQ=recompute, the older d_q pass recomputes S, P
//   and dP instead. No atomics: the same inputs give the same bits. Rows
//   past T get lse = +inf in the backward, so their P is 0 unmasked.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "core/cuda/attention_launch.cuh"
#include "core/cuda/attention_mma_lane.h"
#include "core/cuda/attention_tiles.cuh"
#include "core/cuda/causal_attention_mma.h"
#include "core/cuda/causal_attention_tc.h"
#include "core/cuda/cp_async.cuh"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/mma_sync.cuh"

namespace scalemoe::cuda {
namespace {

using bf16 = __nv_bfloat16;
namespace ml = mma_lane;

// ---------------------------------------------------------------- kernels

constexpr int kThreads = kAttnThreads;
constexpr int kTile = kAttnTile;
constexpr int kN8 = kTile / 8;  // n8 blocks across a streamed tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ int Lane() { return static_cast<int>(threadIdx.x % 32); }

// Elements from one token's row to the next in q, k and v (or in d_q, d_k
// and d_v): H·D, KV·D and KV·D when contiguous, wider where they are column
// slices of one q|k|v matrix (core/head_rows.h). out and d_out are
// contiguous.
struct TokenStrides {
  int64_t q, k, v;
};

// The kernels come in two layouts: kStrided false for contiguous q, k, v
// (and d_q, d_k, d_v), whose strides and head offsets follow from the dims
// (the expressions the kernels were tuned with: that instantiation compiles
// to the same code as before strides existed), true for TokenStrides' rows:
// element 0 of head `head` of sequence b at HeadOffset.
template <int D>
__device__ __forceinline__ int64_t HeadOffset(const AttnDims& d, int b, int64_t stride, int head) {
  return static_cast<int64_t>(b) * d.t * stride + static_cast<int64_t>(head) * D;
}

// ldmatrix loads of A (16 x 16 at (m0, k0)) and of two B n8 blocks (n0,
// n0 + 8 over k0..k0 + 15) from a tile of row stride ld.
__device__ __forceinline__ void LoadA(unsigned (&a)[4], const bf16* tile, int ld, int m0, int k0) {
  LdMatrixX4(a, tile + ml::LdOffsetA(Lane(), ld, m0, k0));
}
// B(k, n) = tile[n][k]: rows of K (or Q, dO, V) as the n side.
__device__ __forceinline__ void LoadBRows(unsigned (&b)[4], const bf16* tile, int ld, int n0,
                                          int k0) {
  LdMatrixX4(b, tile + ml::LdOffsetBKMajor(Lane(), ld, n0, k0));
}
// B(k, n) = tile[k][n]: rows of V (or dO, Q, K) as the k side.
__device__ __forceinline__ void LoadBCols(unsigned (&b)[4], const bf16* tile, int ld, int n0,
                                          int k0) {
  LdMatrixX4Trans(b, tile + ml::LdOffsetBNMajor(Lane(), ld, n0, k0));
}

// c[2 nb], c[2 nb + 1] += a · b for the two n8 blocks of b (n16 block nb).
template <int kN>
__device__ __forceinline__ void MmaPair(float (&c)[kN][4], int nb, const unsigned (&a)[4],
                                        const unsigned (&b)[4]) {
  MmaBf16(c[2 * nb], a, b[0], b[1]);
  MmaBf16(c[2 * nb + 1], a, b[2], b[3]);
}

__device__ __forceinline__ unsigned PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // lo in the low half
  return *reinterpret_cast<const unsigned*>(&v);
}

// The A fragment of k16 block kb from the C fragments c[2kb], c[2kb + 1].
template <int kN>
__device__ __forceinline__ void CToA(unsigned (&a)[4], const float (&c)[kN][4], int kb) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const float(&blk)[4] = c[2 * kb + ml::CToABlock(r)];
    a[r] = PackBf16(blk[ml::CToAElem(r, 0)], blk[ml::CToAElem(r, 1)]);
  }
}

__device__ __forceinline__ float QuadMax(float v) {
#pragma unroll
  for (int step = 0; step < ml::kQuadSteps; ++step) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1 << step));
  }
  return v;
}
__device__ __forceinline__ float QuadSum(float v) {
#pragma unroll
  for (int step = 0; step < ml::kQuadSteps; ++step) v += __shfl_xor_sync(0xffffffffu, v, 1 << step);
  return v;
}

template <int kN>
__device__ __forceinline__ void Zero(float (&c)[kN][4]) {
#pragma unroll
  for (int n = 0; n < kN; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) c[n][i] = 0.0f;
  }
}
// A warp's 16 x D accumulators, row half h times factor[h], into rows
// [first, first + 16) of a head (rows `stride` elements apart; rows at or
// past `limit` skipped).
template <typename T, int D>
__device__ __forceinline__ void StoreRows(const float (&acc)[D / 8][4], const float (&factor)[2],
                                          T* head, int64_t stride, int64_t first, int64_t limit) {
  const int lane = Lane();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = first + ml::CRow(lane, 2 * half);
    if (row >= limit) continue;
    T* dst = head + row * stride + ml::CCol(lane, 0);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      dst[8 * n] = FromAcc<T>(acc[n][2 * half] * factor[half]);
      dst[8 * n + 1] = FromAcc<T>(acc[n][2 * half + 1] * factor[half]);
    }
  }
}

// Shared memory of the forward and the d_q pass, in bytes: the block's own
// rows (Q; the d_q pass dO too), then 2 stages x {K, V}.
template <int D, int kOwnTiles>
struct StreamSmem {
  static constexpr int kStages = kOwnTiles * AttnRows<D>::kBytes;
  static constexpr int kBytes = kStages + 4 * AttnRows<D>::kBytes;
};

// Blocks per SM that the three kernels are compiled for. At D = 64 they
// used 134-135 registers, and the driver's shared-memory carveout (168-200
// KB) held three blocks of 47-57 KB: 3 warps a scheduler, latency-bound
// (ncu, bench/RESULTS.md). 128 registers (a few spilled bytes) and the
// largest carveout fit four (4 x 57.3 KB with the driver's 1 KB each, the
// d_k/d_v pass's, in 228 KB); the forward with two row blocks a warp has
// half the threads and no register cap. At D = 128, capping the registers
// spills ~1 KB a thread: one block's bound, as before.
template <int D>
constexpr int kMinBlocks = D == 64 ? 4 : 1;
// The d_k/d_v pass at D = 64 keeps its warp's K and V fragments in
// registers (32 more) and is compiled for 3 blocks an SM: on the H200 the
// backward was 5-6 % faster than with 4 blocks reading them from shared
// memory each time (the pass is bound by its shared-memory loads, not by
// occupancy).
template <int D>
constexpr bool kKvInRegisters = D == 64;
template <int D>
constexpr int kKvMinBlocks = kKvInRegisters<D> ? 3 : kMinBlocks<D>;

// The forward's warps: each holds kRows m16 blocks of the tile's query rows,
// so kTile / (16 kRows) warps a block. kRows = 2 (two warps, 32 rows each,
// as FlashAttention-2's forward): every K and V fragment read from shared
// memory feeds two MMAs, and each warp has two independent chains. The
// default at D = 64 (SCALEMOE_ATTENTION_FWD_ROWS=1 for one); at D = 128 the
// doubled accumulators do not fit in the registers.
template <int kRows>
constexpr int kFwdThreads = kThreads / kRows;

// Block (query tile, h, b): out and lse of kTile queries. Tiles are taken
// last first (the longest work starts first).
template <typename T, int D, int kRows, bool kStrided>
__global__ void __launch_bounds__(kFwdThreads<kRows>, kMinBlocks<D>)
    MmaForwardKernel(AttnDims d, float scale_log2, const bf16* __restrict__ q,
                     const bf16* __restrict__ k, const bf16* __restrict__ v, T* __restrict__ out,
                     float* __restrict__ lse, TokenStrides in) {
  using R = AttnRows<D>;
  using L = StreamSmem<D, 1>;
  constexpr int kBlockThreads = kFwdThreads<kRows>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* stages = reinterpret_cast<bf16*>(smem + L::kStages);
  const int warp = threadIdx.x / 32, lane = Lane();

  const int tile = d.tiles() - 1 - static_cast<int>(blockIdx.x);
  const int64_t q0 = static_cast<int64_t>(tile) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;  // out's (and a contiguous q's)
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  const int64_t sq = kStrided ? in.q : q_stride, sk = kStrided ? in.k : kv_stride,
                sv = kStrided ? in.v : kv_stride;
  const int64_t q_at = kStrided ? HeadOffset<D>(d, b, sq, h) : q_head;
  const int64_t k_at = kStrided ? HeadOffset<D>(d, b, sk, kvh) : kv_head;
  const int64_t v_at = kStrided ? HeadOffset<D>(d, b, sv, kvh) : kv_head;
  auto load_kv = [&](int stage, int j) {
    bf16* k_s = stages + 2 * stage * R::kElems;
    const int64_t first = static_cast<int64_t>(j) * kTile;
    LoadAttnTile<D, kBlockThreads>(k_s, k + k_at, sk, first, d.t);
    LoadAttnTile<D, kBlockThreads>(k_s + R::kElems, v + v_at, sv, first, d.t);
  };

  LoadAttnTile<D, kBlockThreads>(q_s, q + q_at, sq, q0, d.t);
  load_kv(0, 0);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  // Row block r of this warp: the tile's rows [16 (kRows warp + r), + 16).
  const int warp_row = warp * 16 * kRows;
  unsigned qf[kRows][D / 16][4];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) LoadA(qf[r][kk], q_s, R::kLd, warp_row + 16 * r, kk * 16);
  }
  float o[kRows][D / 8][4];
  float m[kRows][2], l[kRows][2];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    Zero(o[r]);
    m[r][0] = m[r][1] = -INFINITY;
    l[r][0] = l[r][1] = 0.0f;
  }
  const int64_t row0 = q0 + warp_row;

  for (int j = 0; j <= tile; ++j) {
    const int stage = j & 1;
    if (j < tile) load_kv(stage ^ 1, j + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    const bf16* k_s = stages + 2 * stage * R::kElems;
    const bf16* v_s = k_s + R::kElems;
    // S = Q Kᵀ (16 x kTile per row block), unscaled: the scale is folded
    // into the exponent (ml::ExpRow).
    float s[kRows][kN8][4];
#pragma unroll
    for (int r = 0; r < kRows; ++r) Zero(s[r]);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nb = 0; nb < kTile / 16; ++nb) {
        unsigned kb[4];
        LoadBRows(kb, k_s, R::kLd, nb * 16, kk * 16);
#pragma unroll
        for (int r = 0; r < kRows; ++r) MmaPair(s[r], nb, qf[r][kk], kb);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (ml::TileNeedsMask(tile, j)) {
        ml::MaskTile<false>(s[r], lane, row0 + 16 * r, static_cast<int64_t>(j) * kTile, d.t);
      }
      // The online softmax step: s becomes P, o and l are rescaled.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float factor = ml::OnlineStep(m[r][half], l[r][half],
                                            QuadMax(ml::LaneRowMax(s[r], half)) * scale_log2);
        l[r][half] += ml::ExpRow(s[r], half, scale_log2, m[r][half]);
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[r][n][2 * half] *= factor;
          o[r][n][2 * half + 1] *= factor;
        }
      }
    }
    // O += P V, P straight from the score registers.
#pragma unroll
    for (int kb = 0; kb < kTile / 16; ++kb) {
      unsigned pa[kRows][4];
#pragma unroll
      for (int r = 0; r < kRows; ++r) CToA(pa[r], s[r], kb);
#pragma unroll
      for (int nb = 0; nb < D / 16; ++nb) {
        unsigned vb[4];
        LoadBCols(vb, v_s, R::kLd, nb * 16, kb * 16);
#pragma unroll
        for (int r = 0; r < kRows; ++r) MmaPair(o[r], nb, pa[r], vb);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float inv[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      l[r][half] = QuadSum(l[r][half]);
      inv[half] = 1.0f / l[r][half];
    }
    StoreRows<T, D>(o[r], inv, out + q_head, q_stride, row0 + 16 * r, d.t);
    if (lane % 4 == 0) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = row0 + 16 * r + ml::CRow(lane, 2 * half);
        if (row < d.t) {
          lse[(static_cast<int64_t>(b) * d.h + h) * d.t + row] =
              (m[r][half] + log2f(l[r][half])) * kLn2;
        }
      }
    }
  }
}

// lse·log2 e and D of query t of head h, or (+inf, 0) past T: P = 0 there.
__device__ __forceinline__ void RowStats(const AttnDims& d, const float* lse, const float* row_dot,
                                         int b, int h, int64_t t, float& lse2, float& di) {
  const int64_t i = (static_cast<int64_t>(b) * d.h + h) * d.t + t;
  lse2 = t < d.t ? lse[i] * kLog2e : INFINITY;
  di = t < d.t ? row_dot[i] : 0.0f;
}

// The stored dSᵀ of the backward: per (b, h), the tiles (query tile qt, key
// tile kt <= qt) at qt (qt + 1) / 2 + kt (so a d_q block reads its key
// tiles in one run). A tile is 16 chunks of 16 keys x 16 queries, chunk
// (key block kb, query block qb) at kb·4 + qb, each the register image of
// the d_k/d_v warp's A fragment of dSᵀ: lane l's four registers at l·8
// elements. One 16-byte store a lane writes a chunk (512 contiguous bytes);
// the d_q pass reads it back the same way and transposes the fragment with
// movmatrix.
static_assert(kTile == ops::kAttentionDsTile, "ops::AttentionDsBytesPerSequence sizes these tiles");
__host__ __device__ __forceinline__ int64_t DsTilePairs(const AttnDims& d) {
  return static_cast<int64_t>(d.tiles()) * (d.tiles() + 1) / 2;
}
__device__ __forceinline__ int64_t DsTileOffset(const AttnDims& d, int b, int h, int qt, int kt) {
  const int64_t pair = static_cast<int64_t>(qt) * (qt + 1) / 2 + kt;
  return ((static_cast<int64_t>(b) * d.h + h) * DsTilePairs(d) + pair) * kTile * kTile;
}

// Shared memory of the d_k/d_v pass, in bytes: K, V, 2 stages x {Q, dO},
// 2 stages x {lse·log2 e, D} [kTile].
template <int D>
struct KvSmem {
  static constexpr int kK = 0;
  static constexpr int kV = kK + AttnRows<D>::kBytes;
  static constexpr int kStages = kV + AttnRows<D>::kBytes;
  static constexpr int kStats = kStages + 4 * AttnRows<D>::kBytes;
  static constexpr int kBytes = kStats + 2 * 2 * kTile * 4;
};

// Block (key tile, kv head, b): d_k and d_v of kTile keys, summed over the
// group's query heads (in order) and, per head, the query tiles from the
// key tile on (in order), 16 queries at a time. kStoreDs: also dSᵀ into
// ds_t (DsTileOffset) for the d_q pass.
template <typename T, int D, bool kStoreDs, bool kStrided>
__global__ void __launch_bounds__(kThreads, kKvMinBlocks<D>)
    MmaBackwardKvKernel(AttnDims d, float scale, float scale_log2, const bf16* __restrict__ q,
                        const bf16* __restrict__ k, const bf16* __restrict__ v,
                        const float* __restrict__ lse, const float* __restrict__ row_dot,
                        const bf16* __restrict__ d_out, T* __restrict__ d_k, T* __restrict__ d_v,
                        bf16* __restrict__ ds_t, TokenStrides in, TokenStrides grad) {
  using R = AttnRows<D>;
  using L = KvSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* v_s = reinterpret_cast<bf16*>(smem + L::kV);
  bf16* stages = reinterpret_cast<bf16*>(smem + L::kStages);
  float* stats = reinterpret_cast<float*>(smem + L::kStats);
  const int warp = threadIdx.x / 32, lane = Lane();

  const int kt = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int group = d.group(), per_head = d.tiles() - kt, steps = group * per_head;
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;  // d_out's (and a contiguous q's)
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  const int64_t sq = kStrided ? in.q : q_stride;
  const int64_t k0 = static_cast<int64_t>(kt) * kTile;
  // Step s: query head kvh·group + s / per_head, query tile kt + s % per_head.
  auto load_step = [&](int stage, int s) {
    const int h = kvh * group + s / per_head;
    const int64_t t0 = static_cast<int64_t>(kt + s % per_head) * kTile;
    const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
    bf16* q_s = stages + 2 * stage * R::kElems;
    LoadAttnTile<D>(q_s, q + (kStrided ? HeadOffset<D>(d, b, sq, h) : q_head), sq, t0, d.t);
    LoadAttnTile<D>(q_s + R::kElems, d_out + q_head, q_stride, t0, d.t);
    float* st = stats + stage * 2 * kTile;
    for (int e = threadIdx.x; e < kTile; e += kThreads) {
      RowStats(d, lse, row_dot, b, h, t0 + e, st[e], st[kTile + e]);
    }
  };

  const int64_t sk = kStrided ? in.k : kv_stride, sv = kStrided ? in.v : kv_stride;
  LoadAttnTile<D>(k_s, k + (kStrided ? HeadOffset<D>(d, b, sk, kvh) : kv_head), sk, k0, d.t);
  LoadAttnTile<D>(v_s, v + (kStrided ? HeadOffset<D>(d, b, sv, kvh) : kv_head), sv, k0, d.t);
  load_step(0, 0);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  float dk[D / 8][4], dv[D / 8][4];
  Zero(dk);
  Zero(dv);
  const int64_t key0 = k0 + warp * 16;
  constexpr bool kKvRegs = kKvInRegisters<D>;
  unsigned kf[kKvRegs ? D / 16 : 1][4], vf[kKvRegs ? D / 16 : 1][4];
  if constexpr (kKvRegs) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      LoadA(kf[kk], k_s, R::kLd, warp * 16, kk * 16);
      LoadA(vf[kk], v_s, R::kLd, warp * 16, kk * 16);
    }
  }

  for (int s = 0; s < steps; ++s) {
    const int stage = s & 1;
    if (s + 1 < steps) load_step(stage ^ 1, s + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();  // also publishes the step's plainly stored statistics
    const bf16* q_s = stages + 2 * stage * R::kElems;
    const bf16* do_s = q_s + R::kElems;
    const float* lse2_s = stats + stage * 2 * kTile;
    const float* di_s = lse2_s + kTile;
    const int qt = kt + s % per_head;
    const bool mask = ml::TileNeedsMask(qt, kt);
#pragma unroll
    for (int c = 0; c < kTile / 16; ++c) {
      // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for the warp's 16 keys and queries c·16...
      float st[2][4], dpt[2][4];
      Zero(st);
      Zero(dpt);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        unsigned qb[4], dob[4];
        LoadBRows(qb, q_s, R::kLd, c * 16, kk * 16);
        LoadBRows(dob, do_s, R::kLd, c * 16, kk * 16);
        if constexpr (kKvRegs) {
          MmaPair(st, 0, kf[kk], qb);
          MmaPair(dpt, 0, vf[kk], dob);
        } else {
          // K and V fragments from shared memory each time: at D = 128
          // they do not fit in the registers.
          unsigned ka[4], va[4];
          LoadA(ka, k_s, R::kLd, warp * 16, kk * 16);
          LoadA(va, v_s, R::kLd, warp * 16, kk * 16);
          MmaPair(st, 0, ka, qb);
          MmaPair(dpt, 0, va, dob);
        }
      }
      if (mask) ml::MaskTile<true>(st, lane, key0, static_cast<int64_t>(qt) * kTile + c * 16, d.t);
      ml::GradColumns(st, dpt, scale_log2, lane, c * 16, lse2_s, di_s);  // Pᵀ, dSᵀ
      unsigned pa[4], dsa[4];
      CToA(pa, st, 0);
      CToA(dsa, dpt, 0);
      if constexpr (kStoreDs) {
        // Chunk (key block warp, query block c), as the fragment's image.
        bf16* tile = ds_t + DsTileOffset(d, b, kvh * group + s / per_head, qt, kt);
        *reinterpret_cast<uint4*>(tile + (warp * 4 + c) * 256 + lane * 8) =
            make_uint4(dsa[0], dsa[1], dsa[2], dsa[3]);
      }
      // dV += Pᵀ dO, dK += dSᵀ Q over these 16 queries (the scale at the end).
#pragma unroll
      for (int nb = 0; nb < D / 16; ++nb) {
        unsigned dob[4], qb[4];
        LoadBCols(dob, do_s, R::kLd, nb * 16, c * 16);
        MmaPair(dv, nb, pa, dob);
        LoadBCols(qb, q_s, R::kLd, nb * 16, c * 16);
        MmaPair(dk, nb, dsa, qb);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next
  }
  const float k_factor[2] = {scale, scale}, v_factor[2] = {1.0f, 1.0f};
  const int64_t gk = kStrided ? grad.k : kv_stride, gv = kStrided ? grad.v : kv_stride;
  StoreRows<T, D>(dk, k_factor, d_k + (kStrided ? HeadOffset<D>(d, b, gk, kvh) : kv_head), gk, key0,
                  d.t);
  StoreRows<T, D>(dv, v_factor, d_v + (kStrided ? HeadOffset<D>(d, b, gv, kvh) : kv_head), gv, key0,
                  d.t);
}

// Block (query tile, h, b): d_q of kTile queries over the key tiles 0..tile
// in order, 16 keys at a time. Tiles last first, as in the forward.
template <typename T, int D, bool kStrided>
__global__ void __launch_bounds__(kThreads, kMinBlocks<D>)
    MmaBackwardQKernel(AttnDims d, float scale, float scale_log2, const bf16* __restrict__ q,
                       const bf16* __restrict__ k, const bf16* __restrict__ v,
                       const float* __restrict__ lse, const float* __restrict__ row_dot,
                       const bf16* __restrict__ d_out, T* __restrict__ d_q, TokenStrides in,
                       TokenStrides grad) {
  using R = AttnRows<D>;
  using L = StreamSmem<D, 2>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);
  bf16* do_s = q_s + R::kElems;
  bf16* stages = reinterpret_cast<bf16*>(smem + L::kStages);
  const int warp = threadIdx.x / 32, lane = Lane();

  const int tile = d.tiles() - 1 - static_cast<int>(blockIdx.x);
  const int64_t q0 = static_cast<int64_t>(tile) * kTile;
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;  // d_out's (and a contiguous q's)
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  const int64_t sq = kStrided ? in.q : q_stride, sk = kStrided ? in.k : kv_stride,
                sv = kStrided ? in.v : kv_stride;
  const int64_t k_at = kStrided ? HeadOffset<D>(d, b, sk, kvh) : kv_head;
  const int64_t v_at = kStrided ? HeadOffset<D>(d, b, sv, kvh) : kv_head;
  auto load_kv = [&](int stage, int j) {
    bf16* k_s = stages + 2 * stage * R::kElems;
    const int64_t first = static_cast<int64_t>(j) * kTile;
    LoadAttnTile<D>(k_s, k + k_at, sk, first, d.t);
    LoadAttnTile<D>(k_s + R::kElems, v + v_at, sv, first, d.t);
  };

  LoadAttnTile<D>(q_s, q + (kStrided ? HeadOffset<D>(d, b, sq, h) : q_head), sq, q0, d.t);
  LoadAttnTile<D>(do_s, d_out + q_head, q_stride, q0, d.t);
  load_kv(0, 0);
  CpAsyncCommit();
  const int64_t row0 = q0 + warp * 16;
  float lse2[2], di[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    RowStats(d, lse, row_dot, b, h, row0 + ml::CRow(lane, 2 * half), lse2[half], di[half]);
  }
  CpAsyncWait<0>();
  __syncthreads();
  unsigned qf[D / 16][4], dof[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LoadA(qf[kk], q_s, R::kLd, warp * 16, kk * 16);
    LoadA(dof[kk], do_s, R::kLd, warp * 16, kk * 16);
  }
  float dq[D / 8][4];
  Zero(dq);

  for (int j = 0; j <= tile; ++j) {
    const int stage = j & 1;
    if (j < tile) load_kv(stage ^ 1, j + 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    const bf16* k_s = stages + 2 * stage * R::kElems;
    const bf16* v_s = k_s + R::kElems;
    const bool mask = ml::TileNeedsMask(tile, j);
#pragma unroll
    for (int c = 0; c < kTile / 16; ++c) {
      // S = Q Kᵀ and dP = dO Vᵀ for the warp's 16 queries and keys c·16...
      float s[2][4], dp[2][4];
      Zero(s);
      Zero(dp);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        unsigned kb[4], vb[4];
        LoadBRows(kb, k_s, R::kLd, c * 16, kk * 16);
        LoadBRows(vb, v_s, R::kLd, c * 16, kk * 16);
        MmaPair(s, 0, qf[kk], kb);
        MmaPair(dp, 0, dof[kk], vb);
      }
      if (mask) ml::MaskTile<false>(s, lane, row0, static_cast<int64_t>(j) * kTile + c * 16, d.t);
      ml::GradRows(s, dp, scale_log2, lse2, di);  // P, dS
      unsigned dsa[4];
      CToA(dsa, dp, 0);
      // dQ += dS K over these 16 keys (the scale at the end).
#pragma unroll
      for (int nb = 0; nb < D / 16; ++nb) {
        unsigned kb[4];
        LoadBCols(kb, k_s, R::kLd, nb * 16, c * 16);
        MmaPair(dq, nb, dsa, kb);
      }
    }
    __syncthreads();  // stage `stage` is reloaded next
  }
  const float factor[2] = {scale, scale};
  const int64_t gq = kStrided ? grad.q : q_stride;
  StoreRows<T, D>(dq, factor, d_q + (kStrided ? HeadOffset<D>(d, b, gq, h) : q_head), gq, row0,
                  d.t);
}

// The 8 x 8 b16 matrix whose fragment (lane t: row t / 4, columns
// 2 (t % 4), + 1) is a, transposed, in the same fragment layout.
__device__ __forceinline__ unsigned MovMatrixTrans(unsigned a) {
  unsigned d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
}

// The A fragment of dS (16 queries x 16 keys) from a stored chunk of dSᵀ:
// register r of the chunk is dSᵀ's 8 x 8 block (key half r % 2, query half
// r / 2); transposed it is dS's block (query half r / 2, key half r % 2),
// which is register r of A with the two bits swapped.
__device__ __forceinline__ void DsFragment(unsigned (&a)[4], const uint4& chunk) {
  a[0] = MovMatrixTrans(chunk.x);
  a[1] = MovMatrixTrans(chunk.z);
  a[2] = MovMatrixTrans(chunk.y);
  a[3] = MovMatrixTrans(chunk.w);
}

// Stages of the d_q pass's pipeline: a key tile's dSᵀ chunks (8 KB) and K
// rows stream in kDsKStages - 1 tiles ahead. Its compute per tile is short
// (32 MMAs a warp). On the moe_125m shape (H200, ncu) it took 72 µs with
// one tile ahead and 68 µs with three, DRAM 40 % busy and 17 % occupancy
// (3 blocks an SM): still latency-bound; more warps a block is the next
// thing to try.
constexpr int kDsKStages = 4;
template <int D>
struct DsKSmem {
  static constexpr int kDsElems = kTile * kTile;
  static constexpr int kStageElems = kDsElems + AttnRows<D>::kElems;
  static constexpr int kBytes = kDsKStages * kStageElems * 2;
};

// Block (query tile, h, b): d_q = dS K of kTile queries over the key tiles
// 0..tile in order, 16 keys at a time, dS from the d_k/d_v pass's stored dSᵀ
// chunks (DsFragment). Tiles last first.
template <typename T, int D, bool kStrided>
__global__ void __launch_bounds__(kThreads)
    MmaBackwardDsKKernel(AttnDims d, float scale, const bf16* __restrict__ ds_t,
                         const bf16* __restrict__ k, T* __restrict__ d_q, TokenStrides in,
                         TokenStrides grad) {
  using R = AttnRows<D>;
  using L = DsKSmem<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* stages = reinterpret_cast<bf16*>(smem);
  const int warp = threadIdx.x / 32, lane = Lane();

  const int tile = d.tiles() - 1 - static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z, kvh = h / d.group();
  const int64_t q_stride = static_cast<int64_t>(d.h) * D;
  const int64_t kv_stride = static_cast<int64_t>(d.kv) * D;
  const int64_t q_head = (static_cast<int64_t>(b) * d.t * d.h + h) * D;
  const int64_t kv_head = (static_cast<int64_t>(b) * d.t * d.kv + kvh) * D;
  const int64_t gq = kStrided ? grad.q : q_stride, sk = kStrided ? in.k : kv_stride;
  const int64_t dq_head = kStrided ? HeadOffset<D>(d, b, gq, h) : q_head;
  const int64_t k_head = kStrided ? HeadOffset<D>(d, b, sk, kvh) : kv_head;
  const bf16* ds_row = ds_t + DsTileOffset(d, b, h, tile, 0);  // key tiles 0..tile follow
  auto load = [&](int j) {
    bf16* stage = stages + (j % kDsKStages) * L::kStageElems;
    const bf16* src = ds_row + static_cast<int64_t>(j) * L::kDsElems;
    for (int e = threadIdx.x * 8; e < L::kDsElems; e += kThreads * 8) {
      CpAsync16(stage + e, src + e, true);
    }
    LoadAttnTile<D>(stage + L::kDsElems, k + k_head, sk, static_cast<int64_t>(j) * kTile, d.t);
  };

#pragma unroll
  for (int j = 0; j < kDsKStages - 1; ++j) {
    if (j <= tile) load(j);
    CpAsyncCommit();  // empty groups too: the wait below counts groups
  }
  float dq[D / 8][4];
  Zero(dq);
  for (int j = 0; j <= tile; ++j) {
    if (j + kDsKStages - 1 <= tile) load(j + kDsKStages - 1);
    CpAsyncCommit();
    CpAsyncWait<kDsKStages - 1>();  // tile j's group is complete
    __syncthreads();
    const bf16* stage = stages + (j % kDsKStages) * L::kStageElems;
    const bf16* k_s = stage + L::kDsElems;
#pragma unroll
    for (int c = 0; c < kTile / 16; ++c) {
      // Chunk (key block c, query block warp): this lane's 16 bytes of it.
      const uint4 chunk = *reinterpret_cast<const uint4*>(stage + (c * 4 + warp) * 256 + lane * 8);
      unsigned dsa[4];
      DsFragment(dsa, chunk);
#pragma unroll
      for (int nb = 0; nb < D / 16; ++nb) {
        unsigned kb[4];
        LoadBCols(kb, k_s, R::kLd, nb * 16, c * 16);
        MmaPair(dq, nb, dsa, kb);
      }
    }
    __syncthreads();  // this stage is reloaded next
  }
  const float factor[2] = {scale, scale};
  StoreRows<T, D>(dq, factor, d_q + dq_head, gq, static_cast<int64_t>(tile) * kTile + warp * 16,
                  d.t);
}

// ---------------------------------------------------------------- launchers

AttnDims DimsOf(const Tensor& q, const Tensor& k) {
  return {static_cast<int>(q.dim(0)), static_cast<int>(q.dim(1)), static_cast<int>(q.dim(2)),
          static_cast<int>(k.dim(2))};
}

// The token strides of three [B, T, heads, D] tensors (contiguous, or head
// rows that causal_attention.cu's AttentionTakesHeadRows let through).
TokenStrides StridesOf(const Tensor& q, const Tensor& k, const Tensor& v) {
  const auto stride = [](const Tensor& t) {
    return CheckHeadRows(t, "attention", "operand").stride;
  };
  return {stride(q), stride(k), stride(v)};
}

template <typename T, int D, int kRows, bool kStrided>
void LaunchForward(const ExecContext& ctx, const AttnDims& d, const TokenStrides& in,
                   const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& lse) {
  const char* op = "CausalAttention";
  constexpr int kBytes = StreamSmem<D, 1>::kBytes;
  static const cudaError_t attr =
      AllowDynamicSmem(MmaForwardKernel<T, D, kRows, kStrided>, kBytes, true);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  const dim3 grid(static_cast<unsigned>(d.tiles()), d.h, d.b);
  MmaForwardKernel<T, D, kRows, kStrided><<<grid, kFwdThreads<kRows>, kBytes, Stream(ctx)>>>(
      d, AttentionScaleLog2(D), Ptr<const bf16>(q), Ptr<const bf16>(k), Ptr<const bf16>(v),
      Ptr<T>(out), Ptr<float>(lse), in);
  SM_CHECK_LAUNCH(ctx, op, "MmaForwardKernel");
}

template <typename T, int D, bool kStrided>
void RunForward(const ExecContext& ctx, const AttnDims& d, const TokenStrides& in, const Tensor& q,
                const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse) {
  static const bool one_row_block = EnvEquals("SCALEMOE_ATTENTION_FWD_ROWS", "1");
  if constexpr (D == 64) {
    if (!one_row_block) return LaunchForward<T, D, 2, kStrided>(ctx, d, in, q, k, v, out, lse);
  }
  LaunchForward<T, D, 1, kStrided>(ctx, d, in, q, k, v, out, lse);
}

// The dSᵀ scratch budget: ops::kAttentionDsBudgetBytes, or
// SCALEMOE_ATTENTION_DS_BUDGET_BYTES (bytes; the tests' small budgets run
// several slices, and the d_q pass that recomputes dS, on small shapes).
int64_t DsBudgetBytes() {
  static const int64_t budget = [] {
    const char* env = std::getenv("SCALEMOE_ATTENTION_DS_BUDGET_BYTES");
    return env != nullptr ? std::max<int64_t>(0, std::atoll(env)) : ops::kAttentionDsBudgetBytes;
  }();
  return budget;
}

// q, k, v, d_out: the bf16 operands; the gradients in T.
template <typename T, int D, bool kStrided>
void RunBackward(const ExecContext& ctx, const AttnDims& d, const TokenStrides& in,
                 const TokenStrides& grad, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& lse, const Tensor& row_dot, const Tensor& d_out, const Tensor& d_q,
                 const Tensor& d_k, const Tensor& d_v) {
  const char* op = "CausalAttentionBackward";
  const float scale = 1.0f / std::sqrt(static_cast<float>(D)), scale_log2 = AttentionScaleLog2(D);
  const bf16 *qp = Ptr<const bf16>(q), *kp = Ptr<const bf16>(k), *vp = Ptr<const bf16>(v);
  const bf16* dop = Ptr<const bf16>(d_out);
  const float *lp = Ptr<const float>(lse), *rp = Ptr<const float>(row_dot);
  constexpr int kKvBytes = KvSmem<D>::kBytes;

  static const bool recompute_env = EnvEquals("SCALEMOE_ATTENTION_DQ", "recompute");
  const int64_t per_sequence = ops::AttentionDsBytesPerSequence(d.t, d.h);
  const int64_t budget = DsBudgetBytes();
  if (recompute_env || per_sequence > budget) {
    static const cudaError_t kv_attr =
        AllowDynamicSmem(MmaBackwardKvKernel<T, D, false, kStrided>, kKvBytes, true);
    SM_CHECK_CUDA_CALL(ctx, kv_attr, op);
    MmaBackwardKvKernel<T, D, false, kStrided>
        <<<dim3(static_cast<unsigned>(d.tiles()), d.kv, d.b), kThreads, kKvBytes, Stream(ctx)>>>(
            d, scale, scale_log2, qp, kp, vp, lp, rp, dop, Ptr<T>(d_k), Ptr<T>(d_v), nullptr, in,
            grad);
    SM_CHECK_LAUNCH(ctx, op, "MmaBackwardKvKernel");
    constexpr int kQBytes = StreamSmem<D, 2>::kBytes;
    static const cudaError_t q_attr =
        AllowDynamicSmem(MmaBackwardQKernel<T, D, kStrided>, kQBytes, true);
    SM_CHECK_CUDA_CALL(ctx, q_attr, op);
    MmaBackwardQKernel<T, D, kStrided>
        <<<dim3(static_cast<unsigned>(d.tiles()), d.h, d.b), kThreads, kQBytes, Stream(ctx)>>>(
            d, scale, scale_log2, qp, kp, vp, lp, rp, dop, Ptr<T>(d_q), in, grad);
    SM_CHECK_LAUNCH(ctx, op, "MmaBackwardQKernel");
    return;
  }

  // Slices of whole sequences whose dSᵀ tiles fit the budget (core/ops.h):
  // every operand's leading dim is the batch.
  static const cudaError_t kv_attr =
      AllowDynamicSmem(MmaBackwardKvKernel<T, D, true, kStrided>, kKvBytes, true);
  SM_CHECK_CUDA_CALL(ctx, kv_attr, op);
  constexpr int kDsKBytes = DsKSmem<D>::kBytes;
  static const cudaError_t dsk_attr =
      AllowDynamicSmem(MmaBackwardDsKKernel<T, D, kStrided>, kDsKBytes, true);
  SM_CHECK_CUDA_CALL(ctx, dsk_attr, op);
  const int slice = static_cast<int>(std::min<int64_t>(d.b, budget / per_sequence));
  const Tensor ds_t =
      ctx.Empty({static_cast<int64_t>(slice) * d.h * DsTilePairs(d) * kTile * kTile}, DType::kBF16);
  // Elements of one sequence in each operand (its token stride times T).
  const auto seq = [&](int64_t token_stride) { return static_cast<int64_t>(d.t) * token_stride; };
  const int64_t do_rows = seq(static_cast<int64_t>(d.h) * D);
  const int64_t stats = static_cast<int64_t>(d.h) * d.t;  // of lse and row_dot
  for (int b0 = 0; b0 < d.b; b0 += slice) {
    AttnDims ds = d;
    ds.b = std::min(slice, d.b - b0);
    MmaBackwardKvKernel<T, D, true, kStrided>
        <<<dim3(static_cast<unsigned>(ds.tiles()), ds.kv, ds.b), kThreads, kKvBytes, Stream(ctx)>>>(
            ds, scale, scale_log2, qp + b0 * seq(in.q), kp + b0 * seq(in.k), vp + b0 * seq(in.v),
            lp + b0 * stats, rp + b0 * stats, dop + b0 * do_rows, Ptr<T>(d_k) + b0 * seq(grad.k),
            Ptr<T>(d_v) + b0 * seq(grad.v), Ptr<bf16>(ds_t), in, grad);
    SM_CHECK_LAUNCH(ctx, op, "MmaBackwardKvKernel");
    MmaBackwardDsKKernel<T, D, kStrided>
        <<<dim3(static_cast<unsigned>(ds.tiles()), ds.h, ds.b), kThreads, kDsKBytes, Stream(ctx)>>>(
            ds, scale, Ptr<const bf16>(ds_t), kp + b0 * seq(in.k), Ptr<T>(d_q) + b0 * seq(grad.q),
            in, grad);
    SM_CHECK_LAUNCH(ctx, op, "MmaBackwardDsKKernel");
  }
}

}  // namespace

bool UseAttentionMma() {
  static const bool use = [] { return !EnvEquals("SCALEMOE_ATTENTION", "wmma"); }();
  return use;
}

void CausalAttentionMma(const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse) {
  const AttnDims d = DimsOf(q, k);
  const Tensor qb = AttentionBf16Operand(ctx, q), kb = AttentionBf16Operand(ctx, k);
  const Tensor vb = AttentionBf16Operand(ctx, v);
  const TokenStrides in = StridesOf(qb, kb, vb);
  const bool strided = !(qb.is_contiguous() && kb.is_contiguous() && vb.is_contiguous());
  DispatchAttention(q, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    if (strided) {
      RunForward<T, D, true>(ctx, d, in, qb, kb, vb, out, lse);
    } else {
      RunForward<T, D, false>(ctx, d, in, qb, kb, vb, out, lse);
    }
  });
}

void CausalAttentionBackwardMma(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                                const Tensor& v, const Tensor& out, const Tensor& lse,
                                const Tensor& d_out, const Tensor& d_q, const Tensor& d_k,
                                const Tensor& d_v) {
  const AttnDims d = DimsOf(q, k);
  const Tensor qb = AttentionBf16Operand(ctx, q), kb = AttentionBf16Operand(ctx, k);
  const Tensor vb = AttentionBf16Operand(ctx, v), dob = AttentionBf16Operand(ctx, d_out);
  const Tensor row_dot = AttentionRowDot(ctx, out, d_out, "CausalAttentionBackward");
  const TokenStrides in = StridesOf(qb, kb, vb), grad = StridesOf(d_q, d_k, d_v);
  bool strided = false;
  for (const Tensor* t : {&qb, &kb, &vb, &d_q, &d_k, &d_v}) strided |= !t->is_contiguous();
  DispatchAttention(q, [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    if (strided) {
      RunBackward<T, D, true>(ctx, d, in, grad, qb, kb, vb, lse, row_dot, dob, d_q, d_k, d_v);
    } else {
      RunBackward<T, D, false>(ctx, d, in, grad, qb, kb, vb, lse, row_dot, dob, d_q, d_k, d_v);
    }
  });
}

}  // namespace scalemoe::cuda
