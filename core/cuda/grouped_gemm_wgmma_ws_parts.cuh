// The parts of the grouped GEMMs' persistent warp-specialized wgmma kernel
// (sm_90a; core/cuda/grouped_gemm_wgmma_ws.cu, whose two multiplying
// warpgroups share each tile): the block's warpgroups and their register
// hand-over, the loaders' operand streams, the epilogue staged through
// shared memory and the walk over the launch's tiles. Included by that
// file only (anonymous namespace).
#pragma once

#include "core/cuda/grouped_gemm_wgmma_tiles.cuh"
#include "core/cuda/mbarrier.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

// A block: a warpgroup of loaders, then two of multipliers.
constexpr int kLoaders = 128, kMultipliers = 256, kWsThreads = kLoaders + kMultipliers;
// The registers a thread keeps after the hand-over. Their sum cannot
// exceed what the block was launched with (ptxas gives each of the 384
// threads 168), or the multipliers' claim waits forever.
constexpr int kLaunchRegisters = 168, kLoaderRegisters = 48, kMultiplierRegisters = 224;
static_assert(kLoaders * kLoaderRegisters + kMultipliers * kMultiplierRegisters <=
                  kWsThreads * kLaunchRegisters,
              "the block's registers");

// One loader's share of an operand's tile (LoadChunk's chunks and layout),
// its addresses worked out once per output tile: its chunks are kIters
// copies kRowStep smem rows apart, and a k step costs a pointer bump.
template <int kMn, bool kKMajor>
struct OperandStream {
  static constexpr int kChunks = kMn * kTileK / 8, kChunksPerRow = kKMajor ? 8 : kMn / 8;
  static_assert(kChunks % kLoaders == 0 && kLoaders % kChunksPerRow == 0, "whole rows a pass");
  static constexpr int kIters = kChunks / kLoaders, kRowStep = kLoaders / kChunksPerRow;
  const bf16* base;  // the operand (an address for the zero-fills)
  const bf16* src;   // this loader's first chunk at k step 0
  int64_t it_step;   // elements from one of its chunks to the next
  int64_t k_step;    // ... from one k step to the next
  int64_t mn_room;   // K-major: rows left below mn_lim at its first chunk; else > 0 if in
  int64_t k_room;    // K-major: > 0 if its k column is in at k step 0; else rows left
  int row0, col;     // its first chunk's smem row and 16-byte column

  __device__ __forceinline__ OperandStream(const bf16* b, int64_t ld, int64_t mn0, int64_t mn_lim,
                                           int64_t k_lim, int loader)
      : base(b), it_step(kRowStep * ld) {
    row0 = loader / kChunksPerRow;
    col = loader % kChunksPerRow;
    if constexpr (kKMajor) {  // a row: one mn, 64 of k
      src = b + (mn0 + row0) * ld + col * 8;
      k_step = kTileK;
      mn_room = mn_lim - (mn0 + row0);
      k_room = k_lim - col * 8;
    } else {  // a row: one k, kMn of mn
      src = b + row0 * ld + mn0 + col * 8;
      k_step = kTileK * ld;
      mn_room = mn_lim - (mn0 + col * 8);
      k_room = k_lim - row0;
    }
  }

  // k step t into `tile`.
  __device__ __forceinline__ void Load(unsigned char* tile, int64_t t) const {
    const bf16* q = src + t * k_step;
    const int64_t k_left = k_room - t * kTileK;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int row = row0 + it * kRowStep;
      int offset;
      bool valid;
      if constexpr (kKMajor) {
        offset = row * 128 + ((col ^ (row % 8)) * 16);
        valid = it * kRowStep < mn_room && k_left > 0;
      } else {
        offset = (col / 8) * 8192 + row * 128 + (((col % 8) ^ (row % 8)) * 16);
        valid = mn_room > 0 && it * kRowStep < k_left;
      }
      CpAsync16(tile + offset, valid ? q : base, valid);
      q += it_step;
    }
  }
};

// Syncs the 128 threads of one multiplying warpgroup (named barriers 1, 2).
__device__ __forceinline__ void WarpgroupSync(int warpgroup) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + warpgroup) : "memory");
}

// The f32 rows of one pass of the staged epilogue: + 8 floats keeps the
// fragments' float2 writes free of bank conflicts (rows 8 words apart).
template <int kPassCols>
constexpr int kPassPitch = kPassCols + 8;

