// Grouped GEMMs on the GPU (core/ops.h): every group (expert) of one matrix
// in one launch, the group boundaries read from the device offsets.
//
// Both ops are one generic tiled product per group, C_g = A_g · B_g:
// - GroupedGemm: A_g = the group's rows of a [M, K], B_g = its matrix (or
//   its transpose), C_g = the same rows of c. The grid's y runs over row
//   tiles of every group (at most ceil(M / tile) + G of them); a block finds
//   its group by a prefix over the offsets and exits if it has none.
// - GroupedGemmWeightGrad: A_g = (the group's rows of a)ᵀ, B_g = the same
//   rows of b, C_g = the group's output matrix; grid z = the group, the
//   reduction runs over the group's rows.
// Kernels: bf16 inputs on tensor cores when every contiguous dim is a
// multiple of 8 and every input pointer 16-byte aligned — the forward (both
// operands K-major) on wgmma on sm_90 devices, everything else on mma.sync
// (ldmatrix fragments; f32 accumulators either way); otherwise (f32, f64,
// odd shapes) an exact SIMT kernel. No atomics, fixed summation order: the
// same bits on every run.
// SCALEMOE_GROUPED_WGRAD=wgmma (off: correct on the H200 but slower there
// than mma.sync, 191 vs 204 TFLOP/s at gpu_moe_125m's shapes and 135 vs 220
// at gpu_finegrained_64e's, bench/RESULTS.md) runs the bf16 -> f32 weight
// gradient on wgmma too: both operands
// transposed by group into K-major scratch, each group's columns padded
// with zeros to a multiple of the k tile (core/cuda/grouped_gemm_transpose.h),
// then the wgmma kernel with grid z = the group.
#include <type_traits>

#include "core/cuda/cp_async.cuh"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/grouped_gemm_transpose.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/mma_sync.cuh"
#include "core/cuda/wgmma.cuh"

