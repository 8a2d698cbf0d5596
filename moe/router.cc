#include "moe/router.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/host_values.h"
#include "norm/scale_options.h"

namespace scalemoe {
namespace {

Param* CreateWeight(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
                    const std::string& prefix) {
  ParamSpec spec;
  spec.name = prefix + ".router.weight";
  spec.shape = {cfg.moe().num_experts(), cfg.model().hidden_size()};
  spec.role = ParamRole::kRouter;
  spec.init = InitSpec::Normal(cfg.model().init_std());
  spec.layout.layer = layer;
  // Replicated; under TP each rank's rows give only a share of its gradient.
  spec.layout.tp_partial_grad = true;
  return registry.Create(spec);
}

}  // namespace

Router::Router(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
               const std::string& prefix, const BranchScales* gamma_scales, int gamma_branch,
               Communicator* token_group)
    : cfg_(cfg.moe()),
      score_fn_(cfg.moe().score_function() == config::MoEConfig::SIGMOID
                    ? ops::ScoreFunction::kSigmoid
                    : ops::ScoreFunction::kSoftmax),
      weight_(CreateWeight(registry, cfg, layer, prefix)),
      linear_(registry, weight_, gamma_scales, gamma_branch,
              {.path = ScaleOptions(cfg.scale_vectors()).path(), .bf16_parts = Bf16Operands(cfg)}) {
  if (cfg_.expert_bias()) {
    ParamSpec spec;
    spec.name = prefix + ".router.expert_bias";
    spec.shape = {cfg_.num_experts()};
    spec.role = ParamRole::kExpertBias;
    spec.init = InitSpec::Zeros();
    spec.layout.layer = layer;
    expert_bias_ = registry.Create(spec);
  }
  if (token_group != nullptr && token_group->size() > 1) token_group_ = token_group;
}

Status Router::PrepareStep(const ExecContext& ctx, DType dtype) {
  return linear_.PrepareStep(ctx, dtype);
}

Status Router::Forward(const ExecContext& ctx, const Tensor& n) {
  const int64_t tokens = n.dim(0);
  const int64_t e = cfg_.num_experts();
  const int k = cfg_.top_k();
  // The master's dtype: n may be bf16 (takes_bf16_input), the logits never.
  const DType dt = weight_->value.dtype();
  logits_ = ctx.Empty({tokens, e}, dt);
  scores_ = ctx.Empty({tokens, e}, dt);
  if (forced_ids_.defined() && forced_ids_.dim(0) != tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Router::Forward: the forced selection has ", forced_ids_.dim(0), " rows for ", tokens,
        " tokens; force the ids of a micro-batch of this shape or clear it (ForceSelection)"));
  }
  expert_ids_ = forced_ids_.defined() ? forced_ids_ : ctx.Empty({tokens, k}, DType::kI32);
  weights_ = ctx.Empty({tokens, k}, dt);
  kept_ = ctx.Empty({tokens, k}, DType::kI32);
  losses_ = ctx.Zeros({2}, dt);
  const Tensor aux = aux_loss(), z = z_loss();

  linear_.Forward(ctx, n, logits_);
  ops::RouterScores(ctx, score_fn_, logits_, scores_);
  const Tensor bias = expert_bias_ ? expert_bias_->value : Tensor();
  if (forced_ids_.defined()) {
    ops::TopKWeightsAt(ctx, scores_, expert_ids_, cfg_.normalize_topk(), weights_);
  } else {
    ops::TopKRouting(ctx, scores_, bias, k, cfg_.normalize_topk(), expert_ids_, weights_);
  }

  // Capacity from the shapes alone; the priority of an assignment is its raw
  // (unnormalised, unbiased) score.
  capacity_ = 0;
  Tensor priority = weights_;
  if (cfg_.capacity_factor() > 0) {
    capacity_ = static_cast<int64_t>(
        std::ceil(cfg_.capacity_factor() * static_cast<double>(tokens * k) / e));
    if (cfg_.normalize_topk()) {
      priority = ctx.Empty({tokens, k}, dt);
      ops::SelectedScores(ctx, scores_, expert_ids_, priority);
    }
  }
  ops::CapacityDrop(ctx, expert_ids_, priority, static_cast<int>(e), capacity_, kept_);
  if (token_group_ == nullptr) {
    if (cfg_.aux_loss_coeff() != 0) {
      ops::LoadBalancingLoss(ctx, scores_, expert_ids_, cfg_.aux_loss_coeff(), aux);
    }
    if (cfg_.z_loss_coeff() != 0) ops::ZLoss(ctx, logits_, cfg_.z_loss_coeff(), z);
    return absl::OkStatus();
  }
  // Token-sharded: the micro-batch's fractions, then this rank's shares,
  // summed over the group into the whole losses.
  total_tokens_ = tokens * token_group_->size();
  if (cfg_.aux_loss_coeff() != 0) {
    fractions_ = ctx.Empty({e}, DType::kF64);
    ops::AssignmentCounts(ctx, expert_ids_, fractions_);
    SM_RETURN_IF_ERROR(
        WithContext(token_group_->AllReduce(ctx, fractions_), "router load fractions"));
    ops::Scale(ctx, 1.0 / static_cast<double>(total_tokens_ * k), fractions_);
    ops::LoadBalancingLossShare(ctx, scores_, fractions_, total_tokens_, cfg_.aux_loss_coeff(),
                                aux);
  }
  if (cfg_.z_loss_coeff() != 0) {
    ops::ZLossShare(ctx, logits_, total_tokens_, cfg_.z_loss_coeff(), z);
  }
  return WithContext(token_group_->AllReduce(ctx, losses_), "router losses");
}

