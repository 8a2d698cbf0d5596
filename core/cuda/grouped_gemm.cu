// Grouped GEMMs on the GPU (core/ops.h): every group (expert) of one matrix
// in one launch, the group boundaries read from the device offsets.
//
// Both ops are one generic tiled product per group, C_g = A_g · B_g:
// - GroupedGemm: A_g = the group's rows of a [M, K], B_g = its matrix (or
//   its transpose), C_g = the same rows of c. The grid's y runs over row
//   tiles of every group (at most ceil(M / tile) + G of them); a block finds
//   its group by a prefix over the offsets and exits if it has none.
// - GroupedGemmWeightGrad: A_g = (the group's rows of a)ᵀ, B_g = the same
//   rows of b, C_g = the group's output matrix; grid z = the group, the
//   reduction runs over the group's rows.
// - GroupedGemmGathered and GroupedGemmWeightGradGathered: the same with
//   a's (b's) rows read through a row index, on sm_90 by the persistent
//   wgmma kernel's loaders (core/cuda/grouped_gemm_wgmma_ws_gather.cu);
//   elsewhere the rows are gathered into a copy first.
// Kernels: bf16 inputs on tensor cores when every contiguous dim is a
// multiple of 8 and every input pointer 16-byte aligned — on wgmma on sm_90
// devices (core/cuda/grouped_gemm_wgmma.cu, all three products), elsewhere
// on mma.sync (ldmatrix fragments; f32 accumulators either way); otherwise
// (f32, f64, odd shapes) an exact SIMT kernel. No atomics, fixed summation
// order: the same bits on every run.
#include <type_traits>

#include "core/cuda/cp_async.cuh"
#include "core/cuda/cuda_ops.h"
#include "core/cuda/grouped_gemm.h"
#include "core/cuda/grouped_gemm_problem.cuh"
#include "core/cuda/grouped_gemm_wgmma.cuh"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/mma_sync.cuh"

