#include "moe/token_dispatcher.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

std::vector<int64_t> Times(const std::vector<int64_t>& rows, int64_t width) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * width;
  return out;
}

}  // namespace

ExpertRange OwnedExperts(int num_experts, int ep_size, int ep_rank) {
  return {ep_rank * num_experts / ep_size, (ep_rank + 1) * num_experts / ep_size};
}

TokenDispatcher::TokenDispatcher(int num_experts, Communicator* ep)
    : num_experts_(num_experts), ep_(ep) {
  SM_CHECK_MSG(ep_ != nullptr && ep_->size() >= 1 && num_experts_ >= ep_->size(),
               "TokenDispatcher: moe.num_experts (", num_experts_,
               ") must be >= the expert-parallel size (",
               ep_ ? ep_->size() : 0, ") so that every EP rank owns an expert; lower ep");
  owned_ = OwnedExperts(num_experts_, ep_->size(), ep_->rank());
}

int64_t TokenDispatcher::received_counts_size() const {
  return static_cast<int64_t>(ep_->size()) * owned_.size();
}

Status TokenDispatcher::ExchangeCounts(const ExecContext& ctx, const Tensor& counts,
                                       const Tensor& received) {
  const int ep_size = ep_->size();
  if (counts.numel() != num_experts_ || counts.dtype() != DType::kI64 ||
      received.numel() != received_counts_size() || received.dtype() != DType::kI64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TokenDispatcher::ExchangeCounts: counts ", counts.DebugString(), " and received ",
        received.DebugString(), " must be i64 [", num_experts_, "] and [",
        received_counts_size(), "] (pass the TokenPermuter's counts)"));
  }
  // Rank p gets, from every rank, the counts of p's experts.
  std::vector<int64_t> send_counts(ep_size), recv_counts(ep_size, owned_.size());
  for (int p = 0; p < ep_size; ++p) send_counts[p] = OwnedExperts(num_experts_, ep_size, p).size();
  return WithContext(ep_->AllToAllV(ctx, counts, send_counts, received, recv_counts),
                     "expert-parallel counts");
}

Status TokenDispatcher::Plan(const ExecContext& ctx, const Tensor& received,
                             absl::Span<const int64_t> counts_host,
                             absl::Span<const int64_t> received_host) {
  const int ep_size = ep_->size(), local = owned_.size();
  if (static_cast<int>(counts_host.size()) != num_experts_ ||
      static_cast<int64_t>(received_host.size()) != received_counts_size() ||
      received.numel() != received_counts_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TokenDispatcher::Plan: got ", counts_host.size(), " expert counts for ", num_experts_,
        " experts and ", received_host.size(), " received counts for ",
        received_counts_size(), " (pass the host copies of ExchangeCounts' tensors)"));
  }
  send_rows_.assign(ep_size, 0);
  sent_rows_ = 0;
  for (int p = 0; p < ep_size; ++p) {
    const ExpertRange r = OwnedExperts(num_experts_, ep_size, p);
    for (int e = r.begin; e < r.end; ++e) send_rows_[p] += counts_host[e];
    sent_rows_ += send_rows_[p];
  }
  // c[s][le] = received[s * local + le]; received order is [s][le], expert order [le][s].
  recv_rows_.assign(ep_size, 0);
  local_counts_.assign(local, 0);
  received_rows_ = 0;
  for (int s = 0; s < ep_size; ++s) {
    for (int le = 0; le < local; ++le) {
      const int64_t rows = received_host[s * local + le];
      if (rows < 0) {
        return absl::InternalError(absl::StrCat("TokenDispatcher::Plan: rank ", s, " of ",
                                                ep_->name(), " sent a negative count ", rows,
                                                " for local expert ", le));
      }
      received_rows_ += rows;
      recv_rows_[s] += rows;
      local_counts_[le] += rows;
    }
  }
  to_expert_order_ = ctx.Empty({received_rows_}, DType::kI32);
  to_received_order_ = ctx.Empty({received_rows_}, DType::kI32);
  ops::SourceToExpertOrder(ctx, received.View({ep_size, local}), /*source_stride=*/0,
                           to_expert_order_, to_received_order_);
  return absl::OkStatus();
}

Status TokenDispatcher::CheckRows(const char* what, const Tensor& t, int64_t min_rows) const {
  if (t.ndim() != 2 || t.dim(0) < min_rows) {
    return absl::InvalidArgumentError(absl::StrCat("TokenDispatcher: ", what, " ",
                                                   t.DebugString(), " needs >= ", min_rows,
                                                   " rows [rows, C] (call Plan first)"));
  }
  return absl::OkStatus();
}

Status TokenDispatcher::Dispatch(const ExecContext& ctx, const Tensor& permuted,
                                 const Tensor& expert_rows) {
  SM_RETURN_IF_ERROR(CheckRows("permuted", permuted, sent_rows_));
  SM_RETURN_IF_ERROR(CheckRows("expert_rows", expert_rows, received_rows_));
  const int64_t width = permuted.dim(1);
  Tensor received = ctx.Empty({received_rows_, width}, permuted.dtype());
  SM_RETURN_IF_ERROR(ep_->AllToAllV(ctx, permuted.Narrow(0, 0, sent_rows_),
                                    Times(send_rows_, width), received, Times(recv_rows_, width)));
  ops::GatherRows(ctx, received, to_expert_order_, 1,
                  expert_rows.Narrow(0, 0, received_rows_));
  return absl::OkStatus();
}

Status TokenDispatcher::Combine(const ExecContext& ctx, const Tensor& expert_rows,
                                const Tensor& permuted) {
  SM_RETURN_IF_ERROR(CheckRows("expert_rows", expert_rows, received_rows_));
  SM_RETURN_IF_ERROR(CheckRows("permuted", permuted, sent_rows_));
  const int64_t width = expert_rows.dim(1);
  Tensor received = ctx.Empty({received_rows_, width}, expert_rows.dtype());
  ops::GatherRows(ctx, expert_rows.Narrow(0, 0, received_rows_), to_received_order_, 1,
                  received);
  ops::Zero(ctx, permuted);
  return ep_->AllToAllV(ctx, received, Times(recv_rows_, width), permuted.Narrow(0, 0, sent_rows_),
                        Times(send_rows_, width));
}

}  // namespace scalemoe
