// ScaledLinearGroup: the once-per-step fold and unfold of several
// ScaledLinear maps of one shape (a MoE layer's local experts, one
// projection) in one launch each — ops::ScaleRowsColsGroup and
// ScaleRowsColsBackwardGroup over all of them — instead of one launch per
// map. ScaledLinear keeps the semantics (norm/scaled_linear.h): PrepareStep
// and FinishBackward here give exactly what every map's own PrepareStep and
// FinishBackward would (the same bits); each map still computes its u and
// pushes du into u's parameters.
//
// The maps fold together when every one forms W_eff once per step (folded,
// not just in time) with the same vectors present, the same shape and
// dtypes (W in f32 with W_eff in f32 or bf16, or W_eff in W's dtype).
// Unfolded maps (no vector on this projection) with bf16 operands get their
// bf16 copies of W in one launch the same way. They unfold together when
// they also keep dW_eff in W's gradient (not shared_weight_grad) and each
// map's dγ is a vector of its own: a γ shared by the maps
// (scale_vectors.mode SHARED, the baseline: one dγ for all) would take every
// map's sum at once, so such maps unfold one by one, in map order. Any other
// mix forms and unfolds one by one.
//
// The maps are not owned and must outlive the group. One group per set of
// maps: PrepareStep once per step (after the γ's BranchScales' Forward),
// FinishBackward once after the last Backward (before the BranchScales'
// Backward), as for the maps themselves.
#pragma once

#include <vector>

#include "core/ops.h"
#include "norm/scaled_linear.h"

namespace scalemoe {

class ScaledLinearGroup {
 public:
  explicit ScaledLinearGroup(std::vector<ScaledLinear*> maps);

  // Every map's PrepareStep.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // Every map's FinishBackward.
  Status FinishBackward(const ExecContext& ctx);
  // Whether this step's GEMM weights are formed, and the folded gradients
  // unfolded, in one launch for all maps.
  bool forms_together() const { return forms_together_; }
  bool unfolds_together() const { return unfolds_together_; }

 private:
  // Whether the maps can form their weights, and unfold, together this step
  // (see above; after PrepareBuffers).
  bool FormsTogether() const;
  bool UnfoldsTogether() const;
  // The address tables of this step's tensors (rebuilt only when one moved).
  void UpdateTables(const ExecContext& ctx);

  std::vector<ScaledLinear*> maps_;
  bool forms_together_ = false, unfolds_together_ = false;
  // One entry per map: W, u, γ, the GEMM's weight (W_eff or W's bf16
  // copy), W's gradient, du, dγ (vectors as [1, n]; an empty group where the
  // maps have no such vector).
  ops::MatrixGroup weights_, rows_, cols_, formed_, grads_, d_rows_, d_cols_;
};

}  // namespace scalemoe
