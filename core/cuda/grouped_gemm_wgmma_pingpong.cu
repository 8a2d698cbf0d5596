// The grouped GEMMs on wgmma, persistent and warp-specialized with a
// ping-pong schedule (sm_90a): SCALEMOE_GROUPED_GEMM_WS_SCHEDULE=pingpong
// runs the weight gradients here, =pingpong_all every product; otherwise
// the cooperative kernel of core/cuda/grouped_gemm_wgmma_ws.cu runs them.
//
// There the two multiplying warpgroups share each 128 x N tile and store
// it together while the tensor cores idle: the weight gradients' epilogue
// (read, add and write a 128 x 256 f32 tile) held them at ~320 TFLOP/s
// against ~500 for the other products. Here each multiplying warpgroup
// owns whole tiles of 64 x N (the same m64nNk16 MMAs and accumulators):
// the block walks tiles b, b + gridDim.x, ..., the j-th of them warpgroup
// j % 2's, so that one warpgroup stores while the other multiplies.
//
// The loader warpgroup loads the walk's tiles' k steps, in order, into one
// ring of stages (A 64 x 64 and B N x 64 each). A multiplier waits for and
// gives back only the stages of its own tiles, and moves its ring position
// past the other's (both work out every tile's k steps: the same walk with
// the same TileWork calls, so their group cursors agree). A stage's "empty"
// barrier thus counts the 4 warps of the warpgroup that owns it.
//
// A parity wait cannot tell a barrier's phase k from k - 2: a multiplier
// that skipped S or more stages ahead of the loader (S: the ring's) would
// take a stage that still holds an older tile's copies for its own. So the
// multipliers hand the walk over (CUTLASS's ping-pong orders its math
// warpgroups the same way): a warpgroup starts tile j only once the other
// has passed its wait for the last stage of tile j - 1 (at once if that
// tile has none). Then every stage before tile j's first has had its
// copies seen by its owner, and each barrier a multiplier waits for has
// completed the phase before the one it waits for; none can be a phase
// further on either, since a stage is loaded again only once its owner has
// given it back. This orders the multiplications only: a warpgroup's
// epilogue still overlaps the other's tile.
//
// No deadlock: the first stage in the ring's order that is not given back
// yet is of a tile whose owner has been handed the walk (every stage of
// the tiles before is given back: the hand-over came after their waits) and
// has given back all its earlier stages, so it waits for nothing but this
// stage's copies, or, holding it (its MMAs in flight), for those of the
// next stage in the order (the same tile's). Every stage before those two
// is free and the ring has more than two: the loader fills both, the
// warpgroup gives the first back, and so on.
//
// Registers as in the cooperative kernel (48 for the loaders, 224 for the
// multipliers). The staged epilogue (StoreTileStaged) goes through buffers
// of 64 x 64 f32 (18 KB a warpgroup), which leave room for 4 stages of
// 40 KB (64 x 256 tiles) or 7 of 24 KB (64 x 128); straight from the
// registers (SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct) 5 or 9.
// The same k order and MMAs per output element as the cooperative kernel:
// the same bits.
#include "core/cuda/grouped_gemm_wgmma_ws_parts.cuh"
#include "core/cuda/mbarrier.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

// A multiplier's tile: 64 rows, one warpgroup's MMAs.
constexpr int kPingpongRows = 64;
constexpr int kPassCols = 64;
constexpr int kEpilogueBytes = kMultipliers / 128 * kPingpongRows * kPassPitch<kPassCols> * 4;
using PingpongWide = Shape<256, 5, kPingpongRows>;
using PingpongNarrow = Shape<128, 9, kPingpongRows>;
using PingpongWideStaged = Shape<256, 4, kPingpongRows>;
using PingpongNarrowStaged = Shape<128, 7, kPingpongRows>;

// The dynamic shared memory, beside the barriers (two of 8 bytes a stage,
// and two more).
template <typename S, bool kStaged>
constexpr int kBlockSmemBytes = S::kSmemBytes + (kStaged ? kEpilogueBytes : 0);
template <typename S, bool kStaged>
constexpr bool kFits = kBlockSmemBytes<S, kStaged> + 16 * S::kStages + 16 <= 227 * 1024;
static_assert(kFits<PingpongWide, false> && kFits<PingpongNarrow, false> &&
                  kFits<PingpongWideStaged, true> && kFits<PingpongNarrowStaged, true>,
              "the ring, the buffers and the barriers in one block's shared memory");

