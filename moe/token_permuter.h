// TokenPermuter: local (never communicating) permute/unpermute of the kept
// (token, slot) assignments, Megatron's dispatcher pre/post steps.
//   Plan:      stable sort of the kept assignments by expert into perm_slot
//              (the slot of each permuted row) and its inverse slot_row (the
//              row of each slot), and the per-expert counts, all on the
//              device (ops::SortByExpert, ops::InvertRowIndex). The layer
//              reads the counts on the host (its one sync: they size the
//              expert GEMMs and, under expert parallelism, the all-to-all).
//   Permute:   permuted[i] = n[token of row i]       ([N*K, C]; rows past Σ counts zero)
//   Unpermute: out[t] += Σ_kept weight[t, j] · y[row of (t, j)]   (the combine,
//              a per-token sum over the token's K slots: deterministic,
//              ops::CombineSlots)
#pragma once

#include <cstdint>

#include "core/context.h"
#include "core/forward_cache.h"
#include "core/tensor.h"

namespace scalemoe {

class TokenPermuter {
 public:
  TokenPermuter(int num_experts, int top_k) : num_experts_(num_experts), top_k_(top_k) {}

  // expert_ids, kept [N, K] i32; counts [E] i64 (overwritten: kept
  // assignments per expert).
  void Plan(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept,
            const Tensor& counts);
  int64_t rows() const { return perm_slot_.numel(); }  // N*K
  // [N*K] i32: the flat slot t*K+j of each permuted row (-1 past the kept
  // ones): Permute's row i is n[perm_slot[i] / K].
  const Tensor& perm_slot() const { return perm_slot_; }

  void Permute(const ExecContext& ctx, const Tensor& n, const Tensor& permuted) const;
  // out [N, C] accumulated (+=) from y [N*K, C] and weights [N, K].
  void Unpermute(const ExecContext& ctx, const Tensor& y, const Tensor& weights,
                 const Tensor& out) const;
  // d_y overwritten; d_weights [N, K] overwritten (zero for dropped slots).
  void UnpermuteBackward(const ExecContext& ctx, const Tensor& d_out, const Tensor& y,
                         const Tensor& weights, const Tensor& d_y,
                         const Tensor& d_weights) const;
  // d_n accumulated (+=) from d_permuted.
  void PermuteBackward(const ExecContext& ctx, const Tensor& d_permuted,
                       const Tensor& d_n) const;

  // Moves the plan of the last Forward into or out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash) {
    stash.Visit(perm_slot_);
    stash.Visit(slot_row_);
  }

 private:
  int num_experts_;
  int top_k_;
  Tensor perm_slot_;  // [N*K] i32: flat slot t*K+j of each permuted row, -1 past the end
  Tensor slot_row_;   // [N, K] i32: permuted row of each slot, -1 where dropped
};

}  // namespace scalemoe