namespace scalemoe::cuda {
namespace {

using bf16 = __nv_bfloat16;

// One launch's operands. An operand element (outer, inner) lives at
// base[outer * ld + inner]: inner is the contiguous dim.
struct Problem {
  const void* a = nullptr;  // row-stacked: group g's rows start at offsets[g]
  int64_t lda = 0;
  const void* b = nullptr;  // weight grad: row-stacked like a
  int64_t ldb = 0;
  const int64_t* b_table = nullptr;  // GroupedGemm: the groups' matrices
  void* c = nullptr;                 // GroupedGemm: row-stacked like a
  int64_t ldc = 0;
  const int64_t* c_table = nullptr;  // weight grad: the groups' outputs
  const int64_t* offsets = nullptr;  // [groups + 1]
  int groups = 0;
  int64_t m = 0;  // weight grad: rows of every C_g
  int64_t n = 0;  // columns of C
  int64_t k = 0;  // GroupedGemm: the reduction length
  float beta = 0.0f;
};

// The part of the product one block computes: rows [m0, m0 + tile) of C_g
// (below m_lim), columns from blockIdx.x, the reduction over [0, k_len).
template <typename T, typename OutT>
struct BlockWork {
  bool valid = false;
  const T* a = nullptr;
  const T* b = nullptr;
  OutT* c = nullptr;
  int64_t m0 = 0, m_lim = 0, k_len = 0;
};

template <typename T, typename OutT, bool kWeightGrad>
__device__ BlockWork<T, OutT> FindWork(const Problem& p, int tile_m) {
  BlockWork<T, OutT> w;
  if constexpr (kWeightGrad) {
    const int g = blockIdx.z;
    const int64_t r0 = p.offsets[g];
    w.valid = true;
    w.a = static_cast<const T*>(p.a) + r0 * p.lda;
    w.b = static_cast<const T*>(p.b) + r0 * p.ldb;
    w.c = reinterpret_cast<OutT*>(p.c_table[g]);
    w.m0 = static_cast<int64_t>(blockIdx.y) * tile_m;
    w.m_lim = p.m;
    w.k_len = p.offsets[g + 1] - r0;
  } else {
    // Row tile blockIdx.y of the concatenation of every group's row tiles.
    int64_t first_tile = 0;
    for (int g = 0; g < p.groups; ++g) {
      const int64_t r0 = p.offsets[g], rows = p.offsets[g + 1] - r0;
      const int64_t tiles = (rows + tile_m - 1) / tile_m;
      if (blockIdx.y < first_tile + tiles) {
        w.valid = true;
        w.a = static_cast<const T*>(p.a) + r0 * p.lda;
        w.b = reinterpret_cast<const T*>(p.b_table[g]);
        w.c = static_cast<OutT*>(p.c) + r0 * p.ldc;
        w.m0 = (blockIdx.y - first_tile) * tile_m;
        w.m_lim = rows;
        w.k_len = p.k;
        return w;
      }
      first_tile += tiles;
    }
  }
  return w;
}

// The weight gradient from K-major copies (the wgmma path): a, b are the
// transposed operands [m, lda] and [n, ldb], offsets the groups' padded
// column starts (multiples of the k tile, zeros past each group's rows).
template <typename OutT>
__device__ BlockWork<bf16, OutT> FindTransposedWork(const Problem& p, int tile_m) {
  BlockWork<bf16, OutT> w;
  const int g = blockIdx.z;
  const int64_t k0 = p.offsets[g];
  w.valid = true;
  w.a = static_cast<const bf16*>(p.a) + k0;
  w.b = static_cast<const bf16*>(p.b) + k0;
  w.c = reinterpret_cast<OutT*>(p.c_table[g]);
  w.m0 = static_cast<int64_t>(blockIdx.y) * tile_m;
  w.m_lim = p.m;
  w.k_len = p.offsets[g + 1] - k0;
  return w;
}

// c = acc + beta * c, rounded to OutT.
template <typename OutT, typename A>
__device__ __forceinline__ void StoreOut(OutT* dst, A acc, float beta) {
  A v = acc;
  if (beta != 0.0f) v += static_cast<A>(beta) * static_cast<A>(ToAcc(*dst));
  *dst = FromAcc<OutT>(static_cast<Acc<OutT>>(v));
}

// The pair row[col], row[col + 1] (nothing past n; col is even and n a
// multiple of 8, so a pair is all in or all out), as one access when
// `pair` (the pair is aligned) or element by element.
__device__ __forceinline__ void LoadPair(const float* row, int64_t col, int64_t n, bool pair,
                                         float (&v)[2]) {
  if (col >= n) return;
  if (pair) {
    const float2 x = *reinterpret_cast<const float2*>(row + col);
    v[0] = x.x, v[1] = x.y;
  } else {
    v[0] = row[col], v[1] = row[col + 1];
  }
}
__device__ __forceinline__ void LoadPair(const bf16* row, int64_t col, int64_t n, bool pair,
                                         float (&v)[2]) {
  if (col >= n) return;
  if (pair) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + col));
    v[0] = x.x, v[1] = x.y;
  } else {
    v[0] = __bfloat162float(row[col]), v[1] = __bfloat162float(row[col + 1]);
  }
}
__device__ __forceinline__ void StorePair(float* row, int64_t col, int64_t n, bool pair,
                                          const float (&v)[2]) {
  if (col >= n) return;
  if (pair) {
    *reinterpret_cast<float2*>(row + col) = make_float2(v[0], v[1]);
  } else {
    row[col] = v[0], row[col + 1] = v[1];
  }
}
__device__ __forceinline__ void StorePair(bf16* row, int64_t col, int64_t n, bool pair,
                                          const float (&v)[2]) {
  if (col >= n) return;
  if (pair) {
    *reinterpret_cast<__nv_bfloat162*>(row + col) = __floats2bfloat162_rn(v[0], v[1]);
  } else {
    row[col] = __float2bfloat16_rn(v[0]), row[col + 1] = __float2bfloat16_rn(v[1]);
  }
}

// One lane's kPairs column pairs of an output row, at columns col0 + 8j and
// col0 + 8j + 1: v + beta * row's old values. With beta, the old values are
// all read before any is written: one round trip per row instead of one per
// element (the compiler cannot reorder them itself).
template <int kPairs, typename OutT>
__device__ __forceinline__ void StoreRowPairs(OutT* row, int64_t col0, int64_t n, bool pairs,
                                              float beta, float (&v)[kPairs][2]) {
  if (beta != 0.0f) {
    float old[kPairs][2];
#pragma unroll
    for (int j = 0; j < kPairs; ++j) LoadPair(row, col0 + j * 8, n, pairs, old[j]);
#pragma unroll
    for (int j = 0; j < kPairs; ++j) {
      v[j][0] += beta * old[j][0];
      v[j][1] += beta * old[j][1];
    }
  }
#pragma unroll
  for (int j = 0; j < kPairs; ++j) StorePair(row, col0 + j * 8, n, pairs, v[j]);
}

