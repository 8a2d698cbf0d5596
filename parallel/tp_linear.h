// Megatron's tensor-parallel linear maps over one TP (or ETP) communicator,
// with the scale vectors of SCALE_VECTORS.md folded locally into each shard.
//
// ColumnParallelLinear: global W [out, in] split on dim 0 (rank r holds rows
// [r*out/tp, (r+1)*out/tp)).
//   forward:  x [N, in] replicated (sequence parallel: x [N/tp, in], all-gathered
//             along tokens first) -> y [N, out/tp] = u_r ⊙ (W_r (γ ⊙ x))
//   backward: d_x = Σ_r W_eff,rᵀ d_y_r, all-reduced over TP (sequence
//             parallel: reduce-scattered along tokens to [N/tp, in]).
//   γ [in] is replicated: its gradient is the sum over the TP group of each
//   shard's part. FinishBackward performs that all-reduce (one [in] vector per
//   step) before adding into the caller's d_gamma, so after FinishBackward
//   d_gamma holds the full single-rank gradient on every TP rank and the
//   owner (BranchScales) needs no collective. u [out/tp] is split with W's
//   rows: its gradient is local.
//
// RowParallelLinear: global W [out, in] split on dim 1.
//   forward:  x [N, in/tp] (the output of a column-parallel map) ->
//             y = Σ_r u ⊙ (W_r (γ_r ⊙ x_r)), all-reduced to [N, out] (sequence
//             parallel: reduce-scattered along tokens to [N/tp, out]).
//   backward: d_y [N, out] replicated (sequence parallel: [N/tp, out],
//             all-gathered first); d_x [N, in/tp] local, no reduction.
//   γ [in/tp] is split with W's columns (local gradient); u [out] is
//   replicated: FinishBackward all-reduces its gradient over TP.
//
// Both register their weight through ParamRegistry (spec.shape is the global
// shape; the layer sets layout.tp_split_dim), so each shard is the exact slice
// of the single-rank weight. In a world of one (tp.size() == 1) they compute
// exactly the single-rank map. Per step: PrepareStep (the scale vectors'
// values of this step) -> Forward/Backward (one or more micro-batches) ->
// FinishBackward. Backward overwrites d_x and accumulates every parameter
// gradient. Every call is a collective over `tp`: all TP ranks call them in
// the same order. The communicator and registry must outlive the layer.
#pragma once

#include <memory>
#include <string>

#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/tp_comm.h"
#include "parallel/tp_folded_weight.h"

namespace scalemoe {

class ColumnParallelLinear {
 public:
  // Registers `spec` (global [out, in]) split on dim 0 over `tp`. Errors: out
  // not divisible by tp.size(), registry coords not matching `tp`.
  static StatusOr<std::unique_ptr<ColumnParallelLinear>> Create(ParamRegistry& registry,
                                                                ParamSpec spec, Communicator& tp,
                                                                SequenceParallel sp);

  // scales: γ [in] (replicated) and/or u [out/tp] (this rank's slice).
  Status PrepareStep(const ExecContext& ctx, const TpLinearScales& scales = {});
  // x [N, in] (SP: [N/tp, in]); y [N, out/tp] written.
  Status Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  // d_y [N, out/tp]; d_x [N, in] (SP: [N/tp, in]) overwritten.
  Status Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);
  Status FinishBackward(const ExecContext& ctx);

  Param* weight() const { return fold_.weight(); }
  int64_t in_features() const { return weight()->local_shape[1]; }
  int64_t local_out_features() const { return weight()->local_shape[0]; }

 private:
  ColumnParallelLinear(Param* weight, Communicator& tp, SequenceParallel sp)
      : fold_(weight), tp_(&tp), sp_(sp) {}

  FoldedWeight fold_;
  Communicator* tp_;
  SequenceParallel sp_;
  Tensor x_;  // [N, in] forward cache (gathered under SP)
};

class RowParallelLinear {
 public:
  // Registers `spec` (global [out, in]) split on dim 1 over `tp`.
  static StatusOr<std::unique_ptr<RowParallelLinear>> Create(ParamRegistry& registry,
                                                             ParamSpec spec, Communicator& tp,
                                                             SequenceParallel sp);

  // scales: γ [in/tp] (this rank's slice) and/or u [out] (replicated).
  Status PrepareStep(const ExecContext& ctx, const TpLinearScales& scales = {});
  // x [N, in/tp]; y [N, out] (SP: [N/tp, out]) written, reduced over TP.
  Status Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y);
  // d_y [N, out] (SP: [N/tp, out]); d_x [N, in/tp] overwritten.
  Status Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);
  Status FinishBackward(const ExecContext& ctx);

  Param* weight() const { return fold_.weight(); }
  int64_t local_in_features() const { return weight()->local_shape[1]; }
  int64_t out_features() const { return weight()->local_shape[0]; }

 private:
  RowParallelLinear(Param* weight, Communicator& tp, SequenceParallel sp)
      : fold_(weight), tp_(&tp), sp_(sp) {}

  FoldedWeight fold_;
  Communicator* tp_;
  SequenceParallel sp_;
  Tensor x_;  // [N, in/tp] forward cache
};

}  // namespace scalemoe
