// The gradient norm on the GPU (core/ops.h): SegmentSumOfSquares over the
// rows of a device segment table, and GradNormControl, which turns the
// all-reduced sum into the step's clip factor, non-finite flag and update
// count, all on the device.
//
// SegmentSumOfSquares is deterministic: each chunk of a row (its extent
// fixed by the table, core/cuda/multi_tensor.cuh) is summed by one block in
// a fixed order into partials[chunk]; one block per row then adds its chunks
// in a fixed order; sums [1] gets the rows' sums one by one in row order, as
// the CPU reference. All in f64; no atomics.
#include <cmath>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"
#include "core/cuda/multi_tensor.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

// partials[chunk] = Σ x² over the chunk (f64). Chunks at or past `capacity`
// (only for overlapping rows, outside the contract) are not written.
template <typename S>
__global__ void SumOfSquaresPartialsKernel(const int64_t* __restrict__ rows,
                                           const int64_t* __restrict__ plan, int64_t count,
                                           const S* __restrict__ x, int64_t capacity,
                                           double* __restrict__ partials) {
  ForEachChunk(plan, count, [&](int64_t s, int64_t chunk, int64_t offset) {
    const int64_t first = rows[2 * s] + offset;
    const int64_t end = rows[2 * s + 1];
    const int64_t last = first + kChunk < end ? first + kChunk : end;
    double acc = 0;
#pragma unroll 4
    for (int64_t i = first + threadIdx.x; i < last; i += blockDim.x) {
      const double v = static_cast<double>(ToAcc(x[i]));
      acc += v * v;
    }
    acc = BlockSum(acc);
    if (threadIdx.x == 0 && chunk < capacity) partials[chunk] = acc;
    __syncthreads();  // BlockSum's scratch is reused by the next chunk
  });
}

// Row s's sum = Σ its chunks' partials (one block per row, fixed order);
// per_row: sums[s] += it, else row_sums[s] = it. NaN for every row when the
// chunks overran the partials (overlapping rows).
__global__ void SumOfSquaresRowsKernel(const int64_t* __restrict__ plan, int64_t count,
                                       const double* __restrict__ partials, int64_t capacity,
                                       bool per_row, double* __restrict__ sums,
                                       double* __restrict__ row_sums) {
  const bool overrun = plan[count] > capacity;
  for (int64_t s = blockIdx.x; s < count; s += gridDim.x) {  // block-uniform
    double acc = 0;
    if (!overrun) {
      for (int64_t c = plan[s] + threadIdx.x; c < plan[s + 1]; c += blockDim.x) acc += partials[c];
    }
    acc = BlockSum(acc);
    if (threadIdx.x == 0) {
      if (overrun) acc = nan("");
      if (per_row) {
        sums[s] += acc;
      } else {
        row_sums[s] = acc;
      }
    }
    __syncthreads();
  }
}

constexpr int kOrderedTile = 1024;