// ---------------------------------------------------------------- SIMT kernel

constexpr int kSimtTile = 64, kSimtK = 16, kSimtThreads = 256;

// kAKMajor: A(m, k) at a[m * lda + k] (else a[k * lda + m]); kBKMajor:
// B(k, n) at b[n * ldb + k] (else b[k * ldb + n]).
template <typename T, typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
__global__ void __launch_bounds__(kSimtThreads) GroupedGemmSimtKernel(Problem p) {
  using A = Acc<T>;
  const BlockWork<T, OutT> w = FindWork<T, OutT, kWeightGrad>(p, kSimtTile);
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSimtTile;
  __shared__ A as[kSimtK][kSimtTile];
  __shared__ A bs[kSimtK][kSimtTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  A acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.k_len; k0 += kSimtK) {
    for (int e = threadIdx.x; e < kSimtTile * kSimtK; e += kSimtThreads) {
      // The contiguous dim fastest across threads: coalesced reads.
      const int mk = kAKMajor ? e / kSimtK : e % kSimtTile;
      const int kk = kAKMajor ? e % kSimtK : e / kSimtTile;
      const int64_t gm = w.m0 + mk, gk = k0 + kk;
      A v = 0;
      if (gm < w.m_lim && gk < w.k_len) {
        v = ToAcc(kAKMajor ? w.a[gm * p.lda + gk] : w.a[gk * p.lda + gm]);
      }
      as[kk][mk] = v;
      const int nb = kBKMajor ? e / kSimtK : e % kSimtTile;
      const int kb = kBKMajor ? e % kSimtK : e / kSimtTile;
      const int64_t gn = n0 + nb, gkb = k0 + kb;
      A u = 0;
      if (gn < p.n && gkb < w.k_len) {
        u = ToAcc(kBKMajor ? w.b[gn * p.ldb + gkb] : w.b[gkb * p.ldb + gn]);
      }
      bs[kb][nb] = u;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtK; ++kk) {
      A av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = w.m0 + ty + 16 * i;
    if (gm >= w.m_lim) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn < p.n) StoreOut(w.c + gm * p.ldc + gn, acc[i][j], p.beta);
    }
  }
}

// ---------------------------------------------------------------- tensor-core kernel

// 128 x 128 output tiles, k in steps of 32 through a 4-stage cp.async ring;
// 4 warps as 2 x 2, each a 64 x 64 block: 4 x 8 mma.sync m16n8k16 per 16 of
// k from 4 + 4 ldmatrix.x4 (.trans for an operand whose k is not
// contiguous). Two blocks per SM (240 registers a thread, 80 KB of shared
// memory each). Measured on the H200 (bench/RESULTS.md): 64 x 32 warp tiles
// issued too many ldmatrix per MMA; 128 x 256 block tiles (one block of 8
// warps per SM) cut L2 traffic but stalled on latency. Shared rows are
// padded by 16 bytes, which keeps every ldmatrix and cp.async free of bank
// conflicts in both layouts.
constexpr int kTileM = 128, kTileN = 128, kTileK = 32, kStages = 4, kPad = 8, kTcThreads = 128;

// An operand's tile in shared memory: kOuter x kInner elements (inner
// contiguous, rows padded), loaded 8 at a time; a chunk past a limit is
// zero-filled (the limits of the inner dim are multiples of 8, so a chunk
// is all in or all out).
template <int kOuter, int kInner>
struct SmemTile {
  static constexpr int kLd = kInner + kPad;
  static constexpr int kElems = kOuter * kLd;
  __device__ static void Load(bf16* smem, const bf16* base, int64_t ld, int64_t outer0,
                              int64_t inner0, int64_t outer_lim, int64_t inner_lim) {
    constexpr int kChunksPerRow = kInner / 8, kChunks = kOuter * kChunksPerRow;
    static_assert(kChunks % kTcThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < kChunks / kTcThreads; ++it) {
      const int c = threadIdx.x + it * kTcThreads;
      const int o = c / kChunksPerRow, i = (c % kChunksPerRow) * 8;
      const int64_t go = outer0 + o, gi = inner0 + i;
      const bool valid = go < outer_lim && gi < inner_lim;
      CpAsync16(smem + o * kLd + i, valid ? base + go * ld + gi : base, valid);
    }
  }
};

