// Index building of the MoE layer on the GPU, the contracts of core/ops.h
// and core/cpu/moe_index.cc: InvertRowIndex, TiledRowIndex,
// SourceToExpertOrder, SumSourceCounts and CountOffsets. Integer work only;
// every output element has one writer, so the results are exact and
// deterministic.
//
// What the CPU SM_CHECKs on index values (a slot held by two rows, a count
// that is negative or overflows its stride, R ≠ Σ counts) needs a host read
// here: such inputs are not detected. Out-of-range slots are skipped, and
// rows of SourceToExpertOrder's outputs past Σ counts are written −1.
#include <climits>

#include "core/cuda/cuda_ops.h"
#include "core/cuda/kernel_util.cuh"

namespace scalemoe::cuda {
namespace {

// ---------------------------------------------------------------- kernels

#define SM_GRID_STRIDE(i, n)                                                             \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void FillKernel(int64_t n, int32_t value, int32_t* out) {
  SM_GRID_STRIDE(i, n) { out[i] = value; }
}

__global__ void InvertKernel(int64_t m, int64_t s, const int32_t* row_slot, int32_t* slot_row) {
  SM_GRID_STRIDE(i, m) {
    const int32_t slot = row_slot[i];
    if (slot >= 0 && slot < s) slot_row[slot] = static_cast<int32_t>(i);
  }
}

__global__ void TiledKernel(int64_t n, int copies, int32_t* gather, int32_t* slot_row) {
  SM_GRID_STRIDE(i, n * copies) {
    const int64_t c = i / n, t = i - c * n;
    gather[i] = static_cast<int32_t>(t);
    slot_row[t * copies + c] = static_cast<int32_t>(i);
  }
}

// One thread: the block tables of SourceToExpertOrder, for block b = l·S + s
// (expert-major, the expert order): tables[0][b] = its first expert-order
// row, tables[1][b] = its first source-order row (padded or packed),
// tables[2][b] = its first packed source-order row; tables[0][S·L] = Σ.
__global__ void BlockTablesKernel(int64_t sources, int64_t experts, int64_t stride,
                                  const int64_t* counts, int64_t* tables) {
  const int64_t blocks = sources * experts;
  int64_t* expert_begin = tables;
  int64_t* source_begin = tables + blocks + 1;
  int64_t* packed_begin = source_begin + blocks;
  int64_t total = 0;
  for (int64_t s = 0; s < sources; ++s) {
    const int64_t start = total;
    int64_t at = 0;
    for (int64_t l = 0; l < experts; ++l) {
      const int64_t b = l * sources + s;
      source_begin[b] = (stride > 0 ? s * stride : start) + at;
      packed_begin[b] = start + at;
      at += counts[s * experts + l];
    }
    total += at;
  }
  int64_t g = 0;
  for (int64_t l = 0; l < experts; ++l) {
    for (int64_t s = 0; s < sources; ++s) {
      expert_begin[l * sources + s] = g;
      g += counts[s * experts + l];
    }
  }
  expert_begin[blocks] = g;
}

// Expert-order row g lies in the last block whose first row is <= g.
__global__ void ReorderKernel(int64_t rows, int64_t blocks, const int64_t* tables,
                              int32_t* to_expert, int32_t* to_source) {
  const int64_t* expert_begin = tables;
  const int64_t* source_begin = tables + blocks + 1;
  const int64_t* packed_begin = source_begin + blocks;
  const int64_t total = expert_begin[blocks];
  SM_GRID_STRIDE(g, rows) {
    if (g >= total) {
      to_expert[g] = -1;
      continue;
    }
    int64_t lo = 0, hi = blocks;  // first block with begin > g, in [0, blocks]
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (expert_begin[mid] <= g) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const int64_t b = lo - 1;
    const int64_t r = g - expert_begin[b];
    to_expert[g] = static_cast<int32_t>(source_begin[b] + r);
    const int64_t j = packed_begin[b] + r;
    if (j < rows) to_source[j] = static_cast<int32_t>(g);
  }
}

// Packed source-order rows no block holds (only when R > Σ counts).
__global__ void SourceTailKernel(int64_t rows, int64_t blocks, const int64_t* tables,
                                 int32_t* to_source) {
  const int64_t total = tables[blocks];
  SM_GRID_STRIDE(j, rows) {
    if (j >= total) to_source[j] = -1;
  }
}

__global__ void SumSourcesKernel(int64_t sources, int64_t experts, const int64_t* counts,
                                 int64_t* totals) {
  SM_GRID_STRIDE(l, experts) {
    int64_t sum = 0;
    for (int64_t s = 0; s < sources; ++s) sum += counts[s * experts + l];
    totals[l] = sum;
  }
}

// One thread: E is the number of local experts (tens to hundreds), and the
// sequential sum is the CPU's order (exact anyway: integers).
__global__ void CountOffsetsKernel(int64_t experts, const int64_t* counts, int64_t* offsets) {
  int64_t at = 0;
  offsets[0] = 0;
  for (int64_t e = 0; e < experts; ++e) {
    at += counts[e];
    offsets[e + 1] = at;
  }
}

#undef SM_GRID_STRIDE

// ---------------------------------------------------------------- launchers

void CheckIndexTensor(const ExecContext& ctx, const char* op, const char* what, const Tensor& t,
                      DType dtype) {
  SM_CHECK_MSG(t.defined(), op, ": ", what, " is undefined");
  CheckOnDevice(ctx, t, op, what);
  SM_CHECK_MSG(t.dtype() == dtype, op, ": ", what, " must be ", DTypeName(dtype), ", got ",
               t.DebugString());
}

}  // namespace