// sums[0] += row_sums[0], += row_sums[1], ... in row order (one block: the
// rows staged in shared memory a tile at a time, added by one thread).
__global__ void OrderedAddKernel(int64_t count, const double* __restrict__ row_sums,
                                 double* __restrict__ sums) {
  __shared__ double tile[kOrderedTile];
  double total = 0;
  if (threadIdx.x == 0) total = sums[0];
  for (int64_t base = 0; base < count; base += kOrderedTile) {
    const int64_t s = base + threadIdx.x;
    if (s < count) tile[threadIdx.x] = row_sums[s];
    __syncthreads();
    if (threadIdx.x == 0) {
      const int64_t n = count - base < kOrderedTile ? count - base : kOrderedTile;
      for (int64_t k = 0; k < n; ++k) total += tile[k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) sums[0] = total;
}

__global__ void GradNormControlKernel(const double* sum_of_squares, double max_norm,
                                      double* grad_norm, double* clip_factor, int32_t* nonfinite,
                                      int64_t* num_updates) {
  const double norm = sqrt(*sum_of_squares);
  const bool finite = isfinite(norm);
  *grad_norm = norm;
  *nonfinite = finite ? 0 : 1;
  *clip_factor = max_norm > 0.0 && finite && norm > max_norm ? max_norm / norm : 1.0;
  if (finite) *num_updates += 1;
}

void CheckScalar(const ExecContext& ctx, const Tensor& t, DType dtype, const char* op,
                 const char* what) {
  CheckOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(t.dtype() == dtype && t.numel() == 1, op, ": ", what, " must be ", DTypeName(dtype),
               " [1], got ", t.DebugString());
}

}  // namespace

// ---------------------------------------------------------------- launchers

void SegmentSumOfSquares(const ExecContext& ctx, const Tensor& x, const Tensor& segments,
                         const Tensor& sums) {
  constexpr const char* kOp = "SegmentSumOfSquares";
  CheckOnDevice(ctx, x, kOp, "x");
  CheckOnDevice(ctx, sums, kOp, "sums");
  const Tensor plan = ChunkPlan(ctx, segments, RowKind::kBeginEnd, x.numel(), 0, kOp);
  const int64_t count = segments.dim(0);
  SM_CHECK_MSG(
      sums.dtype() == DType::kF64 && sums.ndim() == 1 && (sums.dim(0) == count || sums.dim(0) == 1),
      kOp, ": sums must be f64 [", count, "] or [1], got ", sums.DebugString());
  if (count == 0) return;
  const bool per_row = sums.dim(0) == count;
  const int64_t capacity = ChunkBound(x.numel(), count);
  Tensor partials = ctx.Empty({capacity}, DType::kF64);
  Tensor row_sums = per_row ? Tensor() : ctx.Empty({count}, DType::kF64);
  DispatchFloat(x, [&](auto tag) {
    using S = typename decltype(tag)::type;
    SumOfSquaresPartialsKernel<S><<<ChunkBlocks(capacity), kThreads, 0, Stream(ctx)>>>(
        Ptr<const int64_t>(segments), Ptr<const int64_t>(plan), count, Ptr<const S>(x), capacity,
        Ptr<double>(partials));
  });
  SM_CHECK_LAUNCH(ctx, kOp, "SumOfSquaresPartialsKernel");
  SumOfSquaresRowsKernel<<<Blocks(count * kThreads), kThreads, 0, Stream(ctx)>>>(
      Ptr<const int64_t>(plan), count, Ptr<const double>(partials), capacity, per_row,
      Ptr<double>(sums), Ptr<double>(row_sums));
  SM_CHECK_LAUNCH(ctx, kOp, "SumOfSquaresRowsKernel");
  if (!per_row) {
    OrderedAddKernel<<<1, kOrderedTile, 0, Stream(ctx)>>>(count, Ptr<const double>(row_sums),
                                                          Ptr<double>(sums));
    SM_CHECK_LAUNCH(ctx, kOp, "OrderedAddKernel");
  }
}

void GradNormControl(const ExecContext& ctx, const Tensor& sum_of_squares, double max_norm,
                     const Tensor& grad_norm, const ops::StepControl& control) {
  constexpr const char* kOp = "GradNormControl";
  CheckScalar(ctx, sum_of_squares, DType::kF64, kOp, "sum_of_squares");
  CheckScalar(ctx, grad_norm, DType::kF64, kOp, "grad_norm");
  CheckScalar(ctx, control.clip_factor, DType::kF64, kOp, "control.clip_factor");
  CheckScalar(ctx, control.nonfinite, DType::kI32, kOp, "control.nonfinite");
  CheckScalar(ctx, control.num_updates, DType::kI64, kOp, "control.num_updates");
  GradNormControlKernel<<<1, 1, 0, Stream(ctx)>>>(
      Ptr<const double>(sum_of_squares), max_norm, Ptr<double>(grad_norm),
      Ptr<double>(control.clip_factor), Ptr<int32_t>(control.nonfinite),
      Ptr<int64_t>(control.num_updates));
  SM_CHECK_LAUNCH(ctx, kOp, "GradNormControlKernel");
}

}  // namespace scalemoe::cuda