namespace scalemoe::cuda {
namespace {

using namespace grouped_gemm;

// ---------------------------------------------------------------- SIMT kernel

constexpr int kSimtTile = 64, kSimtK = 16, kSimtThreads = 256;

// kAKMajor: A(m, k) at a[m * lda + k] (else a[k * lda + m]); kBKMajor:
// B(k, n) at b[n * ldb + k] (else b[k * ldb + n]).
template <typename T, typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
__global__ void __launch_bounds__(kSimtThreads) GroupedGemmSimtKernel(Problem p) {
  using A = Acc<T>;
  const BlockWork<T, OutT> w = FindWork<T, OutT, kWeightGrad>(p, kSimtTile);
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSimtTile;
  __shared__ A as[kSimtK][kSimtTile];
  __shared__ A bs[kSimtK][kSimtTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  A acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.k_len; k0 += kSimtK) {
    for (int e = threadIdx.x; e < kSimtTile * kSimtK; e += kSimtThreads) {
      // The contiguous dim fastest across threads: coalesced reads.
      const int mk = kAKMajor ? e / kSimtK : e % kSimtTile;
      const int kk = kAKMajor ? e % kSimtK : e / kSimtTile;
      const int64_t gm = w.m0 + mk, gk = k0 + kk;
      A v = 0;
      if (gm < w.m_lim && gk < w.k_len) {
        v = ToAcc(kAKMajor ? w.a[gm * p.lda + gk] : w.a[gk * p.lda + gm]);
      }
      as[kk][mk] = v;
      const int nb = kBKMajor ? e / kSimtK : e % kSimtTile;
      const int kb = kBKMajor ? e % kSimtK : e / kSimtTile;
      const int64_t gn = n0 + nb, gkb = k0 + kb;
      A u = 0;
      if (gn < p.n && gkb < w.k_len) {
        u = ToAcc(kBKMajor ? w.b[gn * p.ldb + gkb] : w.b[gkb * p.ldb + gn]);
      }
      bs[kb][nb] = u;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtK; ++kk) {
      A av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = as[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = w.m0 + ty + 16 * i;
    if (gm >= w.m_lim) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn < p.n) StoreOut(w.c + gm * p.ldc + gn, acc[i][j], p.beta);
    }
  }
}

// ---------------------------------------------------------------- tensor-core kernel

// 128 x 128 output tiles, k in steps of 32 through a 4-stage cp.async ring;
// 4 warps as 2 x 2, each a 64 x 64 block: 4 x 8 mma.sync m16n8k16 per 16 of
// k from 4 + 4 ldmatrix.x4 (.trans for an operand whose k is not
// contiguous). Two blocks per SM (240 registers a thread, 80 KB of shared
// memory each). Measured on the H200 (bench/RESULTS.md): 64 x 32 warp tiles
// issued too many ldmatrix per MMA; 128 x 256 block tiles (one block of 8
// warps per SM) cut L2 traffic but stalled on latency. Shared rows are
// padded by 16 bytes, which keeps every ldmatrix and cp.async free of bank
// conflicts in both layouts.
constexpr int kTileM = 128, kTileN = 128, kTileK = 32, kStages = 4, kPad = 8, kTcThreads = 128;
static_assert(kTileM == kWgmmaTileM, "GroupedGemm sizes its grid by kTileM for both kernels");

// An operand's tile in shared memory: kOuter x kInner elements (inner
// contiguous, rows padded), loaded 8 at a time; a chunk past a limit is
// zero-filled (the limits of the inner dim are multiples of 8, so a chunk
// is all in or all out).
template <int kOuter, int kInner>
struct SmemTile {
  static constexpr int kLd = kInner + kPad;
  static constexpr int kElems = kOuter * kLd;
  __device__ static void Load(bf16* smem, const bf16* base, int64_t ld, int64_t outer0,
                              int64_t inner0, int64_t outer_lim, int64_t inner_lim) {
    constexpr int kChunksPerRow = kInner / 8, kChunks = kOuter * kChunksPerRow;
    static_assert(kChunks % kTcThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int it = 0; it < kChunks / kTcThreads; ++it) {
      const int c = threadIdx.x + it * kTcThreads;
      const int o = c / kChunksPerRow, i = (c % kChunksPerRow) * 8;
      const int64_t go = outer0 + o, gi = inner0 + i;
      const bool valid = go < outer_lim && gi < inner_lim;
      CpAsync16(smem + o * kLd + i, valid ? base + go * ld + gi : base, valid);
    }
  }
};

template <bool kAKMajor, bool kBKMajor>
struct TcTiles {
  // A: [m][k] when k is contiguous, else [k][m]; B: [n][k] or [k][n].
  using ATile = std::conditional_t<kAKMajor, SmemTile<kTileM, kTileK>, SmemTile<kTileK, kTileM>>;
  using BTile = std::conditional_t<kBKMajor, SmemTile<kTileN, kTileK>, SmemTile<kTileK, kTileN>>;
  static constexpr int kStageElems = ATile::kElems + BTile::kElems;
  static constexpr int kSmemBytes = kStages * kStageElems * 2;
};

template <typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
__global__ void __launch_bounds__(kTcThreads, 2) GroupedGemmTcKernel(Problem p) {
  using Tiles = TcTiles<kAKMajor, kBKMajor>;
  using ATile = typename Tiles::ATile;
  using BTile = typename Tiles::BTile;
  const BlockWork<bf16, OutT> w = FindWork<bf16, OutT, kWeightGrad>(p, kTileM);
  if (!w.valid) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  extern __shared__ __align__(128) unsigned char smem_bytes[];
  bf16* const smem = reinterpret_cast<bf16*>(smem_bytes);
  auto stage_a = [&](int s) { return smem + s * Tiles::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Tiles::kStageElems + ATile::kElems; };
  auto load = [&](int s, int64_t k0) {
    if constexpr (kAKMajor) {
      ATile::Load(stage_a(s), w.a, p.lda, w.m0, k0, w.m_lim, w.k_len);
    } else {
      ATile::Load(stage_a(s), w.a, p.lda, k0, w.m0, w.k_len, w.m_lim);
    }
    if constexpr (kBKMajor) {
      BTile::Load(stage_b(s), w.b, p.ldb, n0, k0, p.n, w.k_len);
    } else {
      BTile::Load(stage_b(s), w.b, p.ldb, k0, n0, w.k_len, p.n);
    }
  };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = (warp / 2) * 64, wn = (warp % 2) * 64;
  float acc[4][8][4] = {};
  const int64_t k_tiles = (w.k_len + kTileK - 1) / kTileK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load(s, s * kTileK);
    CpAsyncCommit();
  }
  for (int64_t t = 0; t < k_tiles; ++t) {
    CpAsyncWait<kStages - 2>();  // tile t has landed
    __syncthreads();             // ... for every thread; tile t - 1's stage is free
    const int64_t next = t + kStages - 1;
    if (next < k_tiles) load(static_cast<int>(next % kStages), next * kTileK);
    CpAsyncCommit();
    const int s = static_cast<int>(t % kStages);
    const bf16* a_tile = stage_a(s);
    const bf16* b_tile = stage_b(s);
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      unsigned af[4][4], bfr[4][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        LoadFragmentA<kAKMajor>(af[i], a_tile, ATile::kLd, wm + i * 16, kk);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        LoadFragmentsB<kBKMajor>(bfr[j], b_tile, BTile::kLd, wn + j * 16, kk);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
          MmaBf16(acc[i][j], af[i], bfr[j / 2][(j % 2) * 2], bfr[j / 2][(j % 2) * 2 + 1]);
      }
    }
  }
  CpAsyncWait<0>();
  // Straight from the accumulators: each lane holds 2 adjacent columns of 2
  // rows per block (n is a multiple of 8: a pair is all in or all out),
  // stored as one pair when the output's rows allow it.
  const bool pairs = p.ldc % 2 == 0 && reinterpret_cast<uintptr_t>(w.c) % (2 * sizeof(OutT)) == 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t gm = w.m0 + wm + i * 16 + h * 8 + lane / 4;
      if (gm >= w.m_lim) continue;
      OutT* row = w.c + gm * p.ldc;
      const int64_t col0 = n0 + wn + (lane % 4) * 2;
      float v[8][2];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[j][0] = acc[i][j][h * 2];
        v[j][1] = acc[i][j][h * 2 + 1];
      }
      StoreRowPairs(row, col0, p.n, pairs, p.beta, v);
    }
  }
}