// The epilogue staged through shared memory: the 64 rows of a tile that
// this thread's warpgroup holds (rows 64 * row_block of the tile at w.m0)
// into c through `buf`, the warpgroup's own buffer of 64 rows by kPassCols
// columns (kTileN / kPassCols passes). The f32 fragments go there, then
// each thread stores 16-byte runs of a row, as the block-per-tile kernel's
// staged epilogue does (the weight gradients' beta = 1 loads then batch as
// runs too). Where c's rows are not 16-byte aligned, the direct store.
template <typename OutT, int kTileN, int kPassCols>
__device__ __forceinline__ void StoreTileStaged(const Problem& p, const BlockWork<bf16, OutT>& w,
                                                int64_t n0, const float (&acc)[kTileN / 2],
                                                int row_block, int warpgroup, float* buf) {
  constexpr int kVec = 16 / sizeof(OutT), kPitch = kPassPitch<kPassCols>;
  const bool vec = p.ldc % kVec == 0 && reinterpret_cast<uintptr_t>(w.c) % 16 == 0;
  if (!vec) return StoreTileDirect<OutT, kTileN>(p, w, n0, acc, row_block);
  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  // Runs in batches whose old values are loaded before any is stored; 4 a
  // batch (8 spilled at the multipliers' 224 registers).
  constexpr int kRuns = kPassCols / kVec, kPerThread = 64 * kRuns / 128, kBatch = 4;
  static_assert(kTileN % kPassCols == 0 && kPerThread % kBatch == 0, "whole passes and batches");
#pragma unroll
  for (int pass = 0; pass < kTileN / kPassCols; ++pass) {
    WarpgroupSync(warpgroup);  // the last pass's (or tile's) reads of buf are done
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = warp * 16 + h * 8 + lane / 4;
#pragma unroll
      for (int j = 0; j < kPassCols / 8; ++j) {
        const int jj = pass * (kPassCols / 8) + j;
        *reinterpret_cast<float2*>(buf + row * kPitch + 8 * j + (lane % 4) * 2) =
            make_float2(acc[4 * jj + 2 * h], acc[4 * jj + 2 * h + 1]);
      }
    }
    WarpgroupSync(warpgroup);
    auto batch = [&](int b0) {  // runs b0 .. b0 + kBatch of the pass
      uint4 old[kBatch];
      OutT* dst[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        const int64_t gm = w.m0 + row_block * 64 + row, gn = n0 + pass * kPassCols + col;
        // n is a multiple of 8: a run is all in or all out.
        dst[i] = gm < w.m_lim && gn < p.n ? w.c + gm * p.ldc + gn : nullptr;
        old[i] = dst[i] && p.beta != 0.0f ? LoadVec16(dst[i]) : uint4{};
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        if (dst[i]) StoreVec16(dst[i], buf + row * kPitch + col, p.beta, old[i]);
      }
    };
    for (int b0 = 0; b0 < kPerThread; b0 += kBatch) batch(b0);
  }
}

// The tiles one launch covers and where tile i's work is.
struct TileSpace {
  int64_t col_tiles = 0;  // across n
  int64_t row_tiles = 0;  // forward: every group's (an upper bound); weight grad: per group
  int64_t groups = 1;     // weight grad only
  __host__ __device__ int64_t size() const { return col_tiles * row_tiles * groups; }
};

// Tile `tile`'s rows (kRows of them) and reduction, and its column tile in
// `col`. Column tiles vary fastest: neighbouring blocks share a's row tile.
// A block's tiles come in increasing order: `cursor` carries its walk over
// the groups.
template <typename OutT, bool kWeightGrad, int kRows>
__device__ __forceinline__ BlockWork<bf16, OutT> TileWork(const Problem& p, const TileSpace& s,
                                                          int64_t tile, int64_t& col,
                                                          GroupCursor& cursor) {
  col = tile % s.col_tiles;
  const int64_t rest = tile / s.col_tiles;
  if constexpr (kWeightGrad) {
    return FindWorkAt<bf16, OutT, true>(p, kRows, rest % s.row_tiles,
                                        static_cast<int>(rest / s.row_tiles), cursor);
  } else {
    return FindWorkAt<bf16, OutT, false>(p, kRows, rest, 0, cursor);
  }
}

// The loaders' part of a block (its first warpgroup, this thread loader
// `threadIdx.x` of them): the k steps of every tile of the block's walk (A
// tiles of kRows rows), in order, into the ring, a stage once its "empty"
// barrier says its last reader is done, completing its "full" barrier when
// the copies land. The walk stops where TileWork finds no work, as the
// multipliers' does.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, int kRows>
__device__ __forceinline__ void LoadWalk(const Problem& p, const TileSpace& space,
                                         const Ring<S>& ring, uint64_t (&full)[S::kStages],
                                         uint64_t (&empty)[S::kStages]) {
  ReleaseRegisters<kLoaderRegisters>();
  RingPosition<S::kStages> pos;
  GroupCursor cursor;
  const int loader = threadIdx.x;
  for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x) {
    int64_t col;
    const BlockWork<bf16, OutT> w = TileWork<OutT, kWeightGrad, kRows>(p, space, tile, col, cursor);
    if (!w.valid) break;
    const int64_t n0 = col * S::kTileN, k_tiles = (w.k_len + kTileK - 1) / kTileK;
    const OperandStream<kRows, kAKMajor> a(w.a, p.lda, w.m0, w.m_lim, w.k_len, loader);
    const OperandStream<S::kTileN, kBKMajor> b(w.b, p.ldb, n0, p.n, w.k_len, loader);
    for (int64_t t = 0; t < k_tiles; ++t) {
      MbarrierWait(&empty[pos.stage], pos.parity ^ 1);
      a.Load(ring.a(pos.stage), t);
      b.Load(ring.b(pos.stage), t);
      CpAsyncMbarrierArrive(&full[pos.stage]);
      pos.Advance();
    }
  }
  CpAsyncWait<0>();  // nothing lands after its thread has exited
}

// A persistent kernel of `bytes` of dynamic shared memory over `space`: one
// block an SM, none beyond the tiles.
template <typename Kernel>
void LaunchOnSms(const ExecContext& ctx, Kernel kernel, int bytes, const Problem& p,
                 const TileSpace& space, const char* op, const char* name) {
  const int64_t blocks = std::min<int64_t>(space.size(), std::max(MultiprocessorCount(ctx, op), 1));
  if (blocks <= 0) return;
  kernel<<<static_cast<unsigned>(blocks), kWsThreads, bytes, Stream(ctx)>>>(p, space);
  SM_CHECK_LAUNCH(ctx, op, name);
}

// Whether ptxas gave the kernel the registers its hand-over counts on (a
// different compiler might give fewer: the claim would then wait forever).
template <typename Kernel>
bool HasLaunchRegisters(Kernel kernel) {
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
         attributes.numRegs >= kLaunchRegisters;
}

}  // namespace
}  // namespace scalemoe::cuda::grouped_gemm
