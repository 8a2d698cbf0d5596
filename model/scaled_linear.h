// ScaledLinear: y[N, out] = u ⊙ (W (γ ⊙ x[N, in])) for a weight W [out, in],
// an Input-Norm γ [in] owned by a BranchScales (optional) and an output-side
// u [out] (DUAL placement, role kOutputNormScale, optional, owned here).
//
// The map itself is a FoldedLinear (norm/folded_linear.h: W_eff = diag(u) W
// diag(γ) formed once per step, or γ and u applied per token with
// scale_vectors.fold_into_weights = false); this class adds where γ and u
// come from and who owns u.
// Gradient contract: Backward overwrites or adds into d_x (GradMode) and
// accumulates parameter grads; dγ lands in the BranchScales' d_gamma, which
// the owner pushes to the parameters after FinishBackward.
//
// Tensor parallel: the map is local to this rank's shard of W (its
// local_shape); the caller moves activations (model/tp_region.h). W split on
// dim 0 (column-parallel) splits u with its rows; W split on dim 1
// (row-parallel) leaves u [out] whole, its gradient a per-rank share
// (tp_partial_grad). A replicated γ in front of a column-parallel map gets a
// share too: its owner marks it.
#pragma once

#include <memory>
#include <string>

#include "core/context.h"
#include "core/params.h"
#include "core/tensor.h"
#include "norm/branch_scales.h"
#include "norm/folded_linear.h"
#include "norm/scale_options.h"
#include "norm/scale_vector.h"

namespace scalemoe {

class ScaledLinear {
 public:
  // `scales`/`branch`: where γ comes from (nullptr: no γ); `u_name` non-empty
  // registers the output-side vector u [out] under that name.
  // `tp` (may be null): the TP group W is split over, for a split u.
  ScaledLinear(ParamRegistry& registry, Param* weight, const BranchScales* scales, int branch,
               const std::string& u_name, Reparam reparam, ScalePath path,
               Communicator* tp = nullptr);

  // After the BranchScales' Forward (γ of this step) and before Forward.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  void Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  void Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x, GradMode mode);
  // Before the owning BranchScales' Backward.
  Status FinishBackward(const ExecContext& ctx);

  Param* weight() const { return weight_; }
  int64_t out_features() const { return weight_->local_shape[0]; }
  int64_t in_features() const { return weight_->local_shape[1]; }

 private:
  const Tensor& Gamma() const;
  const Tensor& DGamma() const;

  Param* weight_;
  const BranchScales* scales_;
  int branch_;
  FoldedLinear linear_;
  std::unique_ptr<ScaleVector> u_;  // null when there is no output side
  Tensor undefined_;
  Tensor u_value_;  // [out] effective u of this step
  Tensor d_u_;      // [out] accumulated over the step
  Tensor x_;        // forward cache: the input
  FoldedLinear::Cache cache_;
};

}  // namespace scalemoe