// ---------------------------------------------------------------- launch

struct Launch {
  dim3 grid;
  bool tensor_cores = false;
};

template <typename T, typename OutT, bool kAKMajor, bool kBKMajor, bool kWeightGrad>
void Run(const ExecContext& ctx, const Problem& p, Launch launch, const char* op) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (launch.tensor_cores && UseWgmma()) {
      RunWgmma<OutT, kAKMajor, kBKMajor, kWeightGrad>(ctx, p, launch.grid.y, launch.grid.z, op);
      return;
    }
    if (launch.tensor_cores) {
      auto kernel = GroupedGemmTcKernel<OutT, kAKMajor, kBKMajor, kWeightGrad>;
      constexpr int kBytes = TcTiles<kAKMajor, kBKMajor>::kSmemBytes;
      static const cudaError_t attr = AllowDynamicSmem(kernel, kBytes);
      SM_CHECK_CUDA_CALL(ctx, attr, op);
      const dim3 grid((p.n + kTileN - 1) / kTileN, launch.grid.y, launch.grid.z);
      kernel<<<grid, kTcThreads, kBytes, Stream(ctx)>>>(p);
      SM_CHECK_LAUNCH(ctx, op, "GroupedGemmTcKernel");
      return;
    }
  }
  const dim3 grid((p.n + kSimtTile - 1) / kSimtTile, launch.grid.y, launch.grid.z);
  GroupedGemmSimtKernel<T, OutT, kAKMajor, kBKMajor, kWeightGrad>
      <<<grid, kSimtThreads, 0, Stream(ctx)>>>(p);
  SM_CHECK_LAUNCH(ctx, op, "GroupedGemmSimtKernel");
}

// Calls f(Tag<T>, Tag<OutT>) for the inputs' and the output's element types.
template <typename F>
void DispatchInOut(DType in, DType out, const char* op, F&& f) {
  if (in == DType::kF32 && out == DType::kF32) return f(Tag<float>{}, Tag<float>{});
  if (in == DType::kF64 && out == DType::kF64) return f(Tag<double>{}, Tag<double>{});
  if (in == DType::kBF16 && out == DType::kBF16) return f(Tag<bf16>{}, Tag<bf16>{});
  if (in == DType::kBF16 && out == DType::kF32) return f(Tag<bf16>{}, Tag<float>{});
  SM_CHECK_MSG(false, op, ": inputs ", DTypeName(in), " with output ", DTypeName(out),
               " (f32, f64, bf16 -> bf16 or f32)");
}

