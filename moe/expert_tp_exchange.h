// ExpertTpExchange: expert-tensor-parallel exchange of expert-ordered token
// rows between the ranks of one ETP group (Megatron's all-gather before and
// reduce-scatter after the experts when expert_tensor_parallel_size > 1).
// Every rank of the group holds a slice, on F, of each of the same local
// experts (moe/grouped_experts.h), so every rank must run every row any of
// them holds for those experts, and a row's output is the SUM of the ranks'
// partial outputs. The ranks may hold different tokens (ETP ranks are TP
// ranks of one micro-batch or data-parallel ranks of different ones): the
// exchange only assumes the rows arrive grouped by local expert.
//   ExchangeCounts: per-local-expert counts all-gathered on the device
//                  ([E_local] i64 from every rank), giving c[s][le] (rows
//                  ETP rank s holds for local expert le).
//   Plan:          given the host copy of c (the MoeLayer reads all its
//                  counts in one ctx.ToHost), all later sizes; the reorders
//                  are built on the device from the device c
//                  (ops::SourceToExpertOrder).
//   Gather (owner rows -> group rows): one AllGather of each rank's rows,
//                  padded to the largest rank's row count, then a local
//                  reorder to [local expert][source] blocks, sources in ETP
//                  rank order: deterministic, and what GroupedExperts wants
//                  (group_counts()[le] = Σ_s c[s][le]).
//   ScatterReduce (group partial rows -> owner rows): the adjoint. A local
//                  reorder to [source][local expert] blocks, one AllToAllV
//                  returning each source its rows' partials from every rank,
//                  and the owner's sum of those ETP partials in rank order (a
//                  reduce-scatter of variable-sized blocks).
// Backward needs no code of its own: the gradient of Gather is ScatterReduce
// and vice versa, so the layer calls Gather on d_y and ScatterReduce on d_x
// with the forward's plan. A rank without rows, or a local expert without
// rows, gives zero counts, never a skipped collective (every rank of the
// group makes the same calls in the same order). Only ScatterReduce's sum
// computes; nothing here reads the host (Plan is given the counts' copy).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/context.h"
#include "core/forward_cache.h"
#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace scalemoe {

class ExpertTpExchange {
 public:
  // `etp` is the expert tensor-parallel group (not owned; outlives this).
  explicit ExpertTpExchange(Communicator* etp);

  // local_counts [E_local] i64 (this rank's rows per local expert) ->
  // group_counts [ETP * E_local] i64 = c[s][le], both on ctx's device.
  Status ExchangeCounts(const ExecContext& ctx, const Tensor& local_counts,
                        const Tensor& group_counts);
  // group_counts: ExchangeCounts' output on the device (the reorders are
  // built from it); group_counts_host: its host copy (the caller's one host
  // read). Fails on a negative count.
  Status Plan(const ExecContext& ctx, const Tensor& group_counts,
              absl::Span<const int64_t> group_counts_host);
  // Rows of the whole group per local expert, after Gather.
  const std::vector<int64_t>& group_counts() const { return group_counts_; }
  int64_t group_rows() const { return group_rows_; }  // Σ group_counts
  int64_t own_rows() const { return own_rows_; }      // Σ local_counts of this rank

  // rows [M, C] (first own_rows() grouped by local expert) -> group
  // [group_rows(), C] grouped by local expert, sources in ETP rank order.
  Status Gather(const ExecContext& ctx, const Tensor& rows, const Tensor& group);
  // partial [group_rows(), C] (this rank's partial result for every group
  // row) -> rows [M, C]: the first own_rows() rows overwritten with the sum
  // over the ETP ranks of their partials for this rank's rows, the rest zeroed.
  Status ScatterReduce(const ExecContext& ctx, const Tensor& partial, const Tensor& rows);

  // Moves the plan of the last Forward into or out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash) {
    stash.Visit(num_local_, /*empty=*/-1);
    stash.Visit(rows_of_);
    stash.Visit(group_counts_);
    stash.Visit(own_rows_);
    stash.Visit(max_rows_);
    stash.Visit(group_rows_);
    stash.Visit(to_group_order_);
    stash.Visit(to_source_order_);
  }

 private:
  Status CheckRows(const char* what, const Tensor& t, int64_t min_rows) const;

  Communicator* etp_;
  int num_local_ = -1;                      // E_local of the plan
  std::vector<int64_t> rows_of_;            // [ETP] rows each rank owns
  std::vector<int64_t> group_counts_;       // [E_local]
  int64_t own_rows_ = 0, max_rows_ = 0, group_rows_ = 0;
  // group-order row i = padded all-gathered row to_group_order_[i];
  // source-order row j = group-order row to_source_order_[j].
  Tensor to_group_order_, to_source_order_;  // [group_rows] i32
};

}  // namespace scalemoe
