// Helpers of the CUDA multi-tensor ops (core/ops.h, "optimizer ops"):
// segment tables on the device, cut into chunks without a host read.
//
// A table's rows are only on the device, so the host cannot size them. A
// one-block plan kernel (ChunkPlan) turns the table into plan i64 [S + 1]:
// plan[s] = the first chunk of row s, each row ceil(len / kChunk) chunks in
// row order, plan[S] = all chunks. The op's kernel then gives each block a
// contiguous run of chunks (ForEachChunk): one launch covers every row,
// however uneven, and a chunk's index and extent depend on the table alone,
// so per-chunk sums are the same bits from run to run whatever the grid.
//
// The plan kernel also checks every row against the buffers' sizes (the CPU
// reference's SM_CHECKs): a row outside them is a broken invariant and traps
// the kernel, which the context reports at its next status check.
#pragma once

#include <cstdint>

#include "core/cuda/kernel_util.cuh"
#include "core/ops.h"

namespace scalemoe::cuda {

// Elements per chunk: 16 per thread of a kThreads block.
constexpr int64_t kChunk = 4096;
// Most blocks an op's chunk kernel launches (a few waves on any current GPU).
constexpr int64_t kMaxChunkBlocks = 2048;

// How a row names its range(s).
enum class RowKind : uint8_t {
  kBeginEnd,        // [S, 2] (begin, end) of a buffer of n elements
  kBeginEndPacked,  // [S, 3] (begin, end, packed_begin): also [packed_begin, +len) of n2
  kSrcDstCount,     // [S, 3] (src_begin, dst_begin, count) of n (src) and n2 (dst)
};

// Checks segments (i64 [S, width] on ctx's device, width from kind) and
// returns its chunk plan, i64 [S + 1] on ctx (queued on ctx's stream; not
// written when S == 0, where callers launch nothing).
Tensor ChunkPlan(const ExecContext& ctx, const Tensor& segments, RowKind kind, int64_t n,
                 int64_t n2, const char* op);

// Most chunks a table of `rows` disjoint rows in n elements can have.
inline int64_t ChunkBound(int64_t n, int64_t rows) { return (n + kChunk - 1) / kChunk + rows; }

// Blocks for a chunk kernel over at most `bound` chunks.
inline unsigned ChunkBlocks(int64_t bound) {
  return static_cast<unsigned>(std::clamp<int64_t>(bound, 1, kMaxChunkBlocks));
}

// Calls body(row, chunk, offset) for this block's chunks in order: chunk is
// the global chunk index, offset the chunk's first element within the row
// (its elements are [offset, min(offset + kChunk, len))). Block-uniform:
// every thread of the block makes the same calls, so body may synchronise.
template <typename F>
__device__ __forceinline__ void ForEachChunk(const int64_t* plan, int64_t rows, F&& body) {
  const int64_t total = plan[rows];
  const int64_t per = (total + gridDim.x - 1) / gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per;
  const int64_t last = first + per < total ? first + per : total;
  if (first >= last) return;
  // The row holding chunk `first`: the last s with plan[s] <= first (empty
  // rows share their successor's plan value and are passed over).
  int64_t lo = 0, hi = rows;  // plan[lo] <= first < plan[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (plan[mid] <= first) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  int64_t s = lo;
  for (int64_t c = first; c < last; ++c) {
    while (plan[s + 1] <= c) ++s;
    body(s, c, (c - plan[s]) * kChunk);
  }
}

// ---------------------------------------------------------------- step control

// Host-side checks of the control tensors an op reads.
inline void CheckControl(const ExecContext& ctx, const ops::StepControl& c, const char* op,
                         bool needs_clip, bool needs_count) {
  CheckOnDevice(ctx, c.nonfinite, op, "control.nonfinite");
  SM_CHECK_MSG(c.nonfinite.dtype() == DType::kI32 && c.nonfinite.numel() == 1, op,
               ": control.nonfinite must be i32 [1], got ", c.nonfinite.DebugString());
  if (needs_clip) {
    CheckOnDevice(ctx, c.clip_factor, op, "control.clip_factor");
    SM_CHECK_MSG(c.clip_factor.dtype() == DType::kF64 && c.clip_factor.numel() == 1, op,
                 ": control.clip_factor must be f64 [1], got ", c.clip_factor.DebugString());
  }
  if (needs_count) {
    CheckOnDevice(ctx, c.num_updates, op, "control.num_updates");
    SM_CHECK_MSG(c.num_updates.dtype() == DType::kI64 && c.num_updates.numel() == 1, op,
                 ": control.num_updates must be i64 [1], got ", c.num_updates.DebugString());
  }
}

// Per-row coefficients f64 [rows, width] on ctx's device.
inline void CheckCoefficients(const ExecContext& ctx, const Tensor& c, int64_t rows, int width,
                              const char* op) {
  CheckOnDevice(ctx, c, op, "coefficients");
  SM_CHECK_MSG(c.dtype() == DType::kF64 && c.ndim() == 2 && c.dim(0) == rows && c.dim(1) == width,
               op, ": coefficients must be f64 [", rows, ", ", width, "], got ", c.DebugString());
}

// The kernel element type of a gradient-like tensor: T itself or bf16.
template <typename T, typename F>
void DispatchSameOrBf16(const Tensor& t, const char* op, const char* what, F&& f) {
  if (t.dtype() == DTypeOf<T>::value) {
    f(Tag<T>{});
  } else if (t.dtype() == DType::kBF16) {
    f(Tag<__nv_bfloat16>{});
  } else {
    SM_CHECK_MSG(false, op, ": ", what, " must be ", DTypeName(DTypeOf<T>::value), " or bf16, got ",
                 t.DebugString());
  }
}

}  // namespace scalemoe::cuda