void CheckOffsets(const ExecContext& ctx, const Tensor& offsets, int64_t groups, const char* op) {
  CheckOnDevice(ctx, offsets, op, "offsets");
  SM_CHECK_MSG(
      offsets.dtype() == DType::kI64 && offsets.ndim() == 1 && offsets.numel() == groups + 1, op,
      ": offsets must be int64 [", groups + 1, "], got ", offsets.DebugString());
}

void CheckGroup(const ExecContext& ctx, const MatrixGroup& group, const char* op) {
  SM_CHECK_MSG(group.addresses.numel() == group.size() &&
                   (group.size() == 0 || group.addresses.device() == Device::kCUDA),
               op, ": the matrix group's address table is not on the device (MakeMatrixGroup)");
  for (const Tensor& m : group.matrices) CheckOnDevice(ctx, m, op, "group matrix");
}

// Tensor cores: bf16, contiguous dims multiples of 8, 16-byte aligned input
// rows (cp.async reads 16 bytes; the outputs are written element-wise and
// may sit anywhere, e.g. gradients packed after a scalar β).
bool TensorCoresFit(DType in, std::initializer_list<int64_t> inner_dims,
                    std::initializer_list<const void*> inputs, const MatrixGroup* input_group) {
  if (in != DType::kBF16) return false;
  for (int64_t d : inner_dims) {
    if (d % 8 != 0) return false;
  }
  if (input_group != nullptr) {
    for (const Tensor& m : input_group->matrices) {
      if (!Aligned16(m.raw_data())) return false;
    }
  }
  return AllAligned16(inputs);
}

}  // namespace

namespace {

// GroupedGemm's launch for a [m, k] at `a` (checked by the caller), or
// nothing to do (valid false).
struct ForwardLaunch {
  bool valid = false;
  Problem p;
  Launch launch;
  bool trans = true;
};
ForwardLaunch PrepareForward(const void* a, DType a_dtype, int64_t m, int64_t k,
                             const MatrixGroup& b, const Tensor& offsets, const Tensor& c,
                             const GroupedGemmOptions& o, const char* op) {
  ForwardLaunch f;
  f.trans = o.trans_b == Trans::kYes;
  const int64_t n = c.dim(1);
  if (b.size() == 0 || m == 0 || n == 0) return f;
  Problem& p = f.p;
  p.a = a;
  p.lda = k;
  p.b_table = static_cast<const int64_t*>(b.addresses.raw_data());
  p.ldb = f.trans ? k : n;
  p.c = c.raw_data();
  p.ldc = n;
  p.offsets = static_cast<const int64_t*>(offsets.raw_data());
  p.groups = static_cast<int>(b.size());
  p.n = n;
  p.k = k;
  p.beta = static_cast<float>(o.beta);
  const bool tc = TensorCoresFit(a_dtype, {k, n}, {a}, &b);
  const int tile = tc ? kTileM : kSimtTile;
  // Every group's row tiles: at most ceil(M / tile) + G of them.
  const int64_t row_tiles = (m + tile - 1) / tile + b.size();
  SM_CHECK_MSG(row_tiles <= 65535, op, ": ", m, " rows in ", b.size(),
               " groups exceed one launch's row tiles");
  f.launch = Launch{dim3(1, static_cast<unsigned>(row_tiles), 1), tc};
  f.valid = true;
  return f;
}

// The checks of GroupedGemm for a of `a_shape`.
void CheckForward(const ExecContext& ctx, const Shape& a_shape, DType a_dtype, const MatrixGroup& b,
                  const Tensor& offsets, const Tensor& c, const GroupedGemmOptions& o,
                  const char* op) {
  CheckOnDevice(ctx, c, op, "c");
  CheckGroup(ctx, b, op);
  CheckOffsets(ctx, offsets, b.size(), op);
  const bool trans = o.trans_b == Trans::kYes;
  SM_CHECK_MSG(a_shape.size() == 2 && c.ndim() == 2 && a_shape[0] == c.dim(0) &&
                   (b.size() == 0 || (trans ? b.cols : b.rows) == a_shape[1]) &&
                   (b.size() == 0 || (trans ? b.rows : b.cols) == c.dim(1)) &&
                   (b.size() == 0 || b.dtype == a_dtype),
               op, ": a ", ShapeString(a_shape), " x group of ", b.size(), " [", b.rows, ", ",
               b.cols, "]", trans ? "ᵀ" : "", " -> c ", c.DebugString());
}

// The gather of a gathered op's operand: x [N, K] contiguous, rows i32 [m].
void CheckGather(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                 int64_t m, const char* op) {
  CheckOnDevice(ctx, x, op, "x");
  CheckOnDevice(ctx, rows, op, "rows");
  SM_CHECK_MSG(x.ndim() == 2 && x.is_contiguous() && rows.dtype() == DType::kI32 &&
                   rows.ndim() == 1 && rows.numel() == m && rows.is_contiguous() && divisor >= 1,
               op, ": x ", x.DebugString(), " (contiguous [N, K]) gathered by rows ",
               rows.DebugString(), " (i32 [", m, "]) / ", divisor);
}

}  // namespace

