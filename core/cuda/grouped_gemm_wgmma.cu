// The grouped GEMMs on wgmma (sm_90a): the forward x·W_gᵀ, the data
// gradient d_y·W_g and the weight gradient (the group's rows of a)ᵀ · (the
// same rows of b), all from one kernel whose operands are K-major or
// MN-major in shared memory (core/cuda/wgmma.cuh), so no operand is
// transposed first.
//
// A block computes a 128 x N tile: two warpgroups of 64 rows, wgmma
// m64nNk16, k in steps of 64 through a ring of cp.async stages. The MMAs of
// a stage stay in flight while the next stage is waited for and the one
// after is loaded (wgmma.wait_group 1): the tensor cores are not idle across
// the block's barrier. Tiles of 128 x 256 (4 stages of 48 KB, one block per
// SM) where the output is wider than 128 columns, else 128 x 128 (6 stages).
// The epilogue writes the f32 tile to the ring, then stores 16-byte runs of
// rows (a warp's store covers 512 contiguous bytes instead of 8 rows' 16);
// SCALEMOE_GROUPED_GEMM_EPILOGUE=direct keeps the stores from the registers.
// The first wgmma kernel (128 x 128, waiting for its MMAs every stage) ran
// at ~290 TFLOP/s on the H200; this one at 265-350 on gpu_moe_125m's shapes.
// Fixed summation order and no atomics: the same bits on every run.
// Since the persistent warp-specialized kernel (grouped_gemm_wgmma_ws.cu,
// the same tiles and bits) this one runs only under
// SCALEMOE_GROUPED_GEMM=tile, and where the ws kernel cannot (a build that
// gave it too few registers).
#include "core/cuda/grouped_gemm_wgmma_tiles.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

constexpr int kThreads = 256;

// The staged epilogue's row pitch in floats: kTileN + 8 keeps the
// fragments' float2 writes free of bank conflicts (rows 8 words apart in
// each half-warp).
template <int kTileN>
constexpr int kStagePitch = kTileN + 8;