template <bool kAKMajor, bool kBKMajor>
struct TcTiles {
  // A: [m][k] when k is contiguous, else [k][m]; B: [n][k] or [k][n].
  using ATile = std::conditional_t<kAKMajor, SmemTile<kTileM, kTileK>, SmemTile<kTileK, kTileM>>;
  using BTile = std::conditional_t<kBKMajor, SmemTile<kTileN, kTileK>, SmemTile<kTileK, kTileN>>;
  static constexpr int kStageElems = ATile::kElems + BTile::kElems;
  static constexpr int kSmemBytes = kStages * kStageElems * 2;
};

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
__global__ void __launch_bounds__(kTcThreads, 2) GroupedGemmTcKernel(Problem p) {
  using Tiles = TcTiles<kAKMajor, kBKMajor>;
  using ATile = typename Tiles::ATile;
  using BTile = typename Tiles::BTile;
  const BlockWork<bf16, OutT> w = FindWork<bf16, OutT, kWeightGrad>(p, kTileM);
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  bf16* const smem = reinterpret_cast<bf16*>(smem_bytes);
  auto stage_a = [&](int s) { return smem + s * Tiles::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Tiles::kStageElems + ATile::kElems; };
  auto load = [&](int s, int64_t k0) {
    if constexpr (kAKMajor) {
      ATile::Load(stage_a(s), w.a, p.lda, w.m0, k0, w.m_lim, w.k_len);
    } else {
      ATile::Load(stage_a(s), w.a, p.lda, k0, w.m0, w.k_len, w.m_lim);
    }
    if constexpr (kBKMajor) {
      BTile::Load(stage_b(s), w.b, p.ldb, n0, k0, p.n, w.k_len);
    } else {
      BTile::Load(stage_b(s), w.b, p.ldb, k0, n0, w.k_len, p.n);
    }
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 2) * 64, wn = (warp % 2) * 64;
  float acc[4][8][4] = {};
  const int64_t k_tiles = (w.k_len + kTileK - 1) / kTileK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load(s, s * kTileK);
    CpAsyncCommit();
  }
  for (int64_t t = 0; t < k_tiles; ++t) {
    CpAsyncWait<kStages - 2>();  // tile t has landed
    __syncthreads();             // ... for every thread; tile t - 1's stage is free
    const int64_t next = t + kStages - 1;
    if (next < k_tiles) load(static_cast<int>(next % kStages), next * kTileK);
    CpAsyncCommit();
    const int s = static_cast<int>(t % kStages);
    const bf16* a_tile = stage_a(s);
    const bf16* b_tile = stage_b(s);
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      unsigned af[4][4], bfr[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        LoadFragmentA<kAKMajor>(af[i], a_tile, ATile::kLd, wm + i * 16, kk);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        LoadFragmentsB<kBKMajor>(bfr[j], b_tile, BTile::kLd, wn + j * 16, kk);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          MmaBf16(acc[i][j], af[i], bfr[j / 2][(j % 2) * 2], bfr[j / 2][(j % 2) * 2 + 1]);
      }
    }
  }
  CpAsyncWait<0>();
  // Straight from the accumulators: each lane holds 2 adjacent columns of 2
  // rows per block (n is a multiple of 8: a pair is all in or all out),
  // stored as one pair when the output's rows allow it.
  const bool pairs = p.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(w.c) % (2 * sizeof(OutT)) == 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t gm = w.m0 + wm + i * 16 + h * 8 + lane / 4;
      if (gm >= w.m_lim) continue;
      OutT* row = w.c + gm * p.ldc;
      const int64_t col0 = n0 + wn + (lane % 4) * 2;
      float v[8][2];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[j][0] = acc[i][j][h * 2];
        v[j][1] = acc[i][j][h * 2 + 1];
      }
      StoreRowPairs(row, col0, p.n, pairs, p.beta, v);
    }
  }
}

// ---------------------------------------------------------------- wgmma kernel (sm_90a)