void GroupedGemm(const ExecContext& ctx, const Tensor& a, const MatrixGroup& b,
                 const Tensor& offsets, const Tensor& c, const GroupedGemmOptions& o) {
  const char* op = "GroupedGemm";
  CheckOnDevice(ctx, a, op, "a");
  CheckForward(ctx, a.shape(), a.dtype(), b, offsets, c, o, op);
  const ForwardLaunch f =
      PrepareForward(a.raw_data(), a.dtype(), a.dim(0), a.dim(1), b, offsets, c, o, op);
  if (!f.valid) return;
  DispatchInOut(a.dtype(), c.dtype(), op, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    if (f.trans) {
      Run<T, OutT, true, true, false>(ctx, f.p, f.launch, op);
    } else {
      Run<T, OutT, true, false, false>(ctx, f.p, f.launch, op);
    }
  });
}

bool GroupedGemmOnWgmma() { return UseWgmma(); }
bool GroupedGemmGathersInLoads() { return UseWgmma() && WsGathers(); }

void GroupedGemmGathered(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                         const MatrixGroup& b, const Tensor& offsets, const Tensor& c,
                         const GroupedGemmOptions& o) {
  const char* op = "GroupedGemmGathered";
  const int64_t m = c.ndim() == 2 ? c.dim(0) : -1;
  CheckGather(ctx, x, rows, divisor, m, op);
  CheckForward(ctx, {m, x.dim(1)}, x.dtype(), b, offsets, c, o, op);
  const ForwardLaunch f =
      PrepareForward(x.raw_data(), x.dtype(), m, x.dim(1), b, offsets, c, o, op);
  if (!f.valid) return;
  bool fused = false;
  if (f.launch.tensor_cores && f.trans && UseWgmma()) {
    const RowGather gather{static_cast<const int32_t*>(rows.raw_data()), divisor};
    DispatchInOut(x.dtype(), c.dtype(), op, [&](auto in, auto out) {
      using T = typename decltype(in)::type;
      using OutT = typename decltype(out)::type;
      if constexpr (std::is_same_v<T, bf16>) {
        fused = RunWgmmaWsGathered<OutT, true, true, false>(ctx, f.p, gather, f.launch.grid.y,
                                                            f.launch.grid.z, op);
      }
    });
  }
  if (fused) return;
  const Tensor a = ctx.Empty({m, x.dim(1)}, x.dtype());
  GatherRows(ctx, x, rows, divisor, a);
  cuda::GroupedGemm(ctx, a, b, offsets, c, o);
}

bool GroupedGemmSwiGluInEpilogue() { return UseWgmma() && WsSwiGlus(); }

