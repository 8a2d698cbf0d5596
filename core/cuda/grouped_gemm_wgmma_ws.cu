// The grouped GEMMs on wgmma, persistent and warp-specialized (sm_90a): the
// same three products and tiles as core/cuda/grouped_gemm_wgmma.cu, with
// the fixed cost of each tile hidden.
//
// One block per SM walks a fixed sequence of 128 x N output tiles (tile i,
// i + gridDim.x, ...). Its first warpgroup only loads: cp.async into the
// ring of stages, each stage's "full" mbarrier completing when its copies
// have landed. The two others only multiply (64 rows each, as before) and
// store, and give a stage back through its "empty" mbarrier once their MMAs
// have read it. No block-wide barrier: the loader runs ahead into the next
// tile while the multipliers store the last one, so a tile's first loads
// no longer wait behind its stores (the block-per-tile kernel spent about 5
// of its 12 k steps' time per tile on those, bench/RESULTS.md).
//
// The loaders hand registers to the multipliers (setmaxnreg): of the 384
// threads' 168 each at launch, the loaders keep 48 and the multipliers take
// 224, enough for the 128 x 256 tile's 128 accumulators without spills
// (core_wgmma_pipeline_test checks).
// Same k order and the same MMAs per tile as the block-per-tile kernel, so
// the same bits.
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

// The epilogue staged through shared memory (the default;
// SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct stores from the registers): each
// multiplying warpgroup has a buffer of its own beside the ring, which the
// loaders keep filling meanwhile, of 64 rows by 128 columns (a 128 x 256
// tile's in two passes). The f32 fragments go there, then each thread
// stores 16-byte runs of a row, as the block-per-tile kernel's staged
// epilogue does (the weight gradients' beta = 1 loads then batch as runs
// too). The ring gives up a stage for it: 3 of 48 KB (128 x 256) or 4 of
// 32 KB (128 x 128).
constexpr int kPassCols = 128, kPassPitch = kPassCols + 8;  // + 8: no bank conflicts
constexpr int kEpilogueBytes = kMultipliers / 128 * 64 * kPassPitch * 4;
using WideStaged = Shape<256, 3>;
using NarrowStaged = Shape<128, 4>;
static_assert(WideStaged::kSmemBytes + kEpilogueBytes <= 227 * 1024 - 64 &&
                  NarrowStaged::kSmemBytes + kEpilogueBytes <= 227 * 1024 - 64,
              "the ring, the buffers and the barriers in one block's shared memory");

// Syncs the 128 threads of one multiplying warpgroup (named barriers 1, 2).
__device__ __forceinline__ void WarpgroupSync(int warpgroup) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + warpgroup) : "memory");
}

// This warpgroup's 64 rows of the tile into c through `buf` (its own).
template <typename OutT, int kTileN>
__device__ __forceinline__ void StoreTileStaged(const Problem& p, const BlockWork<bf16, OutT>& w,
                                                int64_t n0, const float (&acc)[kTileN / 2],
                                                int warpgroup, float* buf) {
  constexpr int kVec = 16 / sizeof(OutT);
  const bool vec = p.ldc % kVec == 0 && reinterpret_cast<uintptr_t>(w.c) % 16 == 0;
  if (!vec) return StoreTileDirect<OutT, kTileN>(p, w, n0, acc, warpgroup);
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
        *reinterpret_cast<float2*>(buf + row * kPassPitch + 8 * j + (lane % 4) * 2) =
            make_float2(acc[4 * jj + 2 * h], acc[4 * jj + 2 * h + 1]);
      }
    }
    WarpgroupSync(warpgroup);
    for (int b0 = 0; b0 < kPerThread; b0 += kBatch) {
      uint4 old[kBatch];
      OutT* dst[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        const int64_t gm = w.m0 + warpgroup * 64 + row, gn = n0 + pass * kPassCols + col;
        // n is a multiple of 8: a run is all in or all out.
        dst[i] = gm < w.m_lim && gn < p.n ? w.c + gm * p.ldc + gn : nullptr;
        old[i] = dst[i] && p.beta != 0.0f ? LoadVec16(dst[i]) : uint4{};
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int c = t + (b0 + i) * 128, row = c / kRuns, col = (c % kRuns) * kVec;
        if (dst[i]) StoreVec16(dst[i], buf + row * kPassPitch + col, p.beta, old[i]);
      }
    }
  }
}