// c = 0 + beta c on a tile's rows (an empty group's weight gradient): the
// bits of StoreTileDirect's store of zeros (the cooperative kernel's), one
// element a thread at a time, since those 64 or 128 zeros in registers made
// ptxas spill in two of the multipliers' main loops (a rare path).
template <typename OutT, int kTileN>
__device__ __forceinline__ void ScaleTile(const Problem& p, const BlockWork<bf16, OutT>& w,
                                          int64_t n0) {
  for (int i = threadIdx.x % 128; i < kPingpongRows * kTileN; i += 128) {
    const int64_t gm = w.m0 + i / kTileN, gn = n0 + i % kTileN;
    if (gm < w.m_lim && gn < p.n) StoreOut(w.c + gm * p.ldc + gn, 0.0f, p.beta);
  }
}

// kStaged: the epilogue through shared memory, else straight from the
// registers.
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged>
__global__ void __launch_bounds__(kWsThreads, 1)
    GroupedGemmWgmmaPingpongKernel(Problem p, TileSpace space) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kTileN = S::kTileN, kRows = S::kRows;
  static_assert(kRows == 64, "a tile is one warpgroup's m64 MMAs");
  __shared__ uint64_t full[S::kStages], empty[S::kStages], handed[2];
  const Ring<S> ring = MakeRing<S>();
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kStages; ++s) {
      MbarrierInit(&full[s], kLoaders);                // each loader's copies of the stage
      MbarrierInit(&empty[s], kMultipliers / 2 / 32);  // each warp of its tile's warpgroup
    }
    for (int g = 0; g < 2; ++g) MbarrierInit(&handed[g], 1);  // the walk, to warpgroup g
  }
  __syncthreads();
  RingPosition<S::kStages> pos;
  GroupCursor cursor;
  // The forward's valid row tiles are a prefix of its upper bound: once a
  // tile has no rows, neither has any later one of this block. Every party
  // stops at the same tile.
  if (threadIdx.x < kLoaders) {
    LoadWalk<OutT, kAKMajor, kBKMajor, kWeightGrad, S, kRows>(p, space, ring, full, empty);
    return;
  }
  ClaimRegisters<kMultiplierRegisters>();
  const int warpgroup = (threadIdx.x - kLoaders) / 128, lane = threadIdx.x % 32;
  float acc[kTileN / 2];  // the first MMA of a tile overwrites it (MmaStage)
  uint32_t handed_parity = 0;
  // Hands the walk to the other warpgroup (one thread: its waits so far
  // have seen the copies of every stage it has taken).
  auto hand_over = [&] {
    if (threadIdx.x % 128 == 0) MbarrierArrive(&handed[warpgroup ^ 1]);
  };
  // Tile j of the walk is warpgroup j % 2's.
  int64_t j = 0;
  for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x, ++j) {
    int64_t col;
    const BlockWork<bf16, OutT> w = TileWork<OutT, kWeightGrad, kRows>(p, space, tile, col, cursor);
    if (!w.valid) break;
    const int64_t n0 = col * kTileN, k_tiles = (w.k_len + kTileK - 1) / kTileK;
    if (j % 2 != warpgroup) {  // the other's tile: past the stages the loader fills for it
      pos.Skip(k_tiles > 0 ? k_tiles : 0);
      continue;
    }
    if (j > 0) {  // the other has seen the copies of its tile j - 1
      MbarrierWait(&handed[warpgroup], handed_parity);
      handed_parity ^= 1;
    }
    if (k_tiles <= 0) {  // a weight gradient's empty group: c = 0 + beta c, no stages
      hand_over();
      ScaleTile<OutT, kTileN>(p, w, n0);
      continue;
    }
    int held = -1;  // the stage whose MMAs may still run
    for (int64_t t = 0; t < k_tiles; ++t) {
      MbarrierWait(&full[pos.stage], pos.parity);
      if (t == k_tiles - 1) hand_over();
      FenceProxyAsyncShared();  // the copies, seen through the barrier, visible to wgmma
      MmaStage<S, kAKMajor, kBKMajor>(acc, ring.a(pos.stage), ring.b(pos.stage), t == 0, 0);
      WgmmaWait<1>();  // the MMAs of the stage before are done
      if (held >= 0 && lane == 0) MbarrierArrive(&empty[held]);
      held = pos.stage;
      pos.Advance();
    }
    WgmmaWait<0>();
    if (lane == 0) MbarrierArrive(&empty[held]);
    if constexpr (kStaged) {
      float* buf = reinterpret_cast<float*>(ring.a(0) + S::kStages * S::kStageBytes) +
                   warpgroup * kRows * kPassPitch<kPassCols>;
      StoreTileStaged<OutT, kTileN, kPassCols, true>(p, w, n0, acc, 0, warpgroup, buf);
    } else {
      StoreTileDirect<OutT, kTileN>(p, w, n0, acc, 0);
    }
  }
