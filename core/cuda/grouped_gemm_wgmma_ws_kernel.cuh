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
//
// This header holds the kernel and its launch.
// core/cuda/grouped_gemm_wgmma_ws.cu instantiates it for the three
// products, core/cuda/grouped_gemm_wgmma_ws_gather.cu for the two whose
// row-stacked operand is gathered: two translation units, because ptxas
// compiled the plain kernels into other code (the same PTX) when the
// gathering ones shared their module. Included by those two files only
// (anonymous namespace).
#pragma once

#include <type_traits>

#include "core/cuda/grouped_gemm_wgmma_ws_parts.cuh"
#include "core/cuda/mbarrier.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

// The epilogue staged through shared memory (the default;
// SCALEMOE_GROUPED_GEMM_WS_EPILOGUE=direct stores from the registers;
// StoreTileStaged): each multiplying warpgroup has a buffer of its own
// beside the ring, which the loaders keep filling meanwhile, of 64 rows by
// 128 columns (a 128 x 256 tile's in two passes). The ring gives up a stage
// for it: 3 of 48 KB (128 x 256) or 4 of 32 KB (128 x 128).
constexpr int kPassCols = 128;
constexpr int kEpilogueBytes = kMultipliers / 128 * 64 * kPassPitch<kPassCols> * 4;
using WideStaged = Shape<256, 3>;
using NarrowStaged = Shape<128, 4>;
static_assert(WideStaged::kSmemBytes + kEpilogueBytes <= 227 * 1024 - 64 &&
                  NarrowStaged::kSmemBytes + kEpilogueBytes <= 227 * 1024 - 64,
              "the ring, the buffers and the barriers in one block's shared memory");

// kStaged: the epilogue through shared memory (above), else straight from
// the registers. kGather: the row-stacked operand's rows come through
// `gather` (the forward's a, the weight gradient's b; the loaders' only
// change). kSwiGlu: the experts' gate|up forward, each 128 x 256 tile 128
// gate and the same 128 up features, with SwiGLU into `swiglu.h` in the
// epilogue (StoreTileSwiGlu; with kStaged). kSwiGluGrad: the down
// projection's data gradient d_h, turned into d_gate_up by SwiGLU's
// backward in the epilogue (StoreTileSwiGluGrad; with kStaged).
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged,
          bool kGather = false, bool kSwiGlu = false, bool kSwiGluGrad = false>
__global__ void __launch_bounds__(kWsThreads, 1)
    GroupedGemmWgmmaWsKernel(Problem p, TileSpace space, RowGather gather, SwiGluOut swiglu) {
  static_assert(!(kSwiGlu || kSwiGluGrad) || (kStaged && std::is_same_v<OutT, bf16>),
                "SwiGLU: bf16, staged");
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
  // (LoadWalk, grouped_gemm_wgmma_ws_parts.cuh, is this loop; the default
  // kernel keeps its own copy until a GPU can time it again: through the
  // function ptxas schedules 18 of these 24 kernels differently.)
  if (threadIdx.x < kLoaders) {
    ReleaseRegisters<kLoaderRegisters>();
    const int loader = threadIdx.x;
    for (int64_t tile = blockIdx.x; tile < space.size(); tile += gridDim.x) {
      int64_t col;
      const BlockWork<bf16, OutT> w =
          TileWork<OutT, kWeightGrad, kTileM>(p, space, tile, col, cursor);
      if (!w.valid) break;
      const int64_t n0 = col * (kSwiGlu ? kTileN / 2 : kTileN);
      const int64_t k_tiles = (w.k_len + kTileK - 1) / kTileK;
      if constexpr (kGather || kSwiGlu) {
        LoadVariantTile<OutT, kAKMajor, kBKMajor, kWeightGrad, S, kGather, kSwiGlu>(
            p, gather, swiglu, w, n0, k_tiles, loader, ring, full, empty, pos);
        continue;
      }
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
    const BlockWork<bf16, OutT> w =
        TileWork<OutT, kWeightGrad, kTileM>(p, space, tile, col, cursor);
    if (!w.valid) break;
    const int64_t n0 = col * (kSwiGlu ? kTileN / 2 : kTileN);
    const int64_t k_tiles = (w.k_len + kTileK - 1) / kTileK;
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
                   warpgroup * 64 * kPassPitch<kPassCols>;
      if constexpr (kSwiGlu) {
        StoreTileSwiGlu<kPassCols>(p, swiglu, w, n0, acc, warpgroup, warpgroup, buf);
      } else if constexpr (kSwiGluGrad) {
        StoreTileSwiGluGrad<kTileN, kPassCols>(p, swiglu, w, n0, acc, warpgroup, warpgroup, buf);
      } else {
        StoreTileStaged<OutT, kTileN, kPassCols>(p, w, n0, acc, warpgroup, warpgroup, buf);
      }
    } else {
      StoreTileDirect<OutT, kTileN>(p, w, n0, acc, warpgroup);
    }
  }
#else
  __trap();  // launched only on sm_90 devices, from a build for sm_90a
#endif
}

// Whether the variants' kernels (gathering, SwiGLU) may run: only the
// default kernel and epilogue have them; under SCALEMOE_GROUPED_GEMM=tile or
// the direct epilogue (A/B timings) their callers run the unfused ops.
inline bool VariantKernelsSelected() {
  static const bool ws = !EnvEquals("SCALEMOE_GROUPED_GEMM", "tile") &&
                         !EnvEquals("SCALEMOE_GROUPED_GEMM_WS_EPILOGUE", "direct");
  return ws;
}

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S, bool kStaged,
          bool kGather = false, bool kSwiGlu = false, bool kSwiGluGrad = false>
bool LaunchWs(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
              const char* op, const RowGather& gather = {}, const SwiGluOut& swiglu = {}) {
  auto kernel = GroupedGemmWgmmaWsKernel<OutT, kAKMajor, kBKMajor, kWeightGrad, S, kStaged, kGather,
                                         kSwiGlu, kSwiGluGrad>;
  constexpr int kBytes = S::kSmemBytes + (kStaged ? kEpilogueBytes : 0);
  static const bool fits = HasLaunchRegisters(kernel);
  if (!fits) return false;
  static const cudaError_t attr = AllowDynamicSmem(kernel, kBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  TileSpace space;
  space.col_tiles = (p.n + S::kTileN - 1) / S::kTileN;
  space.row_tiles = row_tiles;
  space.groups = kWeightGrad ? groups : 1;
  LaunchOnSms(ctx, kernel, kBytes, p, space, gather, swiglu, op, "GroupedGemmWgmmaWsKernel");
  return true;
}

}  // namespace
}  // namespace scalemoe::cuda::grouped_gemm
