// ScaledLinearGroup: the once-per-step fold and unfold of several
// ScaledLinear maps (a MoE layer's local experts of one projection; an
// attention's q, k, v, o; a dense MLP's gate, up, down) with one launch per
// run of same-shaped maps — ops::ScaleRowsColsGroup and
// ScaleRowsColsBackwardGroup over the run — instead of one launch per map.
// ScaledLinear keeps the semantics (norm/scaled_linear.h): PrepareStep and
// FinishBackward here give exactly what every map's own PrepareStep and
// FinishBackward in map order would (the same bits); each map still
// computes its u and pushes du into u's parameters.
//
// Runs: the maps split, in their order, into runs of consecutive maps that
// fold together: each forms W_eff once per step (folded, not just in time)
// with the same shape and dtypes (W in f32 with W_eff in f32 or bf16, or
// W_eff in W's dtype). A map without the u or γ that others of its run have
// reads ones there (exact: the same bits) and sums into a scratch vector.
// Unfolded maps (no vector on the projection) with bf16 operands get their
// bf16 copies of W in one launch the same way. A lone map is a run of one
// (a bf16 W_eff then needs no f32 temporary and copy). A run unfolds
// together when its maps also keep dW_eff in W's gradient (not
// shared_weight_grad) and their du's and dγ's are each map's own or, for
// dγ, one shared by every map of the run (scale_vectors.mode SHARED, the
// baseline): the op adds the maps' sums to it in map order, as the maps one
// by one would. Any other run goes one by one, as do maps not formed once
// per step (per token, just in time). Runs are consecutive so the order of
// every sum stays the maps' order.
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
  // Whether this step's GEMM weights of all maps are formed, and the folded
  // gradients of all maps unfolded, in one launch.
  bool forms_together() const;
  bool unfolds_together() const;
  // The launches this step's forming and unfolding take (a run is one; a
  // map on its own one if it forms a weight or unfolds).
  int form_launches() const;
  int unfold_launches() const;

 private:
  // Maps [begin, end) that form together this step, and whether they also
  // unfold together; their address tables (rebuilt only when one moved):
  // W, u, γ, the GEMM's weight (W_eff or W's bf16 copy), W's gradient, du,
  // dγ (vectors as [1, n]; an empty group where the maps have no such
  // vector).
  struct Run {
    size_t begin = 0, end = 0;
    bool unfolds = false;
    ops::MatrixGroup weights, rows, cols, formed, grads, d_rows, d_cols;
    // [1, n]: ones for the maps without u or γ, and per map scratch for the
    // sums they do not need (kept: the tables hold their addresses).
    Tensor ones_rows, ones_cols;
    std::vector<Tensor> d_u_scratch, d_gamma_scratch;
  };
  // Whether `m` forms its weight in a group at all this step, and whether
  // it can form in one launch with `first` (see above; after PrepareBuffers).
  static bool Formable(const ScaledLinear& m);
  static bool FormsWith(const ScaledLinear& first, const ScaledLinear& m);
  // This step's runs (kept, with their tables, when they did not change).
  void UpdateRuns();
  bool UnfoldsTogether(const Run& run) const;
  void UpdateTables(const ExecContext& ctx, Run& run) const;

  std::vector<ScaledLinear*> maps_;
  std::vector<Run> runs_;  // in map order; maps outside them go one by one
};

}  // namespace scalemoe