void Router::Backward(const ExecContext& ctx, const Tensor& d_weights, double loss_grad_scale,
                      const Tensor& d_n) {
  Tensor d_scores = ctx.Zeros(scores_.shape(), scores_.dtype());
  ops::TopKRoutingBackward(ctx, scores_, expert_ids_, cfg_.normalize_topk(), d_weights,
                           d_scores);
  if (cfg_.aux_loss_coeff() != 0) {
    if (token_group_ == nullptr) {
      ops::LoadBalancingLossBackward(ctx, expert_ids_, cfg_.aux_loss_coeff(), loss_grad_scale,
                                     d_scores);
    } else {
      ops::LoadBalancingLossShareBackward(ctx, fractions_, total_tokens_, cfg_.aux_loss_coeff(),
                                          loss_grad_scale, d_scores);
    }
  }
  Tensor d_logits = ctx.Empty(logits_.shape(), logits_.dtype());
  ops::RouterScoresBackward(ctx, score_fn_, scores_, d_scores, d_logits);
  if (cfg_.z_loss_coeff() != 0) {
    if (token_group_ == nullptr) {
      ops::ZLossBackward(ctx, logits_, cfg_.z_loss_coeff(), loss_grad_scale, d_logits);
    } else {
      ops::ZLossShareBackward(ctx, logits_, total_tokens_, cfg_.z_loss_coeff(), loss_grad_scale,
                              d_logits);
    }
  }
  linear_.Backward(ctx, d_logits, d_n, GradMode::kOverwrite);
}

Status Router::ForceSelection(const ExecContext& ctx, const Tensor& expert_ids) {
  if (!expert_ids.defined()) {
    forced_ids_ = Tensor();
    return absl::OkStatus();
  }
  const int k = cfg_.top_k();
  const int e = cfg_.num_experts();
  if (expert_ids.dtype() != DType::kI32 || expert_ids.ndim() != 2 || expert_ids.dim(1) != k ||
      !expert_ids.is_contiguous() || expert_ids.device() != ctx.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Router::ForceSelection: expert_ids ", expert_ids.DebugString(),
        " must be a contiguous i32 [N, ", k, "] (moe.top_k) tensor on the context's device"));
  }
  const std::vector<int64_t> ids = ReadHostInts(ctx, expert_ids);
  for (int64_t t = 0; t < expert_ids.dim(0); ++t) {
    for (int j = 0; j < k; ++j) {
      const int64_t id = ids[t * k + j];
      const auto row = ids.begin() + t * k;
      const bool repeated = std::find(row, row + j, id) != row + j;
      if (id < 0 || id >= e || repeated) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Router::ForceSelection: token ", t, " slot ", j, " has expert ", id,
            "; each token needs ", k, " distinct experts in [0, ", e, ") (moe.num_experts)"));
      }
    }
  }
  forced_ids_ = expert_ids;
  return absl::OkStatus();
}

Status Router::FinishBackward(const ExecContext& ctx) { return linear_.FinishBackward(ctx); }

void Router::UpdateExpertBias(const ExecContext& ctx, const Tensor& loads, const Tensor& skip) {
  if (!expert_bias_) return;
  SM_CHECK_MSG(loads.numel() == cfg_.num_experts() && loads.dtype() == DType::kI64,
               "Router::UpdateExpertBias: loads ", loads.DebugString(), " for ",
               cfg_.num_experts(), " experts");
  ops::ExpertBiasUpdate(ctx, loads, cfg_.expert_bias_update_rate(), skip, expert_bias_->value);
}

void Router::VisitForwardCache(ForwardCacheStash& stash) {
  for (Tensor* t : {&logits_, &scores_, &expert_ids_, &weights_, &kept_, &losses_, &fractions_}) {
    stash.Visit(*t);
  }
  stash.Visit(capacity_);
  stash.Visit(total_tokens_);
  linear_.VisitForwardCache(stash);
}

}  // namespace scalemoe
