// Router: Megatron TopKRouter vocabulary for one MoE layer.
//   logits [N, E] = (γ_router ⊙ n) W_routerᵀ      (compute dtype of the layer)
//   scores [N, E] = softmax(logits) or sigmoid(logits)
//   expert_ids [N, K] = top-k of scores + expert_bias (bias selects only;
//                       ties to the lower expert index), or the ids a test
//                       forced (ForceSelection)
//   weights [N, K] = scores at expert_ids, renormalised to sum 1 if normalize_topk
//   kept [N, K]    = capacity mask (capacity_factor > 0): per expert the
//                    highest-scoring ceil(cf·N·K/E) assignments survive (ties:
//                    earlier token). Dropped assignments contribute nothing and
//                    the surviving weights are NOT renormalised (a token that
//                    lost a slot gets less output, as in GShard/Switch).
// Losses (coefficient-weighted): aux = coeff·E·Σ_e f_e P_e with f_e the
// fraction of the N·K top-k assignments on e BEFORE capacity drops (constant)
// and P_e = mean_t scores[t, e] (sigmoid scores used as they are); z-loss =
// coeff·mean_t logsumexp(logits_t)².
//
// Tensor parallel (a `token_group` of size TP > 1: the ranks that split one
// micro-batch's N_total = N·TP rows, this rank holding N): routing and
// capacity stay per rank (capacity = ceil(cf·N·K/E) of the LOCAL rows); the
// losses are the whole micro-batch's. f_e comes from the top-k counts summed
// over the group (one all-reduce of [E] f64), and each rank computes its
// additive share of both losses with N_total as the denominator
// (ops::LoadBalancingLossShare, ops::ZLossShare); Backward adds the gradient
// of that share only, so the shares' gradients sum to the single-rank one.
// aux_loss()/z_loss() hold the whole value (the shares summed over the
// group: a second, [2]-element all-reduce), identical on every rank.
//
// Device-resident: the losses are [1] tensors on the context's device (views
// of one [2] tensor, losses()), the fractions and the loss shares are
// all-reduced as device tensors, and nothing here reads the host.
//
// Gradient contract: Backward overwrites d_n and accumulates into the router
// weight (folded or not: norm/scaled_linear.h) and d_γ. Under TP both are
// this rank's share (the weight's layout says tp_partial_grad).
#pragma once

#include <string>

#include "configs/scalemoe.pb.h"
#include "core/forward_cache.h"
#include "core/ops.h"
#include "norm/branch_scales.h"
#include "norm/scaled_linear.h"
#include "parallel/communicator.h"

namespace scalemoe {

class Router {
 public:
  // gamma_scales/gamma_branch: the router's Input-Norm γ (a BranchScales
  // branch of the MoE layer; null: none). token_group (not owned, may be
  // null; outlives the router): the TP group whose ranks split the
  // micro-batch's rows; null or of size 1 = single rank.
  Router(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
         const std::string& prefix, const BranchScales* gamma_scales, int gamma_branch,
         Communicator* token_group = nullptr);

  // After the γ's BranchScales' Forward; `dtype` is the activations'.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // n in the master's dtype, or bf16 where takes_bf16_input(); the logits
  // are in the master's either way. Fails when a token-group all-reduce
  // (TP) fails.
  Status Forward(const ExecContext& ctx, const Tensor& n);
  // Whether Forward takes bf16 activations as they are, and Backward then
  // writes a bf16 d_n (train.precision BF16: the router's f32 products on
  // bf16 parts, norm/scaled_linear.h). After PrepareStep.
  bool takes_bf16_input() const { return linear_.takes_bf16_input(); }
  // d_weights [N, K]: gradient of the main loss w.r.t. the combine weights.
  // The aux/z losses' gradients are added scaled by loss_grad_scale.
  void Backward(const ExecContext& ctx, const Tensor& d_weights, double loss_grad_scale,
                const Tensor& d_n);
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);
  // bias_e += rate · sign(mean load − load_e) (DeepSeek-V3; ops::ExpertBiasUpdate)
  // from loads [E] i64 on the device; no-op without a bias.
  // skip (i32[1], may be undefined): the step's non-finite flag; set, nothing moves.
  void UpdateExpertBias(const ExecContext& ctx, const Tensor& loads, const Tensor& skip = Tensor());
  bool has_expert_bias() const { return expert_bias_ != nullptr; }

  // Routing held fixed, for tests only (the precision checks: a bf16 run
  // compared with an fp32 one must not move near-tie tokens between
  // experts, so it replays the fp32 run's selection). While set, every
  // Forward takes `expert_ids` (i32 [N, K] on ctx's device, N = this rank's
  // rows; e.g. another run's expert_ids()) instead of its own top-k pick:
  // the weights are this Forward's own scores at those ids, renormalised as
  // top-k weights are (ops::TopKWeightsAt), and capacity, the losses and
  // Backward run as in a step whose top-k picked those ids (the expert bias
  // selects nothing). Checks the ids here, reading them on the host (not in
  // a step): K distinct experts in [0, E) per row; Forward fails on another
  // N. The tensor is held, not copied: leave it unchanged while set. An
  // undefined tensor clears it. Unset, Forward is unchanged (no op, no
  // allocation).
  Status ForceSelection(const ExecContext& ctx, const Tensor& expert_ids);

  const Tensor& logits() const { return logits_; }
  const Tensor& scores() const { return scores_; }
  const Tensor& expert_ids() const { return expert_ids_; }  // [N, K] i32
  const Tensor& weights() const { return weights_; }        // [N, K]
  const Tensor& kept() const { return kept_; }              // [N, K] i32
  // The whole micro-batch's losses of the last Forward, coefficient-weighted
  // (device tensors in the compute dtype; under TP the shares summed over
  // the token group): losses() [2] = (aux, z), aux_loss() and z_loss() its
  // [1] views.
  const Tensor& losses() const { return losses_; }
  Tensor aux_loss() const { return losses_.Narrow(0, 0, 1); }
  Tensor z_loss() const { return losses_.Narrow(0, 1, 1); }
  int64_t capacity() const { return capacity_; }  // of the last Forward; 0 = dropless

 private:
  config::MoEConfig cfg_;
  ops::ScoreFunction score_fn_;
  Param* weight_;               // [E, C]
  Param* expert_bias_ = nullptr;  // [E], only with moe.expert_bias
  ScaledLinear linear_;
  // Forward cache.
  Tensor logits_, scores_, expert_ids_, weights_, kept_;
  Tensor forced_ids_;  // [N, K] i32 set by ForceSelection (tests), else undefined
  Tensor losses_;  // [2] (aux, z) of the whole micro-batch
  int64_t capacity_ = 0;
  // Token-sharded losses (token_group_ set): the micro-batch's f_e [E] f64
  // and row count N_total of the last Forward.
  Communicator* token_group_ = nullptr;
  Tensor fractions_;
  int64_t total_tokens_ = 0;
};

}  // namespace scalemoe
