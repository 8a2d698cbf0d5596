#include "model/tp_region.h"

#include "core/ops.h"
#include "core/status.h"
#include "norm/scaled_linear.h"
#include "parallel/tp_comm.h"

namespace scalemoe {

TpRegion::TpRegion(Communicator* tp, bool sequence_parallel)
    : tp_(tp != nullptr && tp->size() > 1 ? tp : nullptr),
      sp_(sequence_parallel && tp_ != nullptr) {
  if (tp_ != nullptr) {
    size_ = tp_->size();
    rank_ = tp_->rank();
  }
}

StatusOr<Tensor> TpRegion::ToFull(const ExecContext& ctx, const Tensor& rows) const {
  if (!sp_) return rows;
  Tensor full = ctx.Empty({rows.dim(0) * size_, rows.dim(1)}, rows.dtype());
  SM_RETURN_IF_ERROR(GatherTokens(ctx, *tp_, rows, full));
  return full;
}

Status TpRegion::ReduceToRows(const ExecContext& ctx, const Tensor& full,
                              const Tensor& rows) const {
  if (tp_ == nullptr) {
    if (!rows.SharesDataWith(full)) ops::Copy(ctx, full, rows);
    return absl::OkStatus();
  }
  // The partial sums add in f32 (or f64): bf16 ones are converted first
  // (the communicators do not reduce bf16), and rows of another dtype take
  // the rounded sum.
  const Tensor partial = InDType(ctx, full, StatDType(full.dtype()));
  const Tensor sum =
      rows.dtype() == partial.dtype() ? rows : ctx.Empty(rows.shape(), partial.dtype());
  if (sp_) {
    SM_RETURN_IF_ERROR(ReduceScatterTokens(ctx, *tp_, partial, sum));
  } else {
    if (!sum.SharesDataWith(partial)) ops::Copy(ctx, partial, sum);
    SM_RETURN_IF_ERROR(tp_->AllReduce(ctx, sum));
  }
  if (!rows.SharesDataWith(sum)) ops::Copy(ctx, sum, rows);
  return absl::OkStatus();
}

Tensor TpRegion::PartialFor(const ExecContext& ctx, const Tensor& rows, int64_t tokens,
                            DType sum_dtype) const {
  if (tp_ == nullptr || (!sp_ && rows.dtype() == sum_dtype)) return rows;
  return ctx.Empty({tokens, rows.dim(1)}, sum_dtype);
}

Tensor TpRegion::ToChunk(const Tensor& rows) const {
  if (sp_ || tp_ == nullptr) return rows;
  SM_CHECK_MSG(rows.dim(0) % size_ == 0, "the MoE layer splits ", rows.dim(0),
               " tokens over ", size_, " tensor-parallel ranks: make micro_batch_size * "
               "seq_length a multiple of parallel.tp");
  const int64_t chunk = rows.dim(0) / size_;
  return rows.Narrow(0, rank_ * chunk, chunk);
}

Status TpRegion::ChunkToRows(const ExecContext& ctx, const Tensor& chunk,
                             const Tensor& rows) const {
  if (sp_ || tp_ == nullptr) {
    if (!rows.SharesDataWith(chunk)) ops::Copy(ctx, chunk, rows);
    return absl::OkStatus();
  }
  SM_CHECK_MSG(chunk.is_contiguous(), "ChunkToRows of a strided chunk ", chunk.DebugString());
  return GatherTokens(ctx, *tp_, chunk, rows);
}

}  // namespace scalemoe