void InvertRowIndex(const ExecContext& ctx, const Tensor& row_slot, const Tensor& slot_row) {
  CheckIndexTensor(ctx, "InvertRowIndex", "row_slot", row_slot, DType::kI32);
  CheckIndexTensor(ctx, "InvertRowIndex", "slot_row", slot_row, DType::kI32);
  const int64_t m = row_slot.numel(), s = slot_row.numel();
  SM_CHECK_MSG(m <= INT32_MAX, "InvertRowIndex: ", m, " rows do not fit i32 indices");
  if (s > 0) {
    FillKernel<<<Blocks(s), kThreads, 0, Stream(ctx)>>>(s, -1, Ptr<int32_t>(slot_row));
    SM_CHECK_LAUNCH(ctx, "InvertRowIndex", "FillKernel");
  }
  if (m > 0 && s > 0) {
    InvertKernel<<<Blocks(m), kThreads, 0, Stream(ctx)>>>(m, s, Ptr<const int32_t>(row_slot),
                                                          Ptr<int32_t>(slot_row));
    SM_CHECK_LAUNCH(ctx, "InvertRowIndex", "InvertKernel");
  }
}

void TiledRowIndex(const ExecContext& ctx, int copies, const Tensor& gather,
                   const Tensor& slot_row) {
  CheckIndexTensor(ctx, "TiledRowIndex", "gather", gather, DType::kI32);
  CheckIndexTensor(ctx, "TiledRowIndex", "slot_row", slot_row, DType::kI32);
  SM_CHECK_MSG(copies >= 1 && gather.numel() % copies == 0 && slot_row.numel() == gather.numel() &&
                   gather.numel() <= INT32_MAX,
               "TiledRowIndex: ", copies, " copies, gather ", gather.DebugString(), " slot_row ",
               slot_row.DebugString());
  const int64_t n = gather.numel() / copies;
  if (n == 0) return;
  TiledKernel<<<Blocks(n * copies), kThreads, 0, Stream(ctx)>>>(n, copies, Ptr<int32_t>(gather),
                                                                Ptr<int32_t>(slot_row));
  SM_CHECK_LAUNCH(ctx, "TiledRowIndex", "TiledKernel");
}