void GroupedGemmSwiGlu(const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor,
                       const MatrixGroup& b, const Tensor& offsets, const Tensor& gate_up,
                       const Tensor& h) {
  const char* op = "GroupedGemmSwiGlu";
  const GroupedGemmOptions xwt{.trans_b = Trans::kYes};
  const int64_t m = gate_up.ndim() == 2 ? gate_up.dim(0) : -1;
  if (rows.defined()) CheckGather(ctx, x, rows, divisor, m, op);
  if (!rows.defined()) CheckOnDevice(ctx, x, op, "x");
  const Shape a_shape{m, x.ndim() == 2 ? x.dim(1) : -1};
  CheckForward(ctx, a_shape, x.dtype(), b, offsets, gate_up, xwt, op);
  CheckOnDevice(ctx, h, op, "h");
  const int64_t f = gate_up.dim(1) / 2;
  SM_CHECK_MSG(gate_up.dim(1) % 2 == 0 && h.ndim() == 2 && h.dim(0) == m && h.dim(1) == f &&
                   h.dtype() == gate_up.dtype() && gate_up.is_contiguous() && h.is_contiguous(),
               op, ": h ", h.DebugString(), " for gate_up ", gate_up.DebugString(),
               " (want [M, F] of [M, 2F])");
  const ForwardLaunch l =
      PrepareForward(x.raw_data(), x.dtype(), m, a_shape[1], b, offsets, gate_up, xwt, op);
  if (!l.valid) return;
  // The epilogue's tiles: 128 gate and 128 up features, bf16 16-byte rows.
  const bool fits = l.launch.tensor_cores && x.dtype() == DType::kBF16 &&
                    gate_up.dtype() == DType::kBF16 && f % 128 == 0 &&
                    AllAligned16({gate_up.raw_data(), h.raw_data()});
  if (fits && UseWgmma()) {
    const RowGather gather{rows.defined() ? static_cast<const int32_t*>(rows.raw_data()) : nullptr,
                           divisor};
    const SwiGluOut swiglu{static_cast<bf16*>(h.raw_data()), f, f};
    if (RunWgmmaWsSwiGlu(ctx, l.p, gather, swiglu, l.launch.grid.y, op)) return;
  }
  if (rows.defined()) {
    cuda::GroupedGemmGathered(ctx, x, rows, divisor, b, offsets, gate_up, xwt);
  } else {
    cuda::GroupedGemm(ctx, x, b, offsets, gate_up, xwt);
  }
  SwiGluPacked(ctx, gate_up, h);
}

bool GroupedGemmSwiGluGradInEpilogue() { return UseWgmma() && WsSwiGluGrads(); }

void GroupedGemmSwiGluBackward(const ExecContext& ctx, const Tensor& d_y, const MatrixGroup& b,
                               const Tensor& offsets, const Tensor& gate_up,
                               const Tensor& d_gate_up) {
  const char* op = "GroupedGemmSwiGluBackward";
  CheckOnDevice(ctx, d_y, op, "d_y");
  CheckOnDevice(ctx, gate_up, op, "gate_up");
  CheckOnDevice(ctx, d_gate_up, op, "d_gate_up");
  SM_CHECK_MSG(gate_up.ndim() == 2 && gate_up.dim(1) % 2 == 0 && gate_up.is_contiguous() &&
                   d_gate_up.shape() == gate_up.shape() && d_gate_up.dtype() == gate_up.dtype() &&
                   d_gate_up.is_contiguous(),
               op, ": gate_up ", gate_up.DebugString(), " and d_gate_up ", d_gate_up.DebugString(),
               " (want one [M, 2F])");
  const int64_t m = gate_up.dim(0), f = gate_up.dim(1) / 2;
  const GroupedGemmOptions dw{.trans_b = Trans::kNo};
  // d_h: the product's output in the two-op path (the fused kernel only
  // reads its shape; a cached block either way).
  const Tensor d_h = ctx.Empty({m, f}, gate_up.dtype());
  CheckForward(ctx, d_y.shape(), d_y.dtype(), b, offsets, d_h, dw, op);
  const ForwardLaunch l =
      PrepareForward(d_y.raw_data(), d_y.dtype(), m, d_y.dim(1), b, offsets, d_h, dw, op);
  if (!l.valid) return;
  const bool fits = l.launch.tensor_cores && d_y.dtype() == DType::kBF16 &&
                    gate_up.dtype() == DType::kBF16 &&
                    AllAligned16({gate_up.raw_data(), d_gate_up.raw_data()});
  if (fits && UseWgmma()) {
    SwiGluOut swiglu;
    swiglu.f = f;
    swiglu.gate_up = static_cast<const bf16*>(gate_up.raw_data());
    swiglu.d_gate_up = static_cast<bf16*>(d_gate_up.raw_data());
    if (RunWgmmaWsSwiGluGrad(ctx, l.p, swiglu, l.launch.grid.y, op)) return;
  }
  cuda::GroupedGemm(ctx, d_y, b, offsets, d_h, dw);
  SwiGluPackedBackward(ctx, gate_up, d_h, d_gate_up);
}

