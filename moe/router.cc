#include "moe/router.h"

#include <cmath>

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
               const std::string& prefix, Communicator* token_group)
    : cfg_(cfg.moe()),
      score_fn_(cfg.moe().score_function() == config::MoEConfig::SIGMOID
                    ? ops::ScoreFunction::kSigmoid
                    : ops::ScoreFunction::kSoftmax),
      weight_(CreateWeight(registry, cfg, layer, prefix)),
      linear_(weight_, ScaleOptions(cfg.scale_vectors()).path() == ScalePath::kFold) {
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

void Router::PrepareStep(const ExecContext& ctx, const Tensor& gamma, const Tensor& d_gamma) {
  linear_.PrepareStep(ctx, gamma, d_gamma, Tensor(), Tensor());
}

Status Router::Forward(const ExecContext& ctx, const Tensor& n) {
  const int64_t tokens = n.dim(0);
  const int64_t e = cfg_.num_experts();
  const int k = cfg_.top_k();
  const DType dt = n.dtype();
  n_ = n;
  logits_ = Tensor::Empty({tokens, e}, dt, ctx.device());
  scores_ = Tensor::Empty({tokens, e}, dt, ctx.device());
  expert_ids_ = Tensor::Empty({tokens, k}, DType::kI32, ctx.device());
  weights_ = Tensor::Empty({tokens, k}, dt, ctx.device());
  kept_ = Tensor::Empty({tokens, k}, DType::kI32, ctx.device());
  aux_loss_ = Tensor::Zeros({1}, dt, ctx.device());
  z_loss_ = Tensor::Zeros({1}, dt, ctx.device());

  linear_.Forward(ctx, n, logits_, &cache_);
  ops::RouterScores(ctx, score_fn_, logits_, scores_);
  const Tensor bias = expert_bias_ ? expert_bias_->value : Tensor();
  ops::TopKRouting(ctx, scores_, bias, k, cfg_.normalize_topk(), expert_ids_, weights_);

  capacity_ = 0;
  Tensor priority;  // the raw score of each selected assignment
  if (cfg_.capacity_factor() > 0) {
    capacity_ = static_cast<int64_t>(
        std::ceil(cfg_.capacity_factor() * static_cast<double>(tokens * k) / e));
    priority = Tensor::Empty({tokens, k}, dt, ctx.device());
    Tensor same_ids = Tensor::Empty({tokens, k}, DType::kI32, ctx.device());
    ops::TopKRouting(ctx, scores_, bias, k, /*normalize=*/false, same_ids, priority);
  }
  ops::CapacityDrop(ctx, expert_ids_, priority.defined() ? priority : weights_,
                    static_cast<int>(e), capacity_, kept_);
  if (token_group_ == nullptr) {
    if (cfg_.aux_loss_coeff() != 0) {
      ops::LoadBalancingLoss(ctx, scores_, expert_ids_, cfg_.aux_loss_coeff(), aux_loss_);
    }
    if (cfg_.z_loss_coeff() != 0) ops::ZLoss(ctx, logits_, cfg_.z_loss_coeff(), z_loss_);
    aux_total_ = aux_loss_.At(0);
    z_total_ = z_loss_.At(0);
    return absl::OkStatus();
  }
  // Token-sharded: the micro-batch's fractions, then this rank's shares.
  total_tokens_ = tokens * token_group_->size();
  if (cfg_.aux_loss_coeff() != 0) {
    fractions_ = Tensor::Empty({e}, DType::kF64, ctx.device());
    ops::AssignmentCounts(ctx, expert_ids_, fractions_);
    SM_RETURN_IF_ERROR(
        WithContext(token_group_->AllReduce(ctx, fractions_), "router load fractions"));
    ops::Scale(ctx, 1.0 / static_cast<double>(total_tokens_ * k), fractions_);
    ops::LoadBalancingLossShare(ctx, scores_, fractions_, total_tokens_, cfg_.aux_loss_coeff(),
                                aux_loss_);
  }
  if (cfg_.z_loss_coeff() != 0) {
    ops::ZLossShare(ctx, logits_, total_tokens_, cfg_.z_loss_coeff(), z_loss_);
  }
  double totals[2] = {aux_loss_.At(0), z_loss_.At(0)};
  SM_RETURN_IF_ERROR(WithContext(
      token_group_->AllReduceHost(Tensor::FromBlob(totals, {2}, DType::kF64, Device::kCPU)),
      "router losses"));
  aux_total_ = totals[0];
  z_total_ = totals[1];
  return absl::OkStatus();
}

void Router::Backward(const ExecContext& ctx, const Tensor& d_weights, double loss_grad_scale,
                      const Tensor& d_n) {
  Tensor d_scores = Tensor::Zeros(scores_.shape(), scores_.dtype(), ctx.device());
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
  Tensor d_logits = Tensor::Empty(logits_.shape(), logits_.dtype(), ctx.device());
  ops::RouterScoresBackward(ctx, score_fn_, scores_, d_scores, d_logits);
  if (cfg_.z_loss_coeff() != 0) {
    if (token_group_ == nullptr) {
      ops::ZLossBackward(ctx, logits_, cfg_.z_loss_coeff(), loss_grad_scale, d_logits);
    } else {
      ops::ZLossShareBackward(ctx, logits_, total_tokens_, cfg_.z_loss_coeff(), loss_grad_scale,
                              d_logits);
    }
  }
  linear_.Backward(ctx, n_, cache_, d_logits, d_n);
}

void Router::FinishBackward(const ExecContext& ctx) { linear_.FinishBackward(ctx); }

void Router::UpdateExpertBias(const std::vector<int64_t>& loads) {
  if (!expert_bias_) return;
  const int e = cfg_.num_experts();
  SM_CHECK(static_cast<int>(loads.size()) == e);
  double mean = 0;
  for (int64_t l : loads) mean += static_cast<double>(l);
  mean /= e;
  const Tensor& b = expert_bias_->value;
  for (int j = 0; j < e; ++j) {
    const double load = static_cast<double>(loads[j]);
    const double step = cfg_.expert_bias_update_rate() * (load < mean ? 1.0 : load > mean ? -1.0 : 0.0);
    if (b.dtype() == DType::kF64) {
      b.data<double>()[j] += step;
    } else {
      b.data<float>()[j] += static_cast<float>(step);
    }
  }
}

}  // namespace scalemoe
