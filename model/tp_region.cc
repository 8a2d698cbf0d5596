#include "model/tp_region.h"

#include "core/status.h"
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

StatusOr<Tensor> TpRegion::ToFull(const Tensor& rows) const {
  if (!sp_) return rows;
  Tensor full = Tensor::Empty({rows.dim(0) * size_, rows.dim(1)}, rows.dtype(), rows.device());
  SM_RETURN_IF_ERROR(GatherTokens(*tp_, rows, full));
  return full;
}

Status TpRegion::ReduceToRows(const Tensor& full, const Tensor& rows) const {
  if (sp_) return ReduceScatterTokens(*tp_, full, rows);
  if (rows.raw_data() != full.raw_data()) Tensor(rows).CopyFrom(full);
  return tp_ != nullptr ? tp_->AllReduce(rows) : absl::OkStatus();
}

Tensor TpRegion::ToChunk(const Tensor& rows) const {
  if (sp_ || tp_ == nullptr) return rows;
  SM_CHECK_MSG(rows.dim(0) % size_ == 0, "the MoE layer splits ", rows.dim(0),
               " tokens over ", size_, " tensor-parallel ranks: make micro_batch_size * "
               "seq_length a multiple of parallel.tp");
  const int64_t chunk = rows.dim(0) / size_;
  return rows.Narrow(0, rank_ * chunk, chunk);
}

Status TpRegion::ChunkToRows(const Tensor& chunk, const Tensor& rows) const {
  if (sp_ || tp_ == nullptr) {
    if (rows.raw_data() != chunk.raw_data()) Tensor(rows).CopyFrom(chunk);
    return absl::OkStatus();
  }
  Tensor contiguous = chunk.is_contiguous() ? chunk : chunk.Clone();
  return GatherTokens(*tp_, contiguous, rows);
}

}  // namespace scalemoe
