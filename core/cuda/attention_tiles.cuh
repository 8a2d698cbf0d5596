// The tile geometry both tensor-core attention paths share
// (causal_attention_tc.cu, WMMA; causal_attention_mma.cu, mma.sync): a
// block of 4 warps holds 64 rows (16 per warp), the other side streams in
// tiles of 64 rows through shared memory, rows padded.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda/cp_async.cuh"

namespace scalemoe::cuda {

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kAttnTile = 16 * kAttnWarps;  // rows per block = rows of a streamed tile (64)
constexpr int kAttnPad = 8;  // bf16 row padding: 16-byte rows, shared-memory banks spread

// The attention's shape: batch, sequence, query heads, kv heads.
struct AttnDims {
  int b, t, h, kv;
  __host__ __device__ int group() const { return h / kv; }
  __host__ __device__ int tiles() const { return (t + kAttnTile - 1) / kAttnTile; }
};

// kAttnTile rows of D bf16 in shared memory, rows padded.
template <int D>
struct AttnRows {
  static constexpr int kLd = D + kAttnPad;
  static constexpr int kElems = kAttnTile * kLd;
  static constexpr int kBytes = kElems * 2;  // a multiple of 32: fragments stay aligned
};

// Rows [first, first + kAttnTile) of one head into s (all kThreads threads
// of the block call it): `head` points at the head's element 0 of row 0,
// rows `stride` elements apart; rows at or past `limit` are zero-filled.
template <int D, int kThreads = kAttnThreads>
__device__ __forceinline__ void LoadAttnTile(__nv_bfloat16* s, const __nv_bfloat16* head,
                                             int64_t stride, int64_t first, int64_t limit) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < kAttnTile * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int64_t row = first + r;
    const bool valid = row < limit;
    CpAsync16(s + r * AttnRows<D>::kLd + col, valid ? head + row * stride + col : head, valid);
  }
}

}  // namespace scalemoe::cuda
