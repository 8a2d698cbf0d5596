// Index building of the MoE layer on the CPU, from counts and indices that
// live in tensors (on CUDA each op is one kernel over the same inputs):
// InvertRowIndex (the per-token view of a permutation), TiledRowIndex (the
// shared experts' rows), SourceToExpertOrder (the expert-parallel and
// expert-tensor-parallel exchanges' block reorders), SumSourceCounts and
// CountOffsets (the grouped GEMMs' row offsets).
#include <climits>
#include <vector>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void CheckIndexTensor(const char* op, const char* what, const Tensor& t, DType dtype) {
  SM_CHECK_MSG(t.defined() && t.device() == Device::kCPU && t.dtype() == dtype &&
                   t.is_contiguous(),
               op, ": ", what, " must be a contiguous CPU ", DTypeName(dtype), " tensor, got ",
               t.defined() ? t.DebugString() : std::string("an undefined tensor"));
}

}  // namespace

void InvertRowIndex(const ExecContext& ctx, const Tensor& row_slot, const Tensor& slot_row) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "InvertRowIndex: CUDA path not in this build");
  CheckIndexTensor("InvertRowIndex", "row_slot", row_slot, DType::kI32);
  CheckIndexTensor("InvertRowIndex", "slot_row", slot_row, DType::kI32);
  const int64_t m = row_slot.numel(), s = slot_row.numel();
  SM_CHECK_MSG(m <= INT32_MAX, "InvertRowIndex: ", m, " rows do not fit i32 indices");
  const int32_t* in = row_slot.data<int32_t>();
  int32_t* out = slot_row.data<int32_t>();
  for (int64_t i = 0; i < s; ++i) out[i] = -1;
  for (int64_t i = 0; i < m; ++i) {
    const int32_t slot = in[i];
    if (slot < 0) continue;
    SM_CHECK_MSG(slot < s && out[slot] == -1, "InvertRowIndex: slot ", slot, " of row ", i,
                 " is out of [0, ", s, ") or held by two rows");
    out[slot] = static_cast<int32_t>(i);
  }
}

void TiledRowIndex(const ExecContext& ctx, int copies, const Tensor& gather,
                   const Tensor& slot_row) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "TiledRowIndex: CUDA path not in this build");
  CheckIndexTensor("TiledRowIndex", "gather", gather, DType::kI32);
  CheckIndexTensor("TiledRowIndex", "slot_row", slot_row, DType::kI32);
  SM_CHECK_MSG(copies >= 1 && gather.numel() % copies == 0 &&
                   slot_row.numel() == gather.numel() && gather.numel() <= INT32_MAX,
               "TiledRowIndex: ", copies, " copies, gather ", gather.DebugString(), " slot_row ",
               slot_row.DebugString());
  const int64_t n = gather.numel() / copies;
  int32_t* g = gather.data<int32_t>();
  int32_t* sr = slot_row.data<int32_t>();
  for (int64_t c = 0; c < copies; ++c) {
    for (int64_t t = 0; t < n; ++t) {
      g[c * n + t] = static_cast<int32_t>(t);
      sr[t * copies + c] = static_cast<int32_t>(c * n + t);
    }
  }
}

void SourceToExpertOrder(const ExecContext& ctx, const Tensor& counts, int64_t source_stride,
                         const Tensor& to_expert_order, const Tensor& to_source_order) {
  const char* op = "SourceToExpertOrder";
  SM_CHECK_MSG(ctx.device() == Device::kCPU, op, ": CUDA path not in this build");
  CheckIndexTensor(op, "counts", counts, DType::kI64);
  CheckIndexTensor(op, "to_expert_order", to_expert_order, DType::kI32);
  CheckIndexTensor(op, "to_source_order", to_source_order, DType::kI32);
  SM_CHECK_MSG(counts.ndim() == 2 && source_stride >= 0, op, ": counts must be [S, L], got ",
               counts.DebugString(), " (source_stride ", source_stride, ")");
  const int64_t sources = counts.dim(0), experts = counts.dim(1);
  const int64_t* c = counts.data<int64_t>();
  // Where each (source, expert) block starts in the source order (padded or
  // packed) and in the packed source order.
  std::vector<int64_t> padded(sources * experts), packed(sources * experts);
  int64_t total = 0;
  for (int64_t s = 0; s < sources; ++s) {
    const int64_t source_begin = total;
    int64_t at = 0;
    for (int64_t l = 0; l < experts; ++l) {
      const int64_t rows = c[s * experts + l];
      SM_CHECK_MSG(rows >= 0, op, ": negative count ", rows, " of source ", s, ", expert ", l);
      padded[s * experts + l] = (source_stride > 0 ? s * source_stride : source_begin) + at;
      packed[s * experts + l] = source_begin + at;
      at += rows;
    }
    SM_CHECK_MSG(source_stride == 0 || at <= source_stride, op, ": source ", s, " has ", at,
                 " rows, more than its stride ", source_stride);
    total += at;
  }
  SM_CHECK_MSG(to_expert_order.numel() == total && to_source_order.numel() == total &&
                   total <= INT32_MAX && (source_stride == 0 || sources * source_stride <= INT32_MAX),
               op, ": ", total, " rows for to_expert_order ", to_expert_order.DebugString(),
               " and to_source_order ", to_source_order.DebugString());
  int32_t* to_expert = to_expert_order.data<int32_t>();
  int32_t* to_source = to_source_order.data<int32_t>();
  int64_t g = 0;
  for (int64_t l = 0; l < experts; ++l) {
    for (int64_t s = 0; s < sources; ++s) {
      const int64_t b = s * experts + l;
      for (int64_t r = 0; r < c[b]; ++r, ++g) {
        to_expert[g] = static_cast<int32_t>(padded[b] + r);
        to_source[packed[b] + r] = static_cast<int32_t>(g);
      }
    }
  }
}

void SumSourceCounts(const ExecContext& ctx, const Tensor& counts, const Tensor& totals) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "SumSourceCounts: CUDA path not in this build");
  CheckIndexTensor("SumSourceCounts", "counts", counts, DType::kI64);
  CheckIndexTensor("SumSourceCounts", "totals", totals, DType::kI64);
  SM_CHECK_MSG(counts.ndim() == 2 && totals.numel() == counts.dim(1),
               "SumSourceCounts: counts ", counts.DebugString(), " totals ",
               totals.DebugString());
  const int64_t sources = counts.dim(0), experts = counts.dim(1);
  const int64_t* c = counts.data<int64_t>();
  int64_t* out = totals.data<int64_t>();
  for (int64_t l = 0; l < experts; ++l) {
    int64_t sum = 0;
    for (int64_t s = 0; s < sources; ++s) sum += c[s * experts + l];
    out[l] = sum;
  }
}

void CountOffsets(const ExecContext& ctx, const Tensor& counts, const Tensor& offsets) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "CountOffsets: CUDA path not in this build");
  CheckIndexTensor("CountOffsets", "counts", counts, DType::kI64);
  CheckIndexTensor("CountOffsets", "offsets", offsets, DType::kI64);
  SM_CHECK_MSG(counts.ndim() == 1 && offsets.numel() == counts.numel() + 1, "CountOffsets: counts ",
               counts.DebugString(), " offsets ", offsets.DebugString(), " (want [E] and [E + 1])");
  const int64_t* c = counts.data<int64_t>();
  int64_t* out = offsets.data<int64_t>();
  out[0] = 0;
  for (int64_t e = 0; e < counts.numel(); ++e) out[e + 1] = out[e] + c[e];
}

}  // namespace scalemoe::cpu
