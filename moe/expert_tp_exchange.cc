#include "moe/expert_tp_exchange.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/ops.h"

namespace scalemoe {

ExpertTpExchange::ExpertTpExchange(Communicator* etp) : etp_(etp) {
  SM_CHECK_MSG(etp_ != nullptr, "ExpertTpExchange needs the expert tensor-parallel group");
}

Status ExpertTpExchange::ExchangeCounts(const ExecContext& ctx, const Tensor& local_counts,
                                        const Tensor& group_counts) {
  if (local_counts.dtype() != DType::kI64 || group_counts.dtype() != DType::kI64 ||
      group_counts.numel() != etp_->size() * local_counts.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ExpertTpExchange::ExchangeCounts: local_counts ", local_counts.DebugString(),
        " and group_counts ", group_counts.DebugString(), " must be i64 [E_local] and [",
        etp_->size(), " * E_local]"));
  }
  return WithContext(etp_->AllGather(ctx, local_counts, group_counts),
                     "expert tensor-parallel counts");
}

Status ExpertTpExchange::Plan(const ExecContext& ctx, const Tensor& group_counts,
                              absl::Span<const int64_t> group_counts_host) {
  const int size = etp_->size();
  const int local = static_cast<int>(group_counts_host.size()) / size;
  if (static_cast<int64_t>(group_counts_host.size()) != static_cast<int64_t>(size) * local ||
      group_counts.numel() != static_cast<int64_t>(group_counts_host.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ExpertTpExchange::Plan: ", group_counts_host.size(), " host counts and ",
        group_counts.DebugString(), " for ", size, " ranks (pass ExchangeCounts' output)"));
  }
  num_local_ = local;

  // c[s][le] = group_counts[s * local + le]; the padded all-gathered row of
  // (s, le, j) is s*max + (rows of s before le) + j.
  const absl::Span<const int64_t> c = group_counts_host;
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
  to_group_order_ = ctx.Empty({group_rows_}, DType::kI32);
  to_source_order_ = ctx.Empty({group_rows_}, DType::kI32);
  ops::SourceToExpertOrder(ctx, group_counts.View({size, local}), /*source_stride=*/max_rows_,
                           to_group_order_, to_source_order_);
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
    send = ctx.Empty({max_rows_, width}, rows.dtype());
    ops::Copy(ctx, rows.Narrow(0, 0, own_rows_), send.Narrow(0, 0, own_rows_));
  }
  Tensor padded = ctx.Empty({etp_->size() * max_rows_, width}, rows.dtype());
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
  Tensor by_source = ctx.Empty({group_rows_, width}, partial.dtype());
  ops::GatherRows(ctx, partial.Narrow(0, 0, group_rows_), to_source_order_, 1, by_source);
  std::vector<int64_t> send_counts(size), recv_counts(size, own_rows_ * width);
  for (int s = 0; s < size; ++s) send_counts[s] = rows_of_[s] * width;
  Tensor received = ctx.Empty({size * own_rows_, width}, partial.dtype());
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