namespace {

// GroupedGemmWeightGrad's checks, Problem and launch for a and b (b of
// `b_shape` at `b_data`).
struct WeightGradLaunch {
  bool valid = false;
  Problem p;
  Launch launch;
};
WeightGradLaunch PrepareWeightGrad(const ExecContext& ctx, const Tensor& a, const void* b_data,
                                   const Shape& b_shape, DType b_dtype, const Tensor& offsets,
                                   const MatrixGroup& c, double beta, const char* op) {
  CheckOnDevice(ctx, a, op, "a");
  CheckGroup(ctx, c, op);
  CheckOffsets(ctx, offsets, c.size(), op);
  SM_CHECK_MSG(a.ndim() == 2 && b_shape.size() == 2 && a.dim(0) == b_shape[0] &&
                   a.dtype() == b_dtype &&
                   (c.size() == 0 || (c.rows == a.dim(1) && c.cols == b_shape[1])),
               op, ": a ", a.DebugString(), "ᵀ x b ", ShapeString(b_shape), " -> group of ",
               c.size(), " [", c.rows, ", ", c.cols, "]");
  WeightGradLaunch l;
  const int64_t n_out = a.dim(1), k_out = b_shape[1];
  if (c.size() == 0 || n_out == 0 || k_out == 0) return l;
  SM_CHECK_MSG(c.size() <= 65535, op, ": ", c.size(), " groups exceed one launch");
  Problem& p = l.p;
  p.a = a.raw_data();
  p.lda = n_out;
  p.b = b_data;
  p.ldb = k_out;
  p.c_table = static_cast<const int64_t*>(c.addresses.raw_data());
  p.ldc = k_out;
  p.offsets = static_cast<const int64_t*>(offsets.raw_data());
  p.groups = static_cast<int>(c.size());
  p.m = n_out;
  p.n = k_out;
  p.beta = static_cast<float>(beta);
  const bool tc = TensorCoresFit(a.dtype(), {n_out, k_out}, {a.raw_data(), b_data}, nullptr);
  const int tile = tc ? kTileM : kSimtTile;
  l.launch = Launch{
      dim3(1, static_cast<unsigned>((n_out + tile - 1) / tile), static_cast<unsigned>(c.size())),
      tc};
  l.valid = true;
  return l;
}

}  // namespace

void GroupedGemmWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                           const Tensor& offsets, const MatrixGroup& c, double beta) {
  const char* op = "GroupedGemmWeightGrad";
  CheckOnDevice(ctx, b, op, "b");
  const WeightGradLaunch l =
      PrepareWeightGrad(ctx, a, b.raw_data(), b.shape(), b.dtype(), offsets, c, beta, op);
  if (!l.valid) return;
  DispatchInOut(a.dtype(), c.dtype, op, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    Run<T, OutT, false, false, true>(ctx, l.p, l.launch, op);
  });
}

void GroupedGemmWeightGradGathered(const ExecContext& ctx, const Tensor& a, const Tensor& x,
                                   const Tensor& rows, int divisor, const Tensor& offsets,
                                   const MatrixGroup& c, double beta) {
  const char* op = "GroupedGemmWeightGradGathered";
  const int64_t m = a.ndim() == 2 ? a.dim(0) : -1;
  CheckGather(ctx, x, rows, divisor, m, op);
  const WeightGradLaunch l =
      PrepareWeightGrad(ctx, a, x.raw_data(), {m, x.dim(1)}, x.dtype(), offsets, c, beta, op);
  if (!l.valid) return;
  bool fused = false;
  if (l.launch.tensor_cores && UseWgmma()) {
    const RowGather gather{static_cast<const int32_t*>(rows.raw_data()), divisor};
    DispatchInOut(a.dtype(), c.dtype, op, [&](auto in, auto out) {
      using T = typename decltype(in)::type;
      using OutT = typename decltype(out)::type;
      if constexpr (std::is_same_v<T, bf16>) {
        fused = RunWgmmaWsGathered<OutT, false, false, true>(ctx, l.p, gather, l.launch.grid.y,
                                                             l.launch.grid.z, op);
      }
    });
  }
  if (fused) return;
  const Tensor b = ctx.Empty({m, x.dim(1)}, x.dtype());
  GatherRows(ctx, x, rows, divisor, b);
  cuda::GroupedGemmWeightGrad(ctx, a, b, offsets, c, beta);
}

}  // namespace scalemoe::cuda