// The tiles one launch covers and where tile i's work is.
struct TileSpace {
  int64_t col_tiles = 0;  // across n
  int64_t row_tiles = 0;  // forward: every group's (an upper bound); weight grad: per group
  int64_t groups = 1;     // weight grad only
  __host__ __device__ int64_t size() const { return col_tiles * row_tiles * groups; }
};

// Tile `tile`'s rows and reduction, and its column tile in `col`. Column
// tiles vary fastest: neighbouring blocks share a's row tile. A block's
// tiles come in increasing order: `cursor` carries its walk over the groups.
template <typename OutT, bool kWeightGrad>
__device__ __forceinline__ BlockWork<bf16, OutT> TileWork(const Problem& p, const TileSpace& s,
                                                          int64_t tile, int64_t& col,
                                                          GroupCursor& cursor) {
  col = tile % s.col_tiles;
  const int64_t rest = tile / s.col_tiles;
  if constexpr (kWeightGrad) {
    return FindWorkAt<bf16, OutT, true>(p, kTileM, rest % s.row_tiles,
                                        static_cast<int>(rest / s.row_tiles), cursor);
  } else {
    return FindWorkAt<bf16, OutT, false>(p, kTileM, rest, 0, cursor);
  }
}

// kStaged: the epilogue through shared memory (above), else straight from
// the registers.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged>
__global__ void __launch_bounds__(kWsThreads, 1)
    GroupedGemmWgmmaWsKernel(Problem p, TileSpace space) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kTileN = S::kTileN;
  __shared__ uint64_t full[S::kStages], empty[S::kStages];
  const Ring<S> ring = MakeRing<S>();
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      MbarrierInit(&full[s], kLoaders);            // each loader's copies of the stage
      MbarrierInit(&empty[s], kMultipliers / 32);  // each multiplying warp
    }
  }
  __syncthreads();
  RingPosition<S::kStages> pos;
  GroupCursor cursor;
  // The forward's valid row tiles are a prefix of its upper bound: once a
  // tile has no rows, neither has any later one of this block.
  if (threadIdx.x < kLoaders) {
    ReleaseRegisters<kLoaderRegisters>();
    const int loader = threadIdx.x;
    for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x) {
      int64_t col;
      const BlockWork<bf16, OutT> w = TileWork<OutT, kWeightGrad>(p, space, tile, col, cursor);
      if (!w.valid) break;
      const int64_t n0 = col * kTileN, k_tiles = (w.k_len + kTileK - 1) / kTileK;
      const OperandStream<kTileM, kAKMajor> a(w.a, p.lda, w.m0, w.m_lim, w.k_len, loader);
      const OperandStream<kTileN, kBKMajor> b(w.b, p.ldb, n0, p.n, w.k_len, loader);
      for (int64_t t = 0; t < k_tiles; ++t) {
        MbarrierWait(&empty[pos.stage], pos.parity ^ 1);
        a.Load(ring.a(pos.stage), t);
        b.Load(ring.b(pos.stage), t);
        CpAsyncMbarrierArrive(&full[pos.stage]);
        pos.Advance();
      }
    }
    CpAsyncWait<0>();  // nothing lands after its thread has exited
    return;
  }
  ClaimRegisters<kMultiplierRegisters>();
  const int warpgroup = (threadIdx.x - kLoaders) / 128, lane = threadIdx.x % 32;
  float acc[kTileN / 2];  // the first MMA of a tile overwrites it (MmaStage)
  for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x) {
    int64_t col;
    const BlockWork<bf16, OutT> w = TileWork<OutT, kWeightGrad>(p, space, tile, col, cursor);
    if (!w.valid) break;
    const int64_t n0 = col * kTileN, k_tiles = (w.k_len + kTileK - 1) / kTileK;
    if (k_tiles <= 0) {  // a weight gradient's empty group: c = 0 + beta c
      const float zeros[kTileN / 2] = {};
      StoreTileDirect<OutT, kTileN>(p, w, n0, zeros, warpgroup);
      continue;
    }
    int held = -1;  // the stage whose MMAs may still run
    for (int64_t t = 0; t < k_tiles; ++t) {
      MbarrierWait(&full[pos.stage], pos.parity);
      FenceProxyAsyncShared();  // the copies, seen through the barrier, visible to wgmma
      MmaStage<S, kAKMajor, kBKMajor>(acc, ring.a(pos.stage), ring.b(pos.stage), t == 0, warpgroup);
      WgmmaWait<1>();  // the MMAs of the stage before are done
      if (held >= 0 && lane == 0) MbarrierArrive(&empty[held]);
      held = pos.stage;
      pos.Advance();
    }
    WgmmaWait<0>();
    if (lane == 0) MbarrierArrive(&empty[held]);
    if constexpr (kStaged) {
      float* buf = reinterpret_cast<float*>(ring.a(0) + S::kStages * S::kStageBytes) +
                   warpgroup * 64 * kPassPitch;
      StoreTileStaged<OutT, kTileN>(p, w, n0, acc, warpgroup, buf);
    } else {
      StoreTileDirect<OutT, kTileN>(p, w, n0, acc, warpgroup);
    }
  }
