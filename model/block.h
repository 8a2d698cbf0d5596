// Block: one pre-norm transformer layer on the residual stream x [N, C]:
//   h = x + [post_attn_norm](Attention(n(x)))
//   y = h + [post_ffn_norm](FFN(n(h)))       FFN = dense Mlp or MoeLayer
// n(·) = x / rms(x) is computed once per norm ("layers.<l>.attn_norm",
// "layers.<l>.ffn_norm"); their γ's live with the branches they feed
// (Attention, Mlp, MoeLayer). The optional sandwich norms (model.sandwich_norm)
// are Output-Norm RMSNorms with scale "layers.<l>.post_attn_norm.scale",
// "layers.<l>.post_ffn_norm.scale".
// Gradient contract: Backward overwrites d_x, accumulates parameter grads.
//
// Tensor parallel: x and y are the residual stream's rows on this rank
// (model/tp_region.h); attention and MLP are Megatron's column/row pairs;
// the MoE layer gets this rank's token chunk and its output is gathered back
// into the rows. The sandwich norms' scales see only this rank's rows under
// sequence parallelism (then tp_partial_grad); without it every TP rank
// computes them in full.
#pragma once

#include <memory>

#include "configs/scalemoe.pb.h"
#include "core/forward_cache.h"
#include "model/attention.h"
#include "model/mlp.h"
#include "moe/moe_layer.h"
#include "norm/scaled_rms_norm.h"

namespace scalemoe {

// Whether layer `layer` uses the MoE FFN under `cfg` (moe.num_experts > 0,
// at or after first_dense_layers, every moe_layer_frequency-th layer).
bool IsMoeLayer(const config::RunConfig& cfg, int layer);

class Block {
 public:
  // groups (may be null) reaches the MoE layer (expert and tensor
  // parallelism); tp is the model's region over groups->tp (must outlive the block).
  Block(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
        const ProcessGroups* groups, const TpRegion& tp);

  // Each returns the first failed collective's Status, prefixed with the
  // sublayer ("attention", "moe", ...); the model adds the layer.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  Status Forward(const ExecContext& ctx, const Tensor& x, int64_t batch, int64_t seq,
                 const Tensor& y);
  // loss_grad_scale reaches the MoE layer's own aux/z-loss gradients.
  Status Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                  double loss_grad_scale);
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);

  MoeLayer* moe() const { return moe_.get(); }  // null for a dense layer
  int layer() const { return layer_; }          // global layer index

 private:
  // The MoE sublayer on this rank's token chunk of the rows n / d_out.
  Status MoeForward(const ExecContext& ctx, const Tensor& n, const Tensor& out);
  Status MoeBackward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                     double loss_grad_scale);

  int layer_;
  double eps_;
  const TpRegion& tp_;
  std::unique_ptr<Attention> attention_;
  std::unique_ptr<Mlp> mlp_;       // exactly one of mlp_, moe_
  std::unique_ptr<MoeLayer> moe_;
  std::unique_ptr<ScaledRmsNorm> post_attn_norm_, post_ffn_norm_;  // sandwich, or null
  // Forward cache: normalized inputs and 1/rms of the two pre-norms.
  Tensor n_attn_, rstd_attn_, n_ffn_, rstd_ffn_;
};

}  // namespace scalemoe
