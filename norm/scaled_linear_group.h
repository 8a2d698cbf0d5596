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
// not just in time) into its own gradient buffer (not shared_weight_grad),
// with the same vectors present, the same shape and dtypes (W in f32 with
// W_eff in f32 or bf16, or W_eff in W's dtype), and each map's dγ a vector
// of its own. A γ shared by the maps (scale_vectors.mode SHARED: one dγ for
// all) would take every group's sum at once, so such maps, like any other
// mix, fold and unfold one by one, in map order. Unfolded maps (no vector
// on this projection) with bf16 operands get their bf16 copies of W in one
// launch the same way.
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
  // Whether this step's GEMM weights are formed (and, folded, unfolded) in
  // one launch for all maps.
  bool together() const { return together_; }

 private:
  // Whether the maps can fold together this step (see above).
  bool FoldsTogether() const;
  // The address tables of this step's tensors (rebuilt only when one moved).
  void UpdateTables(const ExecContext& ctx);

  std::vector<ScaledLinear*> maps_;
  bool together_ = false;
  // One entry per map: W, u, γ, the GEMM's weight (W_eff or W's bf16
  // copy), W's gradient, du, dγ (vectors as [1, n]; an empty group where the
  // maps have no such vector).
  ops::MatrixGroup weights_, rows_, cols_, formed_, grads_, d_rows_, d_cols_;
};

}  // namespace scalemoe
