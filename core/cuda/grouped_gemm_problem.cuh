// What the grouped GEMM kernels share (core/cuda/grouped_gemm.cu, the
// mma.sync and SIMT kernels; core/cuda/grouped_gemm_wgmma.cu): one launch's
// operands, how a block finds its group and rows from the device offsets,
// and the epilogue's row stores with beta.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda::grouped_gemm {

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

// The row-stacked operand's rows read from another matrix, as GatherRows
// reads them (ops::GroupedGemmGathered): its row i is row rows[i] /
// divisor of that matrix (rows[i] >= 0 on every row of a group). Only the
// persistent wgmma kernel takes it (the forward's a, the weight
// gradient's b); null rows: no gather.
struct RowGather {
  const int32_t* rows = nullptr;
  int divisor = 1;
};

// SwiGLU in the experts' GEMM epilogues (only the persistent wgmma kernel
// takes it). The gate|up forward (ops::GroupedGemmSwiGlu): c [rows, 2F] is
// gate | up, and h [rows, F] (row-stacked like c) gets SwiGLU of each row's
// two halves. The down projection's data gradient
// (ops::GroupedGemmSwiGluBackward): the product is d_h, and d_gate_up
// [rows, 2F] gets SwiGLU's backward from it and the forward's gate_up.
struct SwiGluOut {
  bf16* h = nullptr;
  int64_t ldh = 0;
  int64_t f = 0;  // F: the up half starts at column f of c / gate_up
  const bf16* gate_up = nullptr;
  bf16* d_gate_up = nullptr;
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
  int64_t r0 = 0;  // the group's first row of the row-stacked operands
};

// Where a walk through the forward's row tiles across the groups is: the
// group it reached and that group's first row tile. A walk whose tiles come
// in increasing order (the persistent kernel's) scans only the groups it
// passed since its last lookup, not all of them from the first.
struct GroupCursor {
  int group = 0;
  int64_t first_tile = 0;
};

// The work of row tile `y` of group `z` (weight grad; the forward's row
// tiles run across the groups, z unused, from `cursor` on: y must not be
// below the cursor's first tile).
template <typename T, typename OutT, bool kWeightGrad>
__device__ BlockWork<T, OutT> FindWorkAt(const Problem& p, int tile_m, int64_t y, int z,
                                         GroupCursor& cursor) {
  BlockWork<T, OutT> w;
  if constexpr (kWeightGrad) {
    const int g = z;
    const int64_t r0 = p.offsets[g];
    w.valid = true;
    w.a = static_cast<const T*>(p.a) + r0 * p.lda;
    w.b = static_cast<const T*>(p.b) + r0 * p.ldb;
    w.c = reinterpret_cast<OutT*>(p.c_table[g]);
    w.m0 = y * tile_m;
    w.m_lim = p.m;
    w.k_len = p.offsets[g + 1] - r0;
    w.r0 = r0;
  } else {
    // Row tile y of the concatenation of every group's row tiles.
    for (; cursor.group < p.groups; ++cursor.group) {
      const int g = cursor.group;
      const int64_t r0 = p.offsets[g], rows = p.offsets[g + 1] - r0;
      const int64_t tiles = (rows + tile_m - 1) / tile_m;
      if (y < cursor.first_tile + tiles) {
        w.valid = true;
        w.a = static_cast<const T*>(p.a) + r0 * p.lda;
        w.b = reinterpret_cast<const T*>(p.b_table[g]);
        w.c = static_cast<OutT*>(p.c) + r0 * p.ldc;
        w.m0 = (y - cursor.first_tile) * tile_m;
        w.m_lim = rows;
        w.k_len = p.k;
        w.r0 = r0;
        return w;
      }
      cursor.first_tile += tiles;
    }
  }
  return w;
}

// The work of this block (grid y: row tiles, z: groups).
template <typename T, typename OutT, bool kWeightGrad>
__device__ BlockWork<T, OutT> FindWork(const Problem& p, int tile_m) {
  GroupCursor from_the_first;
  return FindWorkAt<T, OutT, kWeightGrad>(p, tile_m, blockIdx.y, blockIdx.z, from_the_first);
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

}  // namespace scalemoe::cuda::grouped_gemm
