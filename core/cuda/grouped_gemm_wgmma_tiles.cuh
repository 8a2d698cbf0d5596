// What the grouped GEMMs' wgmma kernels share (sm_90a;
// core/cuda/grouped_gemm_wgmma.cu, one block a tile, and
// core/cuda/grouped_gemm_wgmma_ws.cu, persistent and warp-specialized): the
// tile shapes, the operand tiles' loads into the 128B-swizzled layouts of
// core/cuda/wgmma.cuh, one stage's MMAs and the epilogue straight from the
// accumulators, and the 16-byte runs of the epilogues staged through shared
// memory. Included by those two files only (anonymous namespace).
#pragma once

#include "core/cuda/cp_async.cuh"
#include "core/cuda/grouped_gemm_wgmma.cuh"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/mma_sync.cuh"
#include "core/cuda/wgmma.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

constexpr int kTileM = kWgmmaTileM, kTileK = 64;

// A kernel configuration: the output tile's width and the ring's stages,
// and the rows of a stage's A tile.
// Measured on the H200 and not kept (bench/RESULTS.md): 128 x 128 tiles with
// 3 stages and two blocks per SM, and persistent blocks whose every thread
// both loaded and multiplied, one ring across their tiles (slower on
// gpu_finegrained_64e's short reductions; the persistent kernel that was
// kept splits the two jobs between warpgroups, grouped_gemm_wgmma_ws.cu).
template <int kTileNArg, int kStagesArg, int kRowsArg = kTileM>
struct Shape {
  static constexpr int kTileN = kTileNArg, kStages = kStagesArg, kRows = kRowsArg;
  static constexpr int kABytes = kRows * kTileK * 2;
  static constexpr int kBBytes = kTileN * kTileK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + the 1024 alignment
  static_assert(kRows % 64 == 0 && kStageBytes % 1024 == 0, "1024-aligned swizzled tiles");
  static_assert(kStages >= 3, "a stage multiplied, one in flight, one loading");
  static_assert(kSmemBytes <= 227 * 1024, "one block's shared memory on sm_90");
  // The staged epilogue's f32 tile fits in the ring.
  static_assert(kRows * (kTileN + 8) * 4 <= kStages * kStageBytes, "the epilogue's stage");
};
using Wide = Shape<256, 4>;    // 128 x 256 tiles, 4 stages of 48 KB
using Narrow = Shape<128, 6>;  // 128 x 128, 6 stages of 32 KB

// Chunk c (16 bytes) of columns [mn0, mn0 + kMn) x k [k0, k0 + 64) of an
// operand into its swizzled tile (core/cuda/wgmma.cuh); chunks past a limit
// are zero-filled (both limits' contiguous dims are multiples of 8).
// kKMajor: the element (mn, k) at base[mn * ld + k], else base[k * ld + mn].
template <int kMn, bool kKMajor>
__device__ __forceinline__ void LoadChunk(unsigned char* tile, const bf16* base, int64_t ld,
                                          int64_t mn0, int64_t k0, int64_t mn_lim, int64_t k_lim,
                                          int c) {
  int64_t gmn, gk;
  int offset;
  if constexpr (kKMajor) {  // a smem row: one mn, 64 of k
    const int row = c / 8, chunk = c % 8;
    gmn = mn0 + row;
    gk = k0 + chunk * 8;
    offset = row * 128 + ((chunk ^ (row % 8)) * 16);
  } else {  // a smem row: one k, 64 of mn; kMn / 64 blocks of 64 rows
    constexpr int kChunksPerK = kMn / 8;
    const int row = c / kChunksPerK, col = c % kChunksPerK, chunk = col % 8;
    gmn = mn0 + col * 8;
    gk = k0 + row;
    offset = (col / 8) * 8192 + row * 128 + ((chunk ^ (row % 8)) * 16);
  }
  const bool valid = gmn < mn_lim && gk < k_lim;
  const bf16* src = !valid ? base : kKMajor ? base + gmn * ld + gk : base + gk * ld + gmn;
  CpAsync16(tile + offset, src, valid);
}

// The whole tile, by kLoaders threads (this one is `loader` of them).
template <int kMn, bool kKMajor, int kLoaders>
__device__ __forceinline__ void LoadTile(unsigned char* tile, const bf16* base, int64_t ld,
                                         int64_t mn0, int64_t k0, int64_t mn_lim, int64_t k_lim,
                                         int loader) {
  constexpr int kChunks = kMn * kTileK / 8;
  static_assert(kChunks % kLoaders == 0, "every loader copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kChunks / kLoaders; ++it) {
    LoadChunk<kMn, kKMajor>(tile, base, ld, mn0, k0, mn_lim, k_lim, loader + it * kLoaders);
  }
}

