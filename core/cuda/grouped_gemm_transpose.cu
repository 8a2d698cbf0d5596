// K-major, group-padded copies of row-stacked bf16 operands
// (core/cuda/grouped_gemm_transpose.h): the padded group starts by one
// block's prefix sum, then a shared-memory tile transpose per operand.
// Bits are moved, never converted: the copies are exact.
#include <cstdint>

#include "core/cuda/grouped_gemm_transpose.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

constexpr int kStartsThreads = 1024;

__device__ __forceinline__ int64_t PaddedCount(const int64_t* offsets, int g) {
  const int64_t count = offsets[g + 1] - offsets[g];
  return count > 0 ? (count + kGroupColumnAlign - 1) / kGroupColumnAlign * kGroupColumnAlign : 0;
}

// One block: thread t sums the padded counts of its run of groups, a
// Hillis-Steele scan over the threads gives each run's start, and each
// thread then walks its run again writing the starts (integers: exact).
__global__ void __launch_bounds__(kStartsThreads)
    PaddedGroupStartsKernel(const int64_t* offsets, int groups, int64_t ld, int64_t* starts) {
  __shared__ int64_t sums[kStartsThreads];
  const int t = threadIdx.x;
  const int per = (groups + kStartsThreads - 1) / kStartsThreads;
  const int g0 = min(groups, t * per), g1 = min(groups, g0 + per);
  int64_t local = 0;
  for (int g = g0; g < g1; ++g) local += PaddedCount(offsets, g);
  sums[t] = local;
  __syncthreads();
  for (int d = 1; d < kStartsThreads; d *= 2) {
    const int64_t add = t >= d ? sums[t - d] : 0;
    __syncthreads();
    sums[t] += add;
    __syncthreads();
  }
  int64_t start = sums[t] - local;
  for (int g = g0; g < g1; ++g) {
    starts[g] = min(start, ld);
    start += PaddedCount(offsets, g);
  }
  if (t == kStartsThreads - 1) starts[groups] = min(sums[t], ld);
}

// A block moves 64 columns (one group's, kGroupColumnAlign) x 64 features
// through a [feature][column] tile of raw bf16 bits. Rows are padded to 66
// elements: the reads' 2-byte stores (a warp: 8 rows x 4 chunks of 8
// features) and the writes' 4-byte loads (a warp: 4 features x 8 chunks of
// 8 columns) each touch 32 distinct banks. Global accesses are 16 bytes:
// a warp reads 64 contiguous bytes of 8 source rows and writes 4 whole
// 128-byte rows of dst.
constexpr int kTrTile = kGroupColumnAlign, kTrThreads = 256, kTrLd = kTrTile + 2;
static_assert(kTrTile * 8 == 2 * kTrThreads, "two 16-byte chunks a thread each way");

__global__ void __launch_bounds__(kTrThreads)
    TransposeGroupRowsKernel(const __nv_bfloat16* src, int64_t features, const int64_t* offsets,
                             const int64_t* starts, int groups, __nv_bfloat16* dst, int64_t ld) {
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTrTile;
  if (c0 >= starts[groups]) return;  // past every group (the width is a bound)
  // The group whose columns hold c0: starts[lo] <= c0 < starts[lo + 1]
  // (empty groups have starts[g] == starts[g + 1] and are passed over).
  int lo = 0, hi = groups;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (starts[mid] <= c0) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t first = offsets[lo] + (c0 - starts[lo]);  // source row of column c0
  const int64_t rows = offsets[lo + 1] - first;           // <= 0: all padding
  const int64_t f0 = static_cast<int64_t>(blockIdx.y) * kTrTile;
  __shared__ __align__(16) uint16_t tile[kTrTile][kTrLd];
  const uint16_t* const src_bits = reinterpret_cast<const uint16_t*>(src);
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int id = threadIdx.x + it * kTrThreads;
    const int j = (id / 4) % kTrTile, fc = it * 4 + id % 4;
    const int64_t f = f0 + fc * 8;
    uint4 v = make_uint4(0, 0, 0, 0);  // padding columns and features past the end
    if (j < rows && f < features) {
      v = *reinterpret_cast<const uint4*>(src_bits + (first + j) * features + f);
    }
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      tile[fc * 8 + i][j] = static_cast<uint16_t>(words[i / 2] >> (16 * (i % 2)));
    }
  }
  __syncthreads();
  uint16_t* const dst_bits = reinterpret_cast<uint16_t*>(dst);
#pragma unroll
  for (int it = 0; it < 2; ++it) {
    const int id = threadIdx.x + it * kTrThreads;
    const int jc = id % 8, fl = id / 8;
    const int64_t f = f0 + fl;
    if (f >= features) continue;
    const uint32_t* const w = reinterpret_cast<const uint32_t*>(&tile[fl][jc * 8]);
    *reinterpret_cast<uint4*>(dst_bits + f * ld + c0 + jc * 8) = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

}  // namespace

int64_t PaddedGroupColumns(int64_t rows, int64_t groups) {
  const int64_t cols = rows + groups * (kGroupColumnAlign - 1);
  return (cols + kGroupColumnAlign - 1) / kGroupColumnAlign * kGroupColumnAlign;
}

Tensor PaddedGroupStarts(const ExecContext& ctx, const Tensor& offsets, int groups, int64_t ld) {
  Tensor starts = ctx.Empty({groups + 1}, DType::kI64);
  PaddedGroupStartsKernel<<<1, kStartsThreads, 0, Stream(ctx)>>>(
      static_cast<const int64_t*>(offsets.raw_data()), groups, ld,
      static_cast<int64_t*>(starts.raw_data()));
  SM_CHECK_LAUNCH(ctx, "GroupedGemmWeightGrad", "PaddedGroupStartsKernel");
  return starts;
}

void TransposeGroupRows(const ExecContext& ctx, const Tensor& src, const Tensor& offsets,
                        const Tensor& starts, int groups, const Tensor& dst) {
  SM_CHECK_MSG(src.ndim() == 2 && dst.ndim() == 2 && src.dim(1) == dst.dim(0) &&
                   src.dtype() == DType::kBF16 && dst.dtype() == DType::kBF16 &&
                   src.dim(1) % 8 == 0 && dst.dim(1) % kGroupColumnAlign == 0 &&
                   Aligned16(src.raw_data()) && Aligned16(dst.raw_data()),
               "TransposeGroupRows: ", src.DebugString(), " -> ", dst.DebugString());
  const int64_t features = src.dim(1), ld = dst.dim(1);
  const dim3 grid(static_cast<unsigned>(ld / kTrTile),
                  static_cast<unsigned>((features + kTrTile - 1) / kTrTile));
  if (grid.x == 0 || grid.y == 0) return;
  TransposeGroupRowsKernel<<<grid, kTrThreads, 0, Stream(ctx)>>>(
      static_cast<const __nv_bfloat16*>(src.raw_data()), features,
      static_cast<const int64_t*>(offsets.raw_data()),
      static_cast<const int64_t*>(starts.raw_data()), groups,
      static_cast<__nv_bfloat16*>(dst.raw_data()), ld);
  SM_CHECK_LAUNCH(ctx, "GroupedGemmWeightGrad", "TransposeGroupRowsKernel");
}

}  // namespace scalemoe::cuda