// Both operands K-major (the forward x·W_gᵀ): 128 x 128 output tiles, k in
// steps of 64 through a 3-stage cp.async ring of 128B-swizzled tiles, two
// warpgroups each computing 64 rows with wgmma m64n128k16 (four per stage).
// Two blocks per SM (96 KB of shared memory each). kTransposedWgrad: the
// weight gradient from its K-major copies (FindTransposedWork), grid z =
// the group; only where the operands come from and the k range differ.
constexpr int kWgTileM = 128, kWgTileN = 128, kWgTileK = 64, kWgStages = 3, kWgThreads = 256;
static_assert(kWgTileM == kTileM, "GroupedGemm sizes its grid by kTileM for both kernels");
constexpr int kWgTileBytes = 128 * kWgTileK * 2;  // one operand's tile: 128 rows of 128 bytes
constexpr int kWgStageBytes = 2 * kWgTileBytes;
constexpr int kWgSmemBytes = kWgStages * kWgStageBytes + 1024;  // + the base's 1024 alignment

// Rows [outer0, outer0 + 128) x k [k0, k0 + 64) of a K-major operand into a
// swizzled tile; chunks past a limit are zero-filled.
__device__ __forceinline__ void LoadSwizzledTile(unsigned char* tile, const bf16* base, int64_t ld,
                                                 int64_t outer0, int64_t k0, int64_t outer_lim,
                                                 int64_t k_lim) {
  constexpr int kChunks = 128 * 8;
  static_assert(kChunks % kWgThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kChunks / kWgThreads; ++it) {
    const int c = threadIdx.x + it * kWgThreads;
    const int row = c / 8, chunk = c % 8;
    const int64_t go = outer0 + row, gk = k0 + chunk * 8;
    const bool valid = go < outer_lim && gk < k_lim;
    CpAsync16(tile + row * 128 + ((chunk ^ (row % 8)) * 16), valid ? base + go * ld + gk : base,
              valid);
  }
}

template <typename OutT, bool kTransposedWgrad>
__global__ void __launch_bounds__(kWgThreads, 2) GroupedGemmWgmmaKernel(Problem p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  const BlockWork<bf16, OutT> w = [&] {
    if constexpr (kTransposedWgrad) return FindTransposedWork<OutT>(p, kWgTileM);
    return FindWork<bf16, OutT, false>(p, kWgTileM);
  }();
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kWgTileN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* const smem = smem_raw + ((1024 - SmemAddress(smem_raw) % 1024) % 1024);
  auto tile_a = [&](int s) { return smem + s * kWgStageBytes; };
  auto tile_b = [&](int s) { return smem + s * kWgStageBytes + kWgTileBytes; };
  auto load = [&](int s, int64_t k0) {
    LoadSwizzledTile(tile_a(s), w.a, p.lda, w.m0, k0, w.m_lim, w.k_len);
    LoadSwizzledTile(tile_b(s), w.b, p.ldb, n0, k0, p.n, w.k_len);
  };
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  float acc[64] = {};
  const int64_t k_tiles = (w.k_len + kWgTileK - 1) / kWgTileK;
#pragma unroll
  for (int s = 0; s < kWgStages - 1; ++s) {
    if (s < k_tiles) load(s, s * kWgTileK);
    CpAsyncCommit();
  }
  for (int64_t t = 0; t < k_tiles; ++t) {
    CpAsyncWait<kWgStages - 2>();  // this thread's copies of tile t have landed
    FenceProxyAsyncShared();       // ... and are visible to wgmma
    __syncthreads();               // every thread's; tile t - 1's stage is free
    const int64_t next = t + kWgStages - 1;
    if (next < k_tiles) load(static_cast<int>(next % kWgStages), next * kWgTileK);
    CpAsyncCommit();
    const int s = static_cast<int>(t % kWgStages);
    const unsigned char* a = tile_a(s) + warpgroup * 64 * 128;  // this warpgroup's 64 rows
    const unsigned char* b = tile_b(s);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kWgTileK / 16; ++kk) {
      WgmmaM64N128K16(acc, WgmmaDescriptor(a + kk * 32), WgmmaDescriptor(b + kk * 32));
    }
    WgmmaCommit();
    WgmmaWait<0>();  // the stage is read before the next iteration may refill it
  }
  CpAsyncWait<0>();
  const bool pairs = p.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(w.c) % (2 * sizeof(OutT)) == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t gm = w.m0 + warpgroup * 64 + warp * 16 + h * 8 + lane / 4;
    if (gm >= w.m_lim) continue;
    OutT* row = w.c + gm * p.ldc;
    const int64_t col0 = n0 + (lane % 4) * 2;
    float v[16][2];
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      v[j][0] = acc[4 * j + 2 * h];
      v[j][1] = acc[4 * j + 2 * h + 1];
    }
    StoreRowPairs(row, col0, p.n, pairs, p.beta, v);
  }