// The descriptor of k16 slice kk of an operand tile, from row (or column)
// `mn0` of the tile (a multiple of 64).
template <bool kKMajor>
__device__ __forceinline__ uint64_t SliceDescriptor(const unsigned char* tile, int mn0, int kk) {
  if constexpr (kKMajor) return WgmmaDescriptorKMajor(tile + mn0 * 128 + kk * 32);
  return WgmmaDescriptorMnMajor(tile + (mn0 / 64) * 8192 + kk * 2048);
}

template <int kTileN, bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void Mma(float (&acc)[kTileN / 2], uint64_t a, uint64_t b,
                                    int accumulate) {
  constexpr int kTransA = kAKMajor ? 0 : 1, kTransB = kBKMajor ? 0 : 1;
  if constexpr (kTileN == 256) {
    WgmmaM64N256K16<kTransA, kTransB>(acc, a, b, accumulate);
  } else {
    WgmmaM64N128K16<kTransA, kTransB>(acc, a, b, accumulate);
  }
}

// The accumulators of a 128 x kTileN tile into w.c's rows (beta as in p),
// straight from the registers: each warp store writes 8 rows' 16 bytes.
// warpgroup: which 64 rows of the tile this thread's warpgroup holds.
template <typename OutT, int kTileN>
__device__ __forceinline__ void StoreTileDirect(const Problem& p, const BlockWork<bf16, OutT>& w,
                                                int64_t n0, const float (&acc)[kTileN / 2],
                                                int warpgroup) {
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const bool pairs = p.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(w.c) % (2 * sizeof(OutT)) == 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t gm = w.m0 + warpgroup * 64 + warp * 16 + h * 8 + lane / 4;
    if (gm >= w.m_lim) continue;
    OutT* row = w.c + gm * p.ldc;
    const int64_t col0 = n0 + (lane % 4) * 2;
    // 64 columns at a time: few registers beyond the accumulators.
#pragma unroll
    for (int j0 = 0; j0 < kTileN / 8; j0 += 8) {
      float v[8][2];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[j][0] = acc[4 * (j0 + j) + 2 * h];
        v[j][1] = acc[4 * (j0 + j) + 2 * h + 1];
      }
      StoreRowPairs(row, col0 + j0 * 8, p.n, pairs, p.beta, v);
    }
  }
}

// 16 bytes of c's old values, for StoreVec16 (untouched when beta is 0).
template <typename OutT>
__device__ __forceinline__ uint4 LoadVec16(const OutT* src) {
  return *reinterpret_cast<const uint4*>(src);
}

// kVec outputs from f32 shared memory into c at dst (16 bytes): v + beta *
// old (dst's values before), rounded once, as the direct store does.
__device__ __forceinline__ void StoreVec16(float* dst, const float* v, float beta, uint4 old_raw) {
  float4 x = *reinterpret_cast<const float4*>(v);
  if (beta != 0.0f) {
    const float4 old = *reinterpret_cast<const float4*>(&old_raw);
    x.x += beta * old.x, x.y += beta * old.y, x.z += beta * old.z, x.w += beta * old.w;
  }
  *reinterpret_cast<float4*>(dst) = x;
}
__device__ __forceinline__ void StoreVec16(bf16* dst, const float* v, float beta, uint4 old_raw) {
  float x[8];
  *reinterpret_cast<float4*>(x) = *reinterpret_cast<const float4*>(v);
  *reinterpret_cast<float4*>(x + 4) = *reinterpret_cast<const float4*>(v + 4);
  if (beta != 0.0f) {
    const auto* o = reinterpret_cast<const __nv_bfloat162*>(&old_raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 b = __bfloat1622float2(o[i]);
      x[2 * i] += beta * b.x, x[2 * i + 1] += beta * b.y;
    }
  }
  uint4 out;
  auto* ov = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
  for (int i = 0; i < 4; ++i) ov[i] = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
  *reinterpret_cast<uint4*>(dst) = out;
}

// The k16 slices of one stage, multiplied into acc by this warpgroup (rows
// 64 * warpgroup of the tile); the first stage of a tile (first) overwrites
// acc.
template <typename S, bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void MmaStage(float (&acc)[S::kTileN / 2], const unsigned char* a,
                                         const unsigned char* b, bool first, int warpgroup) {
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kTileK / 16; ++kk) {
    Mma<S::kTileN, kAKMajor, kBKMajor>(acc, SliceDescriptor<kAKMajor>(a, warpgroup * 64, kk),
                                       SliceDescriptor<kBKMajor>(b, 0, kk),
                                       kk > 0 || !first ? 1 : 0);
  }
  WgmmaCommit();
}

template <typename S>
struct Ring {
  unsigned char* smem;
  __device__ unsigned char* a(int64_t i) const { return smem + (i % S::kStages) * S::kStageBytes; }
  __device__ unsigned char* b(int64_t i) const { return a(i) + S::kABytes; }
};

template <typename S>
__device__ __forceinline__ Ring<S> MakeRing() {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return Ring<S>{smem_raw + ((1024 - SmemAddress(smem_raw) % 1024) % 1024)};
}

}  // namespace
}  // namespace scalemoe::cuda::grouped_gemm