#else
  __trap();  // launched only on sm_90 devices, from a build for sm_90a
#endif
}

// Whether ptxas gave the kernel the registers its hand-over counts on (a
// different compiler might give fewer: the claim would then wait forever).
template <typename Kernel>
bool HasLaunchRegisters(Kernel kernel) {
  cudaFuncAttributes attributes{};
  return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess &&
         attributes.numRegs >= kLaunchRegisters;
}

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged>
bool LaunchWs(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
              const char* op) {
  auto kernel = GroupedGemmWgmmaWsKernel<OutT, kAKMajor, kBKMajor, kWeightGrad, S, kStaged>;
  constexpr int kBytes = S::kSmemBytes + (kStaged ? kEpilogueBytes : 0);
  static const bool fits = HasLaunchRegisters(kernel);
  if (!fits) return false;
  static const cudaError_t attr = AllowDynamicSmem(kernel, kBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  TileSpace space;
  space.col_tiles = (p.n + S::kTileN - 1) / S::kTileN;
  space.row_tiles = row_tiles;
  space.groups = kWeightGrad ? groups : 1;
  const int64_t blocks = std::min<int64_t>(space.size(), std::max(MultiprocessorCount(ctx, op), 1));
  if (blocks <= 0) return true;
  kernel<<<static_cast<unsigned>(blocks), kWsThreads, kBytes, Stream(ctx)>>>(p, space);
  SM_CHECK_LAUNCH(ctx, op, "GroupedGemmWgmmaWsKernel");
  return true;
}

}  // namespace

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaWs(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
                const char* op) {
  // The epilogue through shared memory, unless
  // SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct stores from the registers (A/B
  // timings; bench/grouped_gemm_check.sh): staged was 1.05-1.44x faster on
  // every expert shape on the H200 (bench/RESULTS.md).
  static const bool staged = !EnvEquals("SCALEMOE_GROUPED_GEMM_WS_EPILOGUE", "direct");
  if (staged) {
    if (p.n > 128) {
      return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, WideStaged, true>(ctx, p, row_tiles,
                                                                               groups, op);
    }
    return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, NarrowStaged, true>(ctx, p, row_tiles,
                                                                               groups, op);
  }
  if (p.n > 128) {
    return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, Wide, false>(ctx, p, row_tiles, groups,
                                                                        op);
  }
  return LaunchWs<OutT, kAKMajor, kBKMajor, kWeightGrad, Narrow, false>(ctx, p, row_tiles, groups,
                                                                        op);
}

// The three products (forward, data gradient, weight gradient) into bf16 or f32.
#define SM_INSTANTIATE(OutT)                                                                       \
  template bool RunWgmmaWs<OutT, true, true, false>(const ExecContext&, const Problem&, unsigned,  \
                                                    unsigned, const char*);                        \
  template bool RunWgmmaWs<OutT, true, false, false>(const ExecContext&, const Problem&, unsigned, \
                                                     unsigned, const char*);                       \
  template bool RunWgmmaWs<OutT, false, false, true>(const ExecContext&, const Problem&, unsigned, \
                                                     unsigned, const char*);
SM_INSTANTIATE(bf16)
SM_INSTANTIATE(float)
#undef SM_INSTANTIATE

}  // namespace scalemoe::cuda::grouped_gemm