#else
  __trap();  // launched only on sm_90 devices, from a build for sm_90a
#endif
}

// The wgmma kernel runs where the device is sm_90 and the build has sm_90a
// code (CMake defines SCALEMOE_HAVE_SM90A); SCALEMOE_GROUPED_GEMM=mma keeps
// the mma.sync kernel (A/B timings).
bool UseWgmma() {
  static const bool use = [] {
#if !defined(SCALEMOE_HAVE_SM90A)
    return false;
#endif
    if (EnvEquals("SCALEMOE_GROUPED_GEMM", "mma")) return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
      return false;
    }
    return major == 9;
  }();
  return use;
}

// The weight gradient on wgmma: only where the wgmma kernel runs at all
// (UseWgmma) and SCALEMOE_GROUPED_WGRAD=wgmma asks for it — the mma.sync
// kernel stays the default (faster on the H200: the transposes cost more
// than the wgmma kernel saves).
bool UseWgmmaWeightGrad() {
  static const bool use = EnvEquals("SCALEMOE_GROUPED_WGRAD", "wgmma") && UseWgmma();
  return use;
}

// ---------------------------------------------------------------- launch

struct Launch {
  dim3 grid;
  bool tensor_cores = false;
};

template <typename T, typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
void Run(const ExecContext& ctx, const Problem& p, Launch launch, const char* op) {
  if constexpr (std::is_same_v<T, bf16>) {
    if constexpr (kAKMajor && kBKMajor && !kWeightGrad) {
      if (launch.tensor_cores && UseWgmma()) {
        auto kernel = GroupedGemmWgmmaKernel<OutT, false>;
        static const cudaError_t attr = AllowDynamicSmem(kernel, kWgSmemBytes);
        SM_CHECK_CUDA_CALL(ctx, attr, op);
        const dim3 grid((p.n + kWgTileN - 1) / kWgTileN, launch.grid.y, launch.grid.z);
        kernel<<<grid, kWgThreads, kWgSmemBytes, Stream(ctx)>>>(p);
        SM_CHECK_LAUNCH(ctx, op, "GroupedGemmWgmmaKernel");
        return;
      }
    }
    if (launch.tensor_cores) {
      auto kernel = GroupedGemmTcKernel<OutT, kAKMajor, kBKMajor, kWeightGrad>;
      constexpr int kBytes = TcTiles<kAKMajor, kBKMajor>::kSmemBytes;
      static const cudaError_t attr = AllowDynamicSmem(kernel, kBytes);
      SM_CHECK_CUDA_CALL(ctx, attr, op);
      const dim3 grid((p.n + kTileN - 1) / kTileN, launch.grid.y, launch.grid.z);
      kernel<<<grid, kTcThreads, kBytes, Stream(ctx)>>>(p);
      SM_CHECK_LAUNCH(ctx, op, "GroupedGemmTcKernel");
      return;
    }
  }
  const dim3 grid((p.n + kSimtTile - 1) / kSimtTile, launch.grid.y, launch.grid.z);
  GroupedGemmSimtKernel<T, OutT, kAKMajor, kBKMajor, kWeightGrad>
      <<<grid, kSimtThreads, 0, Stream(ctx)>>>(p);
  SM_CHECK_LAUNCH(ctx, op, "GroupedGemmSimtKernel");
}

