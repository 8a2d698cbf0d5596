// Lane <-> element math of the mma.sync attention kernels
// (core/cuda/causal_attention_mma.cu): which rows and columns of an
// m16n8k16 fragment a lane holds, where a lane points ldmatrix, how a C
// fragment becomes the next mma's A fragment, the per-lane steps of the
// online softmax and the causal mask. Plain host + device functions so that
// tests/core/attention_mma_lane_test.cc can simulate a warp on the CPU
// (includable by g++ without nvcc).
//
// Fragment layouts (PTX ISA, "mma.m16n8k16", bf16), lane t, g = t / 4,
// q = t % 4; "half" h = 0 is a register's low 16 bits:
// - A (16 x 16, row): register r holds A[g + 8 (r % 2)][2q + 8 (r / 2) + h];
// - B (16 x 8, col): register r holds B[2q + 8r + h][g];
// - C (16 x 8, f32): element i is C[g + 8 (i / 2)][2q + i % 2].
// So the four lanes of a quad (same g) hold rows g and g + 8 between them:
// row reductions are lane-local, then xor 1 and xor 2 across the quad.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SM_LANE_FN __host__ __device__ __forceinline__
#define SM_LANE_UNROLL _Pragma("unroll")
#else
#define SM_LANE_FN inline
#define SM_LANE_UNROLL
#endif

