// The chunk plan of a device segment table (core/cuda/multi_tensor.cuh):
// one block scans the rows' chunk counts in row order, checking each row.
#include "core/cuda/multi_tensor.cuh"

namespace scalemoe::cuda {
namespace {

constexpr int kPlanThreads = 1024;

// Elements of row r, after checking its ranges (a trap if outside).
__device__ __forceinline__ int64_t RowLength(const int64_t* r, RowKind kind, int64_t n,
                                             int64_t n2) {
  int64_t len = 0;
  bool ok = false;
  switch (kind) {
    case RowKind::kBeginEnd:
      len = r[1] - r[0];
      ok = 0 <= r[0] && r[0] <= r[1] && r[1] <= n;
      break;
    case RowKind::kBeginEndPacked:
      len = r[1] - r[0];
      ok = 0 <= r[0] && r[0] <= r[1] && r[1] <= n && 0 <= r[2] && r[2] <= n2 - len;
      break;
    case RowKind::kSrcDstCount:
      len = r[2];
      ok = 0 <= len && 0 <= r[0] && r[0] <= n - len && 0 <= r[1] && r[1] <= n2 - len;
      break;
  }
  if (!ok) __trap();  // a row outside its buffers: the table is broken
  return len;
}

// plan[s] = Σ_{s' < s} ceil(len_s' / kChunk), plan[rows] = the total. One
// block of kPlanThreads: rows in tiles of kPlanThreads, each tile an
// exclusive scan (warp shuffles, then the warps' totals) plus the carry.
__global__ void ChunkPlanKernel(const int64_t* table, int64_t rows, int width, RowKind kind,
                                int64_t n, int64_t n2, int64_t* plan) {
  __shared__ int64_t warp_totals[kPlanThreads / 32];
  __shared__ int64_t carry;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t tile = 0; tile < rows; tile += kPlanThreads) {
    const int64_t s = tile + threadIdx.x;
    const int64_t chunks =
        s < rows ? (RowLength(table + s * width, kind, n, n2) + kChunk - 1) / kChunk : 0;
    int64_t inclusive = chunks;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int64_t up = __shfl_up_sync(0xffffffffu, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
      int64_t total = warp_totals[lane];
#pragma unroll
      for (int offset = 1; offset < 32; offset *= 2) {
        const int64_t up = __shfl_up_sync(0xffffffffu, total, offset);
        if (lane >= offset) total += up;
      }
      warp_totals[lane] = total;  // inclusive over warps
    }
    __syncthreads();
    const int64_t before = carry + (warp > 0 ? warp_totals[warp - 1] : 0);
    if (s < rows) plan[s] = before + inclusive - chunks;
    __syncthreads();  // every thread has read carry and warp_totals
    if (threadIdx.x == 0) carry += warp_totals[kPlanThreads / 32 - 1];
    __syncthreads();
  }
  if (threadIdx.x == 0) plan[rows] = carry;
}

}  // namespace

Tensor ChunkPlan(const ExecContext& ctx, const Tensor& segments, RowKind kind, int64_t n,
                 int64_t n2, const char* op) {
  const int width = kind == RowKind::kBeginEnd ? 2 : 3;
  CheckOnDevice(ctx, segments, op, "segments");
  SM_CHECK_MSG(segments.dtype() == DType::kI64 && segments.ndim() == 2 && segments.dim(1) == width,
               op, ": segments must be i64 [S, ", width, "], got ", segments.DebugString());
  const int64_t rows = segments.dim(0);
  Tensor plan = ctx.Empty({rows + 1}, DType::kI64);
  if (rows == 0) return plan;  // callers launch nothing for an empty table
  ChunkPlanKernel<<<1, kPlanThreads, 0, Stream(ctx)>>>(Ptr<const int64_t>(segments), rows, width,
                                                       kind, n, n2, Ptr<int64_t>(plan));
  SM_CHECK_LAUNCH(ctx, op, "ChunkPlanKernel");
  return plan;
}

}  // namespace scalemoe::cuda