// GroupedGemmWeightGrad on wgmma (bf16 a [M, N], b [M, K] -> f32 c_g):
// both operands transposed by group into K-major scratch from the caching
// allocator (at most M + 63·G columns, bounded without reading the
// offsets), then the wgmma kernel over each group's padded columns. `p` is
// the mma.sync launch's problem; its operands and offsets are swapped for
// the copies and the padded starts.
void RunWeightGradWgmma(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                        const Tensor& offsets, Problem p, const char* op) {
  const int64_t ld = PaddedGroupColumns(a.dim(0), p.groups);
  const Tensor starts = PaddedGroupStarts(ctx, offsets, p.groups, ld);
  const Tensor at = ctx.Empty({p.m, ld}, DType::kBF16);
  const Tensor bt = ctx.Empty({p.n, ld}, DType::kBF16);
  TransposeGroupRows(ctx, a, offsets, starts, p.groups, at);
  TransposeGroupRows(ctx, b, offsets, starts, p.groups, bt);
  p.a = at.raw_data();
  p.lda = ld;
  p.b = bt.raw_data();
  p.ldb = ld;
  p.offsets = static_cast<const int64_t*>(starts.raw_data());
  auto kernel = GroupedGemmWgmmaKernel<float, true>;
  static const cudaError_t attr = AllowDynamicSmem(kernel, kWgSmemBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  const dim3 grid(static_cast<unsigned>((p.n + kWgTileN - 1) / kWgTileN),
                  static_cast<unsigned>((p.m + kWgTileM - 1) / kWgTileM),
                  static_cast<unsigned>(p.groups));
  kernel<<<grid, kWgThreads, kWgSmemBytes, Stream(ctx)>>>(p);
  SM_CHECK_LAUNCH(ctx, op, "GroupedGemmWgmmaKernel (weight grad)");
}

// Calls f(Tag<T>, Tag<OutT>) for the inputs' and the output's element types.
template <typename F>
void DispatchInOut(DType in, DType out, const char* op, F&& f) {
  if (in == DType::kF32 && out == DType::kF32) return f(Tag<float>{}, Tag<float>{});
  if (in == DType::kF64 && out == DType::kF64) return f(Tag<double>{}, Tag<double>{});
  if (in == DType::kBF16 && out == DType::kBF16) return f(Tag<bf16>{}, Tag<bf16>{});
  if (in == DType::kBF16 && out == DType::kF32) return f(Tag<bf16>{}, Tag<float>{});
  SM_CHECK_MSG(false, op, ": inputs ", DTypeName(in), " with output ", DTypeName(out),
               " (f32, f64, bf16 -> bf16 or f32)");
}

void CheckOffsets(const ExecContext& ctx, const Tensor& offsets, int64_t groups, const char* op) {
  CheckOnDevice(ctx, offsets, op, "offsets");
  SM_CHECK_MSG(
      offsets.dtype() == DType::kI64 && offsets.ndim() == 1 && offsets.numel() == groups + 1, op,
      ": offsets must be int64 [", groups + 1, "], got ", offsets.DebugString());
}

void CheckGroup(const ExecContext& ctx, const MatrixGroup& group, const char* op) {
  SM_CHECK_MSG(group.addresses.numel() == group.size() &&
                   (group.size() == 0 || group.addresses.device() == Device::kCUDA),
               op, ": the matrix group's address table is not on the device (MakeMatrixGroup)");
  for (const Tensor& m : group.matrices) CheckOnDevice(ctx, m, op, "group matrix");
}

// Tensor cores: bf16, contiguous dims multiples of 8, 16-byte aligned input
// rows (cp.async reads 16 bytes; the outputs are written element-wise and
// may sit anywhere, e.g. gradients packed after a scalar β).
bool TensorCoresFit(DType in, std::initializer_list<int64_t> inner_dims,
                    std::initializer_list<const void*> inputs, const MatrixGroup* input_group) {
  if (in != DType::kBF16) return false;
  for (int64_t d : inner_dims) {
    if (d % 8 != 0) return false;
  }
  if (input_group != nullptr) {
    for (const Tensor& m : input_group->matrices) {
      if (!Aligned16(m.raw_data())) return false;
    }
  }
  return AllAligned16(inputs);
}

}  // namespace

