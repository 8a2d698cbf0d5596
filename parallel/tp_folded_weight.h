// FoldedWeight: the local half of a tensor-parallel linear map, with no
// communication. It owns nothing but caches: for this rank's weight shard
// W [out_l, in_l] and the step's scale vectors (SCALE_VECTORS.md, "Cost")
//   W_eff = diag(u) · W · diag(γ)       (γ [in_l] input side, u [out_l] output side)
// is formed once per step (Prepare); the layer's GEMMs read effective() and
// accumulate into grad_target(); Finish() turns the step's dW_eff into
//   dW += dW_eff ⊙ u γᵀ,  dγ_j += Σ_i dW_eff[i,j] W[i,j] u_i,
//   du_i += Σ_j dW_eff[i,j] W[i,j] γ_j.
// Under TP this fold is local to each shard: a scale vector replicated over
// TP (γ of a column-parallel map, u of a row-parallel one) gets only this
// shard's part of its gradient here; the TP layer sums it over the group.
// With neither γ nor u, W is used directly and grads go straight to W.grad.
#pragma once

#include <string>

#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

// The step's scale vectors of one TP linear map, owned by the caller (a
// BranchScales / ScaleVector computes the values; the d_ tensors are its
// accumulators, +=). Undefined value: that side has no vector.
struct TpLinearScales {
  Tensor gamma;    // input side [in_l]
  Tensor d_gamma;  // [in_l], accumulated
  Tensor u;        // output side [out_l]
  Tensor d_u;      // [out_l], accumulated
};

class FoldedWeight {
 public:
  explicit FoldedWeight(Param* weight) : weight_(weight) {}

  // Validates shapes against the weight shard, forms W_eff, zeroes dW_eff.
  Status Prepare(const ExecContext& ctx, const TpLinearScales& scales, const std::string& layer);
  const Tensor& effective() const { return folded() ? w_eff_ : weight_->value; }
  const Tensor& grad_target() const { return folded() ? d_w_eff_ : weight_->grad; }
  // dW_eff -> weight grad, and the scale-vector grads into d_gamma / d_u
  // (either may be undefined to skip it). Accumulates.
  void Finish(const ExecContext& ctx, const Tensor& d_gamma, const Tensor& d_u);

  const TpLinearScales& scales() const { return scales_; }
  Param* weight() const { return weight_; }

 private:
  bool folded() const { return scales_.gamma.defined() || scales_.u.defined(); }

  Param* weight_;
  TpLinearScales scales_;
  Tensor w_eff_;    // [out_l, in_l]
  Tensor d_w_eff_;  // [out_l, in_l], accumulated over the step
};

}  // namespace scalemoe