// The same through shared memory (the ring, free once every MMA is done):
// the f32 fragments are written there, then each thread stores whole
// 16-byte runs of a row, so that a warp's store covers 512 contiguous bytes
// instead of 8 rows' 16. Only where c's rows are 16-byte aligned; else the
// direct store.
template <typename OutT, int kTileN>
__device__ __forceinline__ void StoreTile(const Problem& p, const BlockWork<bf16, OutT>& w,
                                          int64_t n0, const float (&acc)[kTileN / 2],
                                          unsigned char* smem, bool staged) {
  constexpr int kVec = 16 / sizeof(OutT), kPitch = kStagePitch<kTileN>;
  const bool vec = p.ldc % kVec == 0 && reinterpret_cast<uintptr_t>(w.c) % 16 == 0;
  if (!staged || !vec) return StoreTileDirect<OutT, kTileN>(p, w, n0, acc, threadIdx.x / 128);
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  float* stage = reinterpret_cast<float*>(smem);
  __syncthreads();  // every warpgroup's MMAs have read the ring
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = warpgroup * 64 + warp * 16 + h * 8 + lane / 4;
#pragma unroll
    for (int j = 0; j < kTileN / 8; ++j) {
      *reinterpret_cast<float2*>(stage + row * kPitch + 8 * j + (lane % 4) * 2) =
          make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
  __syncthreads();
  // A thread's runs in batches whose old values (beta != 0: the weight
  // gradients' accumulation) are all loaded before any is stored: the
  // compiler cannot move a load above a store to c, and one run at a time
  // waited a global load's latency for each of 32 runs (wgrad at 210
  // instead of 260 TFLOP/s on the H200).
  constexpr int kRuns = kTileN / kVec, kPerThread = kTileM * kRuns / kThreads, kBatch = 8;
  static_assert(kTileM * kRuns % kThreads == 0 && kPerThread % kBatch == 0, "whole batches");
  for (int b0 = 0; b0 < kPerThread; b0 += kBatch) {
    uint4 old[kBatch];
    OutT* dst[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int c = threadIdx.x + (b0 + i) * kThreads, row = c / kRuns, col = (c % kRuns) * kVec;
      const int64_t gm = w.m0 + row, gn = n0 + col;
      // n is a multiple of 8: a run is all in or all out.
      dst[i] = gm < w.m_lim && gn < p.n ? w.c + gm * p.ldc + gn : nullptr;
      old[i] = dst[i] && p.beta != 0.0f ? LoadVec16(dst[i]) : uint4{};
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int c = threadIdx.x + (b0 + i) * kThreads, row = c / kRuns, col = (c % kRuns) * kVec;
      if (dst[i]) StoreVec16(dst[i], stage + row * kPitch + col, p.beta, old[i]);
    }
  }
}

// One block a tile (grid x: column tiles, y: row tiles, z: groups).
template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S>
__global__ void __launch_bounds__(kThreads, 1) GroupedGemmWgmmaKernel(Problem p, bool staged) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kTileN = S::kTileN;
  const BlockWork<bf16, OutT> w = FindWork<bf16, OutT, kWeightGrad>(p, kTileM);
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const Ring<S> ring = MakeRing<S>();
  auto load = [&](int64_t t) {
    LoadTile<kTileM, kAKMajor, kThreads>(ring.a(t), w.a, p.lda, w.m0, t * kTileK, w.m_lim, w.k_len,
                                         threadIdx.x);
    LoadTile<kTileN, kBKMajor, kThreads>(ring.b(t), w.b, p.ldb, n0, t * kTileK, p.n, w.k_len,
                                         threadIdx.x);
  };
  const int64_t k_tiles = (w.k_len + kTileK - 1) / kTileK;
  if (k_tiles <= 0) {  // a weight gradient's empty group: c = 0 + beta c
    const float zeros[kTileN / 2] = {};
    StoreTile<OutT, kTileN>(p, w, n0, zeros, ring.a(0), staged);
    return;
  }
  float acc[kTileN / 2];  // the first MMA overwrites it (MmaStage)
  // Tiles loading beyond the one being multiplied: the ring also holds the
  // tile whose MMAs may still run (wait_group 1).
  constexpr int kAhead = S::kStages - 2;
#pragma unroll
  for (int t = 0; t < kAhead; ++t) {
    if (t < k_tiles) load(t);
    CpAsyncCommit();
  }
  for (int64_t t = 0; t < k_tiles; ++t) {
    CpAsyncWait<kAhead - 1>();  // this thread's copies of tile t have landed
    FenceProxyAsyncShared();    // ... and are visible to wgmma
    // Every thread's copies of tile t; and every warpgroup has waited for
    // the MMAs of tile t - 2 (its wait_group 1 after t - 1): that stage is
    // free for tile t + kAhead.
    __syncthreads();
    MmaStage<S, kAKMajor, kBKMajor>(acc, ring.a(t), ring.b(t), t == 0, threadIdx.x / 128);
    if (t + kAhead < k_tiles) load(t + kAhead);
    CpAsyncCommit();
    WgmmaWait<1>();  // the MMAs of tile t - 1 are done
  }
  WgmmaWait<0>();
  CpAsyncWait<0>();
  StoreTile<OutT, kTileN>(p, w, n0, acc, ring.a(0), staged);
#else
  __trap();  // launched only on sm_90 devices, from a build for sm_90a
#endif
}

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad, typename S>
void Launch(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
            const char* op) {
  auto kernel = GroupedGemmWgmmaKernel<OutT, kAKMajor, kBKMajor, kWeightGrad, S>;
  static const cudaError_t attr = AllowDynamicSmem(kernel, S::kSmemBytes);
  SM_CHECK_CUDA_CALL(ctx, attr, op);
  const dim3 grid(static_cast<unsigned>((p.n + S::kTileN - 1) / S::kTileN), row_tiles, groups);
  // SCALEMOE_GROUPED_GEMM_EPILOGUE=direct: the stores straight from the
  // registers (A/B timings, bench/grouped_gemm_check.sh).
  static const bool staged = !EnvEquals("SCALEMOE_GROUPED_GEMM_EPILOGUE", "direct");
  kernel<<<grid, kThreads, S::kSmemBytes, Stream(ctx)>>>(p, staged);
  SM_CHECK_LAUNCH(ctx, op, "GroupedGemmWgmmaKernel");
}

}  // namespace

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

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
void RunWgmma(const ExecContext& ctx, const Problem& p, unsigned row_tiles, unsigned groups,
              const char* op) {
  // The persistent warp-specialized kernel, unless SCALEMOE_GROUPED_GEMM=tile
  // asks for this file's block-per-tile one (A/B timings). With its staged
  // epilogue and the group cursor it is faster on every expert shape on the
  // H200, 64e's K = 256 included (293 against 175 TFLOP/s; bench/RESULTS.md).
  static const bool tile = EnvEquals("SCALEMOE_GROUPED_GEMM", "tile");
  if (!tile &&
      RunWgmmaWs<OutT, kAKMajor, kBKMajor, kWeightGrad>(ctx, p, row_tiles, groups, op)) {
    return;
  }
  if (p.n > 128) {
    Launch<OutT, kAKMajor, kBKMajor, kWeightGrad, Wide>(ctx, p, row_tiles, groups, op);
  } else {
    Launch<OutT, kAKMajor, kBKMajor, kWeightGrad, Narrow>(ctx, p, row_tiles, groups, op);
  }
}

// The three products (forward, data gradient, weight gradient) into bf16 or f32.
#define SM_INSTANTIATE(OutT)                                                                     \
  template void RunWgmma<OutT, true, true, false>(const ExecContext&, const Problem&, unsigned,  \
                                                  unsigned, const char*);                        \
  template void RunWgmma<OutT, true, false, false>(const ExecContext&, const Problem&, unsigned, \
                                                   unsigned, const char*);                       \
  template void RunWgmma<OutT, false, false, true>(const ExecContext&, const Problem&, unsigned, \
                                                   unsigned, const char*);
SM_INSTANTIATE(bf16)
SM_INSTANTIATE(float)
#undef SM_INSTANTIATE

}  // namespace scalemoe::cuda::grouped_gemm
