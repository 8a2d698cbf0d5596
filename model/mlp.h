// Mlp: the dense SwiGLU FFN of one block, fed by the pre-FFN normalization
// n = x / rms(x) (computed by the block):
//   out = W_down(silu(W_gate(γ_gate ⊙ n)) ⊙ W_up(γ_up ⊙ n))
// W_gate, W_up [F, C], W_down [C, F] ("layers.<l>.mlp.w_gate" ...). The γ's
// ("layers.<l>.ffn_norm.scale" shared, or "layers.<l>.mlp.gamma_gate"/
// "gamma_up" under PER_BRANCH with hg_ffn) are owned here through
// BranchScales; DUAL adds "layers.<l>.mlp.u_gate"/"u_up"/"u_down" per
// dual_projections.
// Gradient contract: Backward overwrites d_n, accumulates parameter grads.
//
// Tensor parallel: W_gate, W_up column-parallel (F split), W_down
// row-parallel; the γ's are replicated with a per-rank share of their
// gradient, u_gate/u_up split with F, u_down whole (tp_partial_grad). n and
// out are the residual stream's rows (model/tp_region.h).
#pragma once

#include <memory>

#include "configs/scalemoe.pb.h"
#include "core/forward_cache.h"
#include "model/tp_region.h"
#include "norm/branch_scales.h"
#include "norm/scaled_linear.h"
#include "norm/scaled_linear_group.h"

namespace scalemoe {

class Mlp {
 public:
  // tp must outlive the layer.
  Mlp(ParamRegistry& registry, const config::RunConfig& cfg, int layer, const TpRegion& tp);

  // Each returns the first failed collective's Status (TP groups).
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  Status Forward(const ExecContext& ctx, const Tensor& n, const Tensor& out);  // [N, C]
  Status Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n);
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

 private:
  // The dtype of the F-wide intermediates (gate, up, h and their
  // gradients): bf16 under bf16 operands, where both projections can write
  // it (ScaledLinear::output_dtype), else the activations'.
  DType InnerDType(DType activations) const;

  const TpRegion& tp_;
  DType dtype_ = DType::kF32;             // the master weights' (PrepareStep)
  std::unique_ptr<BranchScales> scales_;  // branches gate, up
  std::unique_ptr<ScaledLinear> gate_, up_, down_;
  // Their fold and unfold, gate and up in one launch.
  std::unique_ptr<ScaledLinearGroup> projections_;
  Tensor gate_out_, up_out_;  // [N, F] forward cache
};

}  // namespace scalemoe
