// TokenPermuter: local (never communicating) permute/unpermute of the kept
// (token, slot) assignments, Megatron's dispatcher pre/post steps.
//   Plan:      stable sort of the kept assignments by expert; per-expert
//              counts read on the host (the layer's one sync: they size the
//              expert GEMMs). An expert-parallel dispatcher would exchange
//              these counts, then the permuted rows, between Permute and the
//              experts (and back before Unpermute): that is the seam.
//   Permute:   permuted[i] = n[token of row i]       ([N*K, C]; rows past Σ counts zero)
//   Unpermute: out[t] += Σ_kept weight[t, j] · y[row of (t, j)]   (the combine)
#pragma once

#include <vector>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe {

class TokenPermuter {
 public:
  TokenPermuter(int num_experts, int top_k) : num_experts_(num_experts), top_k_(top_k) {}

  void Plan(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept);
  const std::vector<int64_t>& counts() const { return counts_; }  // [E], host
  int64_t rows() const { return perm_slot_.numel(); }              // N*K

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

 private:
  Tensor RowWeights(const ExecContext& ctx, const Tensor& weights) const;  // [N*K]

  int num_experts_;
  int top_k_;
  Tensor perm_slot_;  // [N*K] i32: flat slot t*K+j of each permuted row, -1 past the end
  std::vector<int64_t> counts_;
};

}  // namespace scalemoe