namespace scalemoe::cuda::mma_lane {

// ---------------------------------------------------------------- fragments

SM_LANE_FN int CRow(int lane, int i) { return lane / 4 + 8 * (i / 2); }
SM_LANE_FN int CCol(int lane, int i) { return 2 * (lane % 4) + i % 2; }
SM_LANE_FN int ARow(int lane, int r) { return lane / 4 + 8 * (r % 2); }
SM_LANE_FN int ACol(int lane, int r, int h) { return 2 * (lane % 4) + 8 * (r / 2) + h; }
SM_LANE_FN int BRow(int lane, int r, int h) { return 2 * (lane % 4) + 8 * r + h; }
SM_LANE_FN int BCol(int lane) { return lane / 4; }

// C -> A (FlashAttention-2): the C fragments of n8 blocks 2kb and 2kb + 1
// (a 16 x 16 block of S, P or dS) are, lane by lane, the A fragment of that
// 16 x 16 block: A register r, half h is element CToAElem(r, h) of n8 block
// 2kb + CToABlock(r). No shuffles, only f32 pairs packed to bf16x2.
SM_LANE_FN int CToABlock(int r) { return r / 2; }
SM_LANE_FN int CToAElem(int r, int h) { return 2 * (r % 2) + h; }

// Row half of C element i: 0 for row g, 1 for row g + 8.
SM_LANE_FN int CHalf(int i) { return i / 2; }

// ---------------------------------------------------------------- ldmatrix
// ldmatrix.x4: lane t gives the address of row t % 8 of 8 x 8 matrix t / 8;
// register j of lane t receives matrix j's row t / 4, columns 2 (t % 4) + h
// (.trans: column t / 4, rows 2 (t % 4) + h). Element offsets below are in a
// tile of row stride ld (elements).

// A fragment of the 16 x 16 block at (m0, k0), A(m, k) at m * ld + k:
// matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15).
SM_LANE_FN int LdOffsetA(int lane, int ld, int m0, int k0) {
  const int mat = lane / 8, r = lane % 8;
  return (m0 + r + (mat % 2) * 8) * ld + k0 + (mat / 2) * 8;
}
// B fragments of n8 blocks n0 and n0 + 8 (registers 0-1 and 2-3) over
// k0..k0 + 15, B(k, n) at n * ld + k (rows of K for S = Q Kᵀ; no .trans).
SM_LANE_FN int LdOffsetBKMajor(int lane, int ld, int n0, int k0) {
  const int mat = lane / 8, r = lane % 8;
  return (n0 + r + (mat / 2) * 8) * ld + k0 + (mat % 2) * 8;
}
// The same with B(k, n) at k * ld + n (rows of V for P V; .trans).
SM_LANE_FN int LdOffsetBNMajor(int lane, int ld, int n0, int k0) {
  const int mat = lane / 8, r = lane % 8;
  return (k0 + r + (mat % 2) * 8) * ld + n0 + (mat / 2) * 8;
}

// ---------------------------------------------------------------- softmax
// Scores are kept in log2 units (s · scale · log2 e), so exp2 everywhere.
// A lane holds, per row half, 2 elements of each of kN8 n8 blocks.

// Quad all-reduce: steps xor 1, then xor 2 (QuadPartner(lane, 0..1)).
constexpr int kQuadSteps = 2;
SM_LANE_FN int QuadPartner(int lane, int step) { return lane ^ (1 << step); }

// This lane's max over its elements of row half `half`.
template <int kN8>
SM_LANE_FN float LaneRowMax(const float (&s)[kN8][4], int half) {
  float m = -INFINITY;
  SM_LANE_UNROLL
  for (int j = 0; j < kN8; ++j) m = fmaxf(m, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
  return m;
}

// 2^x. On the GPU the bare MUFU instruction (ex2.approx.ftz): exp2f adds
// three instructions a call to return results below 2^-126 as subnormals,
// and a probability that small adds nothing to a bf16 P or an f32 row sum
// (FlashAttention builds with fast math for the same instruction).
SM_LANE_FN float Exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

// s <- exp2(s · scale − m) on row half `half` (s raw Q Kᵀ, masked to −inf;
// scale and m in log2 units: one FFMA an element instead of a scaling pass
// and a subtraction); returns this lane's sum of them.
template <int kN8>
SM_LANE_FN float ExpRow(float (&s)[kN8][4], int half, float scale, float m) {
  float sum = 0.0f;
  SM_LANE_UNROLL
  for (int j = 0; j < kN8; ++j) {
    SM_LANE_UNROLL
    for (int e = 2 * half; e < 2 * half + 2; ++e) {
      s[j][e] = Exp2(std::fma(s[j][e], scale, -m));
      sum += s[j][e];
    }
  }
  return sum;
}

// One online-softmax step of a row: the running max m and lane-partial sum
// l take a tile whose (quad-reduced) max is tile_max (log2 units, the raw
// max times the scale: the scale is positive); returns the factor the
// row's earlier sum and output are scaled by. Every row sees key 0 in its
// first tile, so m is finite after it and exp2(−inf − m) = 0 the first time.
SM_LANE_FN float OnlineStep(float& m, float& l, float tile_max) {
  const float m_new = fmaxf(m, tile_max);
  const float factor = Exp2(m - m_new);
  m = m_new;
  l *= factor;
  return factor;
}

// The backward's element-wise step on S (raw Q Kᵀ, masked to −inf) and dP:
// s <- P = exp2(s · scale − lse·log2 e), dp <- dS = P ⊙ (dP − D), scale in
// log2 units. Rows past T carry lse = +inf, so their P is 0 without a mask.
// Statistics per row (S = Q Kᵀ, the d_q pass): lse2[CHalf(i)], di[CHalf(i)].
template <int kN8>
SM_LANE_FN void GradRows(float (&s)[kN8][4], float (&dp)[kN8][4], float scale,
                         const float (&lse2)[2], const float (&di)[2]) {
  SM_LANE_UNROLL
  for (int j = 0; j < kN8; ++j) {
    SM_LANE_UNROLL
    for (int i = 0; i < 4; ++i) {
      s[j][i] = Exp2(std::fma(s[j][i], scale, -lse2[CHalf(i)]));
      dp[j][i] = s[j][i] * (dp[j][i] - di[CHalf(i)]);
    }
  }
}
// Statistics per column (Sᵀ = K Qᵀ, the d_k/d_v pass): columns col0 + ...
// of a tile's lse2[] and di[].
template <int kN8>
SM_LANE_FN void GradColumns(float (&s)[kN8][4], float (&dp)[kN8][4], float scale, int lane,
                            int col0, const float* lse2, const float* di) {
  SM_LANE_UNROLL
  for (int j = 0; j < kN8; ++j) {
    SM_LANE_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int col = col0 + 8 * j + CCol(lane, i);
      s[j][i] = Exp2(std::fma(s[j][i], scale, -lse2[col]));
      dp[j][i] = s[j][i] * (dp[j][i] - di[col]);
    }
  }
}

// ---------------------------------------------------------------- mask

// Key `key` counts for query `query` of a sequence of t: causal, and keys
// past T (zero rows of the tile) never count. Rows past T are not written.
SM_LANE_FN bool Visible(int64_t key, int64_t query, int64_t t) { return key <= query && key < t; }

// With query and key tiles of one size, only the diagonal tile needs the
// mask: earlier key tiles lie wholly below every query of the tile, and
// keys past T exist only in the last tile, which is the last query tile's
// diagonal.
SM_LANE_FN bool TileNeedsMask(int query_tile, int key_tile) { return query_tile == key_tile; }

// Masked scores of a C tile to −inf. Rows are queries from row0, columns
// keys from col0 (kTransposed: rows are keys, columns queries: Sᵀ).
template <bool kTransposed, int kN8>
SM_LANE_FN void MaskTile(float (&s)[kN8][4], int lane, int64_t row0, int64_t col0, int64_t t) {
  SM_LANE_UNROLL
  for (int j = 0; j < kN8; ++j) {
    SM_LANE_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row0 + CRow(lane, i), col = col0 + 8 * j + CCol(lane, i);
      const bool keep = kTransposed ? Visible(row, col, t) : Visible(col, row, t);
      if (!keep) s[j][i] = -INFINITY;
    }
  }
}

}  // namespace scalemoe::cuda::mma_lane
