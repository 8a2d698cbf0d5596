// TokenDispatcher: expert-parallel exchange of permuted token rows between
// the EP ranks (Megatron's all-to-all dispatcher, the step between
// TokenPermuter::Permute and GroupedExperts, and its mirror before
// TokenPermuter::Unpermute). It owns the ownership rule
//   EP rank r owns global experts [r*E/EP, (r+1)*E/EP)
// and moves rows, never computes on them:
//   ExchangeCounts: per-expert counts first (AllToAllV of the [E] i64
//            device counts: rank s sends rank p the counts of p's experts),
//            giving the counts matrix c[s][le] (rows source rank s holds for
//            local expert le) on the device.
//   Plan:    given the host copy of those counts (the MoeLayer reads all its
//            counts in one ctx.ToHost between the two steps: they size the
//            row all-to-all and the expert GEMMs), the exchange sizes; the
//            expert<->received reorders are built on the device from the
//            device matrix (ops::SourceToExpertOrder).
//   Dispatch (permuted order -> expert order): the permuted rows are already
//            grouped by global expert, so the rows for rank p are one
//            contiguous block; one AllToAllV of rows, then a local reorder
//            from [source][local expert] blocks to [local expert][source]
//            blocks (what GroupedExperts wants; sources in rank order, so
//            the result is deterministic).
//   Combine (expert order -> permuted order): the exact inverse (reorder,
//            then the mirrored AllToAllV).
// Backward needs no code of its own: the gradient of Dispatch is Combine and
// vice versa (both are row permutations), so the layer calls Dispatch on
// d_y and Combine on d_x with the forward's plan.
// Uneven splits are the normal case: a rank that sends or receives no row,
// or a local expert without rows, gives zero counts, never a skipped
// collective (every rank makes the same calls in the same order).
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

// Global experts [begin, end) owned by EP rank `ep_rank` of `ep_size`.
struct ExpertRange {
  int begin = 0, end = 0;
  int size() const { return end - begin; }
};
ExpertRange OwnedExperts(int num_experts, int ep_size, int ep_rank);

class TokenDispatcher {
 public:
  // `ep` is the expert-parallel group (not owned; outlives the dispatcher).
  TokenDispatcher(int num_experts, Communicator* ep);

  const ExpertRange& owned() const { return owned_; }

  // Rows of the counts matrix `received` of ExchangeCounts: [EP * E_local].
  int64_t received_counts_size() const;
  // counts [E] i64 (this rank's permuted rows per global expert) ->
  // received [EP * E_local] i64 = c[s][le], both on ctx's device.
  Status ExchangeCounts(const ExecContext& ctx, const Tensor& counts, const Tensor& received);
  // counts_host, received_host: the host copies of ExchangeCounts' counts
  // and received (the caller's one host read); received: the device matrix
  // the reorders are built from. Fails on a negative count.
  Status Plan(const ExecContext& ctx, const Tensor& received,
              absl::Span<const int64_t> counts_host, absl::Span<const int64_t> received_host);
  // Rows this rank holds per local expert after Dispatch, summed over sources.
  const std::vector<int64_t>& local_counts() const { return local_counts_; }
  int64_t received_rows() const { return received_rows_; }  // Σ local_counts
  int64_t sent_rows() const { return sent_rows_; }           // Σ counts

  // permuted [M, C] (first sent_rows() rows grouped by global expert) ->
  // expert_rows [received_rows(), C] grouped by local expert.
  Status Dispatch(const ExecContext& ctx, const Tensor& permuted, const Tensor& expert_rows);
  // expert_rows [received_rows(), C] -> permuted [M, C]: the first
  // sent_rows() rows overwritten, the rest zeroed.
  Status Combine(const ExecContext& ctx, const Tensor& expert_rows, const Tensor& permuted);

  // Moves the plan of the last Forward into or out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash) {
    stash.Visit(send_rows_);
    stash.Visit(recv_rows_);
    stash.Visit(local_counts_);
    stash.Visit(sent_rows_);
    stash.Visit(received_rows_);
    stash.Visit(to_expert_order_);
    stash.Visit(to_received_order_);
  }

 private:
  Status CheckRows(const char* what, const Tensor& t, int64_t min_rows) const;

  int num_experts_;
  Communicator* ep_;
  ExpertRange owned_;
  // Plan (host): element counts per peer are rows * C, scaled at call time.
  std::vector<int64_t> send_rows_, recv_rows_;  // [EP] rows to / from each rank
  std::vector<int64_t> local_counts_;           // [E_local]
  int64_t sent_rows_ = 0, received_rows_ = 0;
  // expert-order row i = received-order row to_expert_order_[i]; and back.
  Tensor to_expert_order_, to_received_order_;  // [received_rows] i32
};

}  // namespace scalemoe