void SourceToExpertOrder(const ExecContext& ctx, const Tensor& counts, int64_t source_stride,
                         const Tensor& to_expert_order, const Tensor& to_source_order) {
  const char* op = "SourceToExpertOrder";
  CheckIndexTensor(ctx, op, "counts", counts, DType::kI64);
  CheckIndexTensor(ctx, op, "to_expert_order", to_expert_order, DType::kI32);
  CheckIndexTensor(ctx, op, "to_source_order", to_source_order, DType::kI32);
  SM_CHECK_MSG(counts.ndim() == 2 && source_stride >= 0, op, ": counts must be [S, L], got ",
               counts.DebugString(), " (source_stride ", source_stride, ")");
  const int64_t sources = counts.dim(0), experts = counts.dim(1);
  const int64_t rows = to_expert_order.numel();
  SM_CHECK_MSG(to_source_order.numel() == rows && rows <= INT32_MAX &&
                   (source_stride == 0 || sources * source_stride <= INT32_MAX),
               op, ": to_expert_order ", to_expert_order.DebugString(), " and to_source_order ",
               to_source_order.DebugString(), " (source_stride ", source_stride, ")");
  if (rows == 0) return;
  const int64_t blocks = sources * experts;
  Tensor tables = ctx.Empty({3 * blocks + 1}, DType::kI64);
  BlockTablesKernel<<<1, 1, 0, Stream(ctx)>>>(sources, experts, source_stride,
                                              Ptr<const int64_t>(counts), Ptr<int64_t>(tables));
  SM_CHECK_LAUNCH(ctx, op, "BlockTablesKernel");
  SourceTailKernel<<<Blocks(rows), kThreads, 0, Stream(ctx)>>>(
      rows, blocks, Ptr<const int64_t>(tables), Ptr<int32_t>(to_source_order));
  SM_CHECK_LAUNCH(ctx, op, "SourceTailKernel");
  ReorderKernel<<<Blocks(rows), kThreads, 0, Stream(ctx)>>>(
      rows, blocks, Ptr<const int64_t>(tables), Ptr<int32_t>(to_expert_order),
      Ptr<int32_t>(to_source_order));
  SM_CHECK_LAUNCH(ctx, op, "ReorderKernel");
}

void SumSourceCounts(const ExecContext& ctx, const Tensor& counts, const Tensor& totals) {
  CheckIndexTensor(ctx, "SumSourceCounts", "counts", counts, DType::kI64);
  CheckIndexTensor(ctx, "SumSourceCounts", "totals", totals, DType::kI64);
  SM_CHECK_MSG(counts.ndim() == 2 && totals.numel() == counts.dim(1), "SumSourceCounts: counts ",
               counts.DebugString(), " totals ", totals.DebugString());
  const int64_t sources = counts.dim(0), experts = counts.dim(1);
  if (experts == 0) return;
  SumSourcesKernel<<<Blocks(experts), kThreads, 0, Stream(ctx)>>>(
      sources, experts, Ptr<const int64_t>(counts), Ptr<int64_t>(totals));
  SM_CHECK_LAUNCH(ctx, "SumSourceCounts", "SumSourcesKernel");
}

void CountOffsets(const ExecContext& ctx, const Tensor& counts, const Tensor& offsets) {
  CheckIndexTensor(ctx, "CountOffsets", "counts", counts, DType::kI64);
  CheckIndexTensor(ctx, "CountOffsets", "offsets", offsets, DType::kI64);
  SM_CHECK_MSG(counts.ndim() == 1 && offsets.numel() == counts.numel() + 1, "CountOffsets: counts ",
               counts.DebugString(), " offsets ", offsets.DebugString(), " (want [E] and [E + 1])");
  CountOffsetsKernel<<<1, 1, 0, Stream(ctx)>>>(counts.numel(), Ptr<const int64_t>(counts),
                                               Ptr<int64_t>(offsets));
  SM_CHECK_LAUNCH(ctx, "CountOffsets", "CountOffsetsKernel");
}

}  // namespace scalemoe::cuda
