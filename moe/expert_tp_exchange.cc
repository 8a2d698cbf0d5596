#include "moe/expert_tp_exchange.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/ops.h"

namespace scalemoe {

ExpertTpExchange::ExpertTpExchange(Communicator* etp) : etp_(etp) {
  SM_CHECK_MSG(etp_ != nullptr, "ExpertTpExchange needs the expert tensor-parallel group");
}

Status ExpertTpExchange::Plan(const std::vector<int64_t>& local_counts) {
  const int size = etp_->size();
  const int local = static_cast<int>(local_counts.size());
  Tensor send = Tensor::Empty({local}, DType::kI64);
  Tensor recv = Tensor::Empty({static_cast<int64_t>(size) * local}, DType::kI64);
  std::copy(local_counts.begin(), local_counts.end(), send.data<int64_t>());
  SM_RETURN_IF_ERROR(etp_->AllGatherHost(send, recv));
  num_local_ = local;

  // c[s][le] = recv[s * local + le]; padded row of (s, le, j) = s*max + start[s][le] + j.
  const int64_t* c = recv.data<int64_t>();
  rows_of_.assign(size, 0);
  group_counts_.assign(local, 0);
  for (int s = 0; s < size; ++s) {
    for (int le = 0; le < local; ++le) {
      const int64_t rows = c[s * local + le];
      if (rows < 0) {
        return absl::InternalError(absl::StrCat("ExpertTpExchange::Plan: rank ", s, " of ",
                                                etp_->name(), " sent a negative count ", rows,
                                                " for local expert ", le));
      }
      rows_of_[s] += rows;
      group_counts_[le] += rows;
    }
  }
  own_rows_ = rows_of_[etp_->rank()];
  max_rows_ = *std::max_element(rows_of_.begin(), rows_of_.end());
  group_rows_ = 0;
  for (int64_t r : group_counts_) group_rows_ += r;

  // Block starts: within a source's padded block, and within the group order.
  std::vector<int64_t> source_start(static_cast<size_t>(size) * local);
  std::vector<int64_t> group_start(static_cast<size_t>(size) * local);
  for (int s = 0; s < size; ++s) {
    int64_t at = 0;
    for (int le = 0; le < local; ++le) {
      source_start[s * local + le] = s * max_rows_ + at;
      at += c[s * local + le];
    }
  }
  int64_t at = 0;
  for (int le = 0; le < local; ++le) {
    for (int s = 0; s < size; ++s) {
      group_start[s * local + le] = at;
      at += c[s * local + le];
    }
  }
  to_group_order_ = Tensor::Empty({group_rows_}, DType::kI32);
  to_source_order_ = Tensor::Empty({group_rows_}, DType::kI32);
  int32_t* to_group = to_group_order_.data<int32_t>();
  int32_t* to_source = to_source_order_.data<int32_t>();
  for (int s = 0, j = 0; s < size; ++s) {
    for (int le = 0; le < local; ++le) {
      for (int64_t r = 0; r < c[s * local + le]; ++r, ++j) {
        const int64_t g = group_start[s * local + le] + r;
        to_group[g] = static_cast<int32_t>(source_start[s * local + le] + r);
        to_source[j] = static_cast<int32_t>(g);
      }
    }
  }
  return absl::OkStatus();
}

Status ExpertTpExchange::CheckRows(const char* what, const Tensor& t, int64_t min_rows) const {
  if (num_local_ < 0) {
    return absl::FailedPreconditionError("ExpertTpExchange: call Plan before moving rows");
  }
  if (t.ndim() != 2 || t.dim(0) < min_rows || !t.is_contiguous()) {
    return absl::InvalidArgumentError(absl::StrCat("ExpertTpExchange: ", what, " ",
                                                   t.DebugString(), " needs >= ", min_rows,
                                                   " contiguous rows [rows, C]"));
  }
  return absl::OkStatus();
}

Status ExpertTpExchange::Gather(const ExecContext& ctx, const Tensor& rows, const Tensor& group) {
  SM_RETURN_IF_ERROR(CheckRows("rows", rows, own_rows_));
  SM_RETURN_IF_ERROR(CheckRows("group", group, group_rows_));
  const int64_t width = rows.dim(1);
  // Every rank contributes max_rows_ rows (the padding is never read).
  Tensor send = rows.Narrow(0, 0, own_rows_);
  if (own_rows_ < max_rows_) {
    send = Tensor::Zeros({max_rows_, width}, rows.dtype(), ctx.device());
    ops::Copy(ctx, rows.Narrow(0, 0, own_rows_), send.Narrow(0, 0, own_rows_));
  }
  Tensor padded = Tensor::Empty({etp_->size() * max_rows_, width}, rows.dtype(), ctx.device());
  SM_RETURN_IF_ERROR(etp_->AllGather(ctx, send.View({max_rows_ * width}),
                                     padded.View({etp_->size() * max_rows_ * width})));
  ops::GatherRows(ctx, padded, to_group_order_, 1, group.Narrow(0, 0, group_rows_));
  return absl::OkStatus();
}

Status ExpertTpExchange::ScatterReduce(const ExecContext& ctx, const Tensor& partial,
                                       const Tensor& rows) {
  SM_RETURN_IF_ERROR(CheckRows("partial", partial, group_rows_));
  SM_RETURN_IF_ERROR(CheckRows("rows", rows, own_rows_));
  const int size = etp_->size();
  const int64_t width = partial.dim(1);
  Tensor by_source = Tensor::Empty({group_rows_, width}, partial.dtype(), ctx.device());
  ops::GatherRows(ctx, partial.Narrow(0, 0, group_rows_), to_source_order_, 1, by_source);
  std::vector<int64_t> send_counts(size), recv_counts(size, own_rows_ * width);
  for (int s = 0; s < size; ++s) send_counts[s] = rows_of_[s] * width;
  Tensor received = Tensor::Empty({size * own_rows_, width}, partial.dtype(), ctx.device());
  SM_RETURN_IF_ERROR(etp_->AllToAllV(ctx, by_source.View({group_rows_ * width}), send_counts,
                                     received.View({size * own_rows_ * width}), recv_counts));
  ops::Zero(ctx, rows);
  const Tensor own = rows.Narrow(0, 0, own_rows_);
  for (int p = 0; p < size; ++p) {
    ops::Axpy(ctx, 1.0, received.Narrow(0, p * own_rows_, own_rows_), own);
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