void GroupedGemm(const ExecContext& ctx, const Tensor& a, const MatrixGroup& b,
                 const Tensor& offsets, const Tensor& c, const GroupedGemmOptions& o) {
  const char* op = "GroupedGemm";
  CheckOnDevice(ctx, a, op, "a");
  CheckOnDevice(ctx, c, op, "c");
  CheckGroup(ctx, b, op);
  CheckOffsets(ctx, offsets, b.size(), op);
  const bool trans = o.trans_b == Trans::kYes;
  SM_CHECK_MSG(a.ndim() == 2 && c.ndim() == 2 && a.dim(0) == c.dim(0) &&
                   (b.size() == 0 || (trans ? b.cols : b.rows) == a.dim(1)) &&
                   (b.size() == 0 || (trans ? b.rows : b.cols) == c.dim(1)) &&
                   (b.size() == 0 || b.dtype == a.dtype()),
               op, ": a ", a.DebugString(), " x group of ", b.size(), " [", b.rows, ", ", b.cols,
               "]", trans ? "ᵀ" : "", " -> c ", c.DebugString());
  const int64_t m = a.dim(0), k = a.dim(1), n = c.dim(1);
  if (b.size() == 0 || m == 0 || n == 0) return;
  Problem p;
  p.a = a.raw_data();
  p.lda = k;
  p.b_table = static_cast<const int64_t*>(b.addresses.raw_data());
  p.ldb = trans ? k : n;
  p.c = c.raw_data();
  p.ldc = n;
  p.offsets = static_cast<const int64_t*>(offsets.raw_data());
  p.groups = static_cast<int>(b.size());
  p.n = n;
  p.k = k;
  p.beta = static_cast<float>(o.beta);
  const bool tc = TensorCoresFit(a.dtype(), {k, n}, {a.raw_data()}, &b);
  const int tile = tc ? kTileM : kSimtTile;
  // Every group's row tiles: at most ceil(M / tile) + G of them.
  const int64_t row_tiles = (m + tile - 1) / tile + b.size();
  SM_CHECK_MSG(row_tiles <= 65535, op, ": ", m, " rows in ", b.size(),
               " groups exceed one launch's row tiles");
  const Launch launch{dim3(1, static_cast<unsigned>(row_tiles), 1), tc};
  DispatchInOut(a.dtype(), c.dtype(), op, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    if (trans) {
      Run<T, OutT, true, true, false>(ctx, p, launch, op);
    } else {
      Run<T, OutT, true, false, false>(ctx, p, launch, op);
    }
  });
}

void GroupedGemmWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                           const Tensor& offsets, const MatrixGroup& c, double beta) {
  const char* op = "GroupedGemmWeightGrad";
  CheckOnDevice(ctx, a, op, "a");
  CheckOnDevice(ctx, b, op, "b");
  CheckGroup(ctx, c, op);
  CheckOffsets(ctx, offsets, c.size(), op);
  SM_CHECK_MSG(a.ndim() == 2 && b.ndim() == 2 && a.dim(0) == b.dim(0) && a.dtype() == b.dtype() &&
                   (c.size() == 0 || (c.rows == a.dim(1) && c.cols == b.dim(1))),
               op, ": a ", a.DebugString(), "ᵀ x b ", b.DebugString(), " -> group of ", c.size(),
               " [", c.rows, ", ", c.cols, "]");
  const int64_t n_out = a.dim(1), k_out = b.dim(1);
  if (c.size() == 0 || n_out == 0 || k_out == 0) return;
  SM_CHECK_MSG(c.size() <= 65535, op, ": ", c.size(), " groups exceed one launch");
  Problem p;
  p.a = a.raw_data();
  p.lda = n_out;
  p.b = b.raw_data();
  p.ldb = k_out;
  p.c_table = static_cast<const int64_t*>(c.addresses.raw_data());
  p.ldc = k_out;
  p.offsets = static_cast<const int64_t*>(offsets.raw_data());
  p.groups = static_cast<int>(c.size());
  p.m = n_out;
  p.n = k_out;
  p.beta = static_cast<float>(beta);
  const bool tc = TensorCoresFit(a.dtype(), {n_out, k_out}, {a.raw_data(), b.raw_data()}, nullptr);
  if (tc && c.dtype == DType::kF32 && UseWgmmaWeightGrad()) {
    RunWeightGradWgmma(ctx, a, b, offsets, p, op);
    return;
  }
  const int tile = tc ? kTileM : kSimtTile;
  const Launch launch{
      dim3(1, static_cast<unsigned>((n_out + tile - 1) / tile), static_cast<unsigned>(c.size())),
      tc};
  DispatchInOut(a.dtype(), c.dtype, op, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    Run<T, OutT, false, false, true>(ctx, p, launch, op);
  });
}

}  // namespace scalemoe::cuda