#else
  __trap();  // launched only on sm_90 devices, from a build for sm_90a
#endif
}

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged>
bool LaunchPingpong(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
                    const char* op) {
  auto kernel = GroupedGemmWgmmaPingpongKernel<OutT, kAKMajor, kBKMajor, kWeightGrad, S, kStaged>;
  constexpr int kBytes = kBlockSmemBytes<S, kStaged>;
  static const bool fits = HasLaunchRegisters(kernel);
  if (!fits) return false;
  static const cudaError_t attr = AllowDynamicSmem(kernel, kBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  TileSpace space;
  space.col_tiles = (p.n + S::kTileN - 1) / S::kTileN;
  // Row tiles of 64: the weight gradient's of its m rows; the forward's
  // bound, twice the caller's of 128 (the sum over groups of
  // ceil(rows_g / 64) is at most M / 64 + G).
  static_assert(kTileM % S::kRows == 0, "row_tiles counts tiles of kTileM rows");
  space.row_tiles =
      kWeightGrad ? (p.m + S::kRows - 1) / S::kRows : int64_t{row_tiles} * (kTileM / S::kRows);
  space.groups = kWeightGrad ? groups : 1;
  LaunchOnSms(ctx, kernel, kBytes, p, space, op, "GroupedGemmWgmmaPingpongKernel");
  return true;
}

}  // namespace

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
bool RunWgmmaPingpong(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
                      bool staged, const char* op) {
  if (staged) {
    if (p.n > 128) {
      return LaunchPingpong<OutT, kAKMajor, kBKMajor, kWeightGrad, PingpongWideStaged, true>(
          ctx, p, row_tiles, groups, op);
    }
    return LaunchPingpong<OutT, kAKMajor, kBKMajor, kWeightGrad, PingpongNarrowStaged, true>(
        ctx, p, row_tiles, groups, op);
  }
  if (p.n > 128) {
    return LaunchPingpong<OutT, kAKMajor, kBKMajor, kWeightGrad, PingpongWide, false>(
        ctx, p, row_tiles, groups, op);
  }
  return LaunchPingpong<OutT, kAKMajor, kBKMajor, kWeightGrad, PingpongNarrow, false>(
      ctx, p, row_tiles, groups, op);
}

// The three products (forward, data gradient, weight gradient) into bf16 or f32.
#define SM_INSTANTIATE(OutT)                                                                       \
  template bool RunWgmmaPingpong<OutT, true, true, false>(const ExecContext&, const Problem&,      \
                                                          unsigned, unsigned, bool, const char*);  \
  template bool RunWgmmaPingpong<OutT, true, false, false>(const ExecContext&, const Problem&,     \
                                                           unsigned, unsigned, bool, const char*); \
  template bool RunWgmmaPingpong<OutT, false, false, true>(const ExecContext&, const Problem&,     \
                                                           unsigned, unsigned, bool, const char*);
SM_INSTANTIATE(bf16)
SM_INSTANTIATE(float)
#undef SM_INSTANTIATE

}  // namespace scalemoe::cuda::grouped_gemm
