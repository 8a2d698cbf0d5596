// FoldedLinear: y[T, R] = u ⊙ ((γ ⊙ x) Wᵀ) for one weight W [R, Cin] with an
// optional input-side scale γ [Cin] and output-side scale u [R] (undefined
// tensors = none), per SCALE_VECTORS.md ("Cost").
//
// With fold_into_weights the vectors are folded once per step,
// W_eff = diag(u)·W·diag(γ), the per-token path is one GEMM, dW_eff is
// accumulated over micro-batches and turned into dW, dγ, du in
// FinishBackward. Without it γ and u scale the activations per token and
// their gradients are accumulated in Backward. Both compute the same function.
//
// The layer does not own W, γ or u: W is a registry Param; γ/u and their
// gradient tensors belong to the caller (BranchScales, ScaleVector owners)
// and must stay valid from PrepareStep to FinishBackward. The one
// implementation of the fold: the model's projections (model/scaled_linear.h),
// the router and the experts all run through it. Under TP it is local to this
// rank's shard of W (SCALE_VECTORS.md, "Cost").
#pragma once

#include "core/context.h"
#include "core/params.h"
#include "core/tensor.h"
#include "norm/scaled_linear.h"  // GradMode

namespace scalemoe {


class FoldedLinear {
 public:
  // What Backward needs from one Forward call.
  struct Cache {
    Tensor input;  // [T, Cin] the GEMM input (γ ⊙ x per token, else x itself)
    Tensor raw;    // [T, R] the GEMM output before u (per-token u only)
  };

  FoldedLinear(Param* weight, bool fold_into_weights);

  // Once per step: current vectors and where their gradients accumulate (+=).
  void PrepareStep(const ExecContext& ctx, const Tensor& gamma, const Tensor& d_gamma,
                   const Tensor& u, const Tensor& d_u);
  // y [T, R] overwritten from x [T, Cin].
  void Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y, Cache* cache) const;
  // d_x [T, Cin] overwritten (or added to, kAccumulate); weight (or
  // folded-weight) gradient accumulated.
  void Backward(const ExecContext& ctx, const Tensor& x, const Cache& cache, const Tensor& d_y,
                const Tensor& d_x, GradMode mode = GradMode::kOverwrite) const;
  // Folded path: dW += dW_eff ⊙ u γᵀ, dγ/du += their shares. No-op otherwise.
  void FinishBackward(const ExecContext& ctx);

 private:
  bool folded() const { return fold_ && (gamma_.defined() || u_.defined()); }
  bool per_token_gamma() const { return !fold_ && gamma_.defined(); }
  bool per_token_u() const { return !fold_ && u_.defined(); }

  Param* weight_;
  bool fold_;
  Tensor gamma_, d_gamma_, u_, d_u_;  // this step's vectors (may be undefined)
  Tensor w_eff_;                      // [R, Cin] folded weight (folded() only)
  Tensor d_w_eff_;                    // [R, Cin] its accumulated gradient
};

}  // namespace scalemoe
