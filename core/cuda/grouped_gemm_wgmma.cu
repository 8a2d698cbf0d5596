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
#include "core/cuda/cp_async.cuh"
#include "core/cuda/grouped_gemm_wgmma.cuh"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/mma_sync.cuh"
#include "core/cuda/wgmma.cuh"

namespace scalemoe::cuda::grouped_gemm {
namespace {

constexpr int kTileM = kWgmmaTileM, kTileK = 64, kThreads = 256;

// A kernel configuration: the output tile's width and the ring's stages.
// Measured on the H200 and not kept (bench/RESULTS.md): 128 x 128 tiles with
// 3 stages and two blocks per SM, and persistent blocks running one ring
// across their tiles (slower on gpu_finegrained_64e's short reductions).
template <int kTileNArg, int kStagesArg>
struct Shape {
  static constexpr int kTileN = kTileNArg, kStages = kStagesArg;
  static constexpr int kABytes = kTileM * kTileK * 2;
  static constexpr int kBBytes = kTileN * kTileK * 2;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + the 1024 alignment
  static_assert(kStages >= 3, "a stage multiplied, one in flight, one loading");
  static_assert(kSmemBytes <= 227 * 1024, "one block's shared memory on sm_90");
  // The staged epilogue's f32 tile fits in the ring.
  static_assert(kTileM * (kTileN + 8) * 4 <= kStages * kStageBytes, "the epilogue's stage");
};
using Wide = Shape<256, 4>;    // 128 x 256 tiles, 4 stages of 48 KB
using Narrow = Shape<128, 6>;  // 128 x 128, 6 stages of 32 KB

// Columns [mn0, mn0 + kMn) x k [k0, k0 + 64) of an operand into its
// swizzled tile (core/cuda/wgmma.cuh); chunks of 8 past a limit are
// zero-filled (both limits' contiguous dims are multiples of 8). kKMajor:
// the element (mn, k) at base[mn * ld + k], else base[k * ld + mn].
template <int kMn, bool kKMajor>
__device__ __forceinline__ void LoadTile(unsigned char* tile, const bf16* base, int64_t ld,
                                         int64_t mn0, int64_t k0, int64_t mn_lim, int64_t k_lim) {
  constexpr int kChunks = kMn * kTileK / 8;
  static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kChunks / kThreads; ++it) {
    const int c = threadIdx.x + it * kThreads;
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
template <typename OutT, int kTileN>
__device__ __forceinline__ void StoreTileDirect(const Problem& p, const BlockWork<bf16, OutT>& w,
                                                int64_t n0, const float (&acc)[kTileN / 2]) {
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
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

// The staged epilogue's row pitch in floats: kTileN + 8 keeps the
// fragments' float2 writes free of bank conflicts (rows 8 words apart in
// each half-warp).
template <int kTileN>
constexpr int kStagePitch = kTileN + 8;

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
  if (!staged || !vec) return StoreTileDirect<OutT, kTileN>(p, w, n0, acc);
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

// The k16 slices of one stage, multiplied into acc by this warpgroup; the
// first stage of a tile (first) overwrites acc.
template <typename S, bool kAKMajor, bool kBKMajor>
__device__ __forceinline__ void MmaStage(float (&acc)[S::kTileN / 2], const unsigned char* a,
                                         const unsigned char* b, bool first) {
  const int warpgroup = threadIdx.x / 128;
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
    LoadTile<kTileM, kAKMajor>(ring.a(t), w.a, p.lda, w.m0, t * kTileK, w.m_lim, w.k_len);
    LoadTile<kTileN, kBKMajor>(ring.b(t), w.b, p.ldb, n0, t * kTileK, p.n, w.k_len);
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
    MmaStage<S, kAKMajor, kBKMajor>(acc, ring.a(t), ring.b(t), t == 0);
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
