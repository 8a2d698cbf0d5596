#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>

#include "core/ops.h"
#include "moe/expert_tp_exchange.h"
#include "moe/grouped_experts.h"
#include "moe/router.h"
#include "moe/token_dispatcher.h"
#include "moe/token_permuter.h"
#include "norm/branch_scales.h"
#include "norm/scale_options.h"
#include "parallel/process_groups.h"

namespace scalemoe {
namespace {

// Collects the layer's Input-Norm branches into the two BranchScales groups.
struct BranchPlan {
  std::vector<BranchSpec> shared, own;
  // Appends a branch; returns (own?, index in its group).
  std::pair<bool, int> Add(bool own_vector, std::string name, ParamLayout layout) {
    auto& list = own_vector ? own : shared;
    list.push_back({std::move(name), layout});
    return {own_vector, static_cast<int>(list.size()) - 1};
  }
};

}  // namespace

MoeLayer::MoeLayer(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
                   const std::string& prefix, const std::string& norm_name,
                   const ProcessGroups* groups)
    : hidden_(cfg.model().hidden_size()),
      num_experts_(cfg.moe().num_experts()),
      top_k_(cfg.moe().top_k()),
      num_shared_(cfg.moe().num_shared_experts()),
      num_local_(num_experts_) {
  const config::MoEConfig& moe = cfg.moe();
  const ScaleOptions so(cfg.scale_vectors());
  // Invariants ValidateMoeConfig (moe/moe_config.h) reports as config errors;
  // a direct caller with a bad config gets an abort, not a wrong layer.
  SM_CHECK_MSG(num_experts_ > 0 && top_k_ >= 1 && top_k_ <= num_experts_,
               prefix, ": moe.top_k must be in [1, moe.num_experts]; got top_k=", top_k_,
               " num_experts=", num_experts_);
  SM_CHECK_MSG(num_shared_ >= 0 && moe.expert_ffn_hidden_size() > 0, prefix,
               ": moe.expert_ffn_hidden_size must be > 0 and num_shared_experts >= 0");
  auto group = [&](const std::unique_ptr<Communicator> ProcessGroups::*axis) -> Communicator* {
    if (groups == nullptr) return nullptr;
    Communicator* c = (groups->*axis).get();
    return c != nullptr && c->size() > 1 ? c : nullptr;
  };
  if ((ep_ = group(&ProcessGroups::ep)) != nullptr) {
    dispatcher_ = std::make_unique<TokenDispatcher>(num_experts_, ep_);
    first_expert_ = dispatcher_->owned().begin;
    num_local_ = dispatcher_->owned().size();
  }
  tp_ = group(&ProcessGroups::tp);
  etp_ = group(&ProcessGroups::etp);
  for (Communicator* c : {tp_, group(&ProcessGroups::dp)}) {
    if (c != nullptr) loads_comms_.push_back(c);
  }
  const ShardCoords& coords = registry.coords();
  const int etp_size = etp_ != nullptr ? etp_->size() : 1;
  const int etp_rank = etp_ != nullptr ? etp_->rank() : 0;
  SM_CHECK_MSG(coords.etp_size == etp_size && coords.etp_rank == etp_rank, prefix,
               ": the parameter registry was built for ETP rank ", coords.etp_rank, " of ",
               coords.etp_size, " but the process groups put this rank at ", etp_rank, " of ",
               etp_size, "; build the ParamRegistry's ShardCoords from the same ProcessGroups");
  SM_CHECK_MSG(moe.expert_ffn_hidden_size() % etp_size == 0, prefix,
               ": moe.expert_ffn_hidden_size=", moe.expert_ffn_hidden_size(),
               " does not split over parallel.etp=", etp_size,
               "; pick an expert FFN size divisible by etp (or lower etp)");
  if (etp_ != nullptr) etp_exchange_ = std::make_unique<ExpertTpExchange>(etp_);

  // Which branches get their own γ (HG).
  const bool own_router = so.OwnVectors(BranchGroup::kRouter);
  const bool own_experts = so.OwnVectors(BranchGroup::kExperts);
  const bool own_shared = so.OwnVectors(BranchGroup::kSharedExperts);
  ParamLayout base;
  base.layer = layer;
  // Replicated over TP; each TP rank's rows give only a share of the gradient.
  base.tp_partial_grad = true;
  BranchPlan plan;
  std::vector<std::pair<bool, int>> refs;  // router, local E×(gate, up), S×(gate, up)
  refs.push_back(plan.Add(own_router, prefix + ".router.gamma", base));
  for (int e = first_expert_; e < first_expert_ + num_local_; ++e) {
    ParamLayout l = base;
    l.expert = e;
    l.tp_group = TpGroup::kExpert;  // a share per ETP rank's F slice (and per EDP rank's rows)
    const std::string p = prefix + ".experts." + std::to_string(e);
    refs.push_back(plan.Add(own_experts, p + ".gamma_gate", l));
    refs.push_back(plan.Add(own_experts, p + ".gamma_up", l));
  }
  for (int s = 0; s < num_shared_; ++s) {
    const std::string p = prefix + ".shared_experts." + std::to_string(s);
    refs.push_back(plan.Add(own_shared, p + ".gamma_gate", base));
    refs.push_back(plan.Add(own_shared, p + ".gamma_up", base));
  }
  if (!plan.shared.empty()) {
    shared_group_ = std::make_unique<BranchScales>(registry, so, norm_name + ".scale", base,
                                                   hidden_, plan.shared, /*own_vectors=*/false);
  }
  if (!plan.own.empty()) {
    own_group_ = std::make_unique<BranchScales>(registry, so, norm_name + ".scale", base,
                                                hidden_, plan.own, /*own_vectors=*/true);
  }
  auto ref = [&](size_t i) {
    return BranchRef{refs[i].first ? own_group_.get() : shared_group_.get(), refs[i].second};
  };
  router_branch_ = ref(0);
  for (int e = 0; e < num_local_; ++e) {
    expert_gate_.push_back(ref(1 + 2 * e));
    expert_up_.push_back(ref(2 + 2 * e));
  }
  for (int s = 0; s < num_shared_; ++s) {
    shared_gate_.push_back(ref(1 + 2 * num_local_ + 2 * s));
    shared_up_.push_back(ref(2 + 2 * num_local_ + 2 * s));
  }

  router_ = std::make_unique<Router>(registry, cfg, layer, prefix, tp_);
  permuter_ = std::make_unique<TokenPermuter>(num_experts_, top_k_);
  ExpertGroupOptions opts;
  opts.prefix = prefix + ".experts";
  opts.num_experts = num_local_;
  opts.first_expert = first_expert_;
  opts.hidden = hidden_;
  opts.ffn = moe.expert_ffn_hidden_size();
  opts.layer = layer;
  opts.routed = true;
  opts.init_std = cfg.model().init_std();
  opts.down_init_std = cfg.model().init_std() / std::sqrt(2.0 * cfg.model().num_layers());
  opts.ffn_split_group = etp_;
  experts_ = std::make_unique<GroupedExperts>(registry, so, opts);
  opts.ffn_split_group = nullptr;
  if (num_shared_ > 0) {
    opts.prefix = prefix + ".shared_experts";
    opts.num_experts = num_shared_;
    opts.first_expert = 0;
    opts.ffn = moe.shared_expert_ffn_hidden_size() > 0 ? moe.shared_expert_ffn_hidden_size()
                                                       : moe.expert_ffn_hidden_size();
    opts.routed = false;
    shared_experts_ = std::make_unique<GroupedExperts>(registry, so, opts);
  }
  step_loads_.assign(num_experts_, 0);
}

MoeLayer::~MoeLayer() = default;

const Tensor& MoeLayer::Gamma(const BranchRef& b) const { return b.scales->gamma(b.index); }
const Tensor& MoeLayer::DGamma(const BranchRef& b) const { return b.scales->d_gamma(b.index); }

Status MoeLayer::PrepareStep(const ExecContext& ctx, DType dtype) {
  step_loads_.assign(num_experts_, 0);
  step_dropped_ = 0;
  step_aux_ = step_z_ = 0;
  step_micro_batches_ = 0;
  if (shared_group_) SM_RETURN_IF_ERROR(shared_group_->Forward(ctx, dtype));
  if (own_group_) SM_RETURN_IF_ERROR(own_group_->Forward(ctx, dtype));
  router_->PrepareStep(ctx, Gamma(router_branch_), DGamma(router_branch_));
  auto gammas = [&](const std::vector<BranchRef>& gate, const std::vector<BranchRef>& up) {
    ExpertGammas g;
    for (size_t i = 0; i < gate.size(); ++i) {
      g.gate.push_back(Gamma(gate[i]));
      g.d_gate.push_back(DGamma(gate[i]));
      g.up.push_back(Gamma(up[i]));
      g.d_up.push_back(DGamma(up[i]));
    }
    return g;
  };
  SM_RETURN_IF_ERROR(experts_->PrepareStep(ctx, dtype, gammas(expert_gate_, expert_up_)));
  if (shared_experts_) {
    SM_RETURN_IF_ERROR(
        shared_experts_->PrepareStep(ctx, dtype, gammas(shared_gate_, shared_up_)));
  }
  return absl::OkStatus();
}

Status MoeLayer::Forward(const ExecContext& ctx, const Tensor& n, const Tensor& out) {
  SM_CHECK_MSG(n.ndim() == 2 && n.dim(1) == hidden_ && out.shape() == n.shape() &&
                   out.dtype() == n.dtype(),
               "MoeLayer::Forward: n ", n.DebugString(), " out ", out.DebugString(),
               " (want [N, ", hidden_, "])");
  const int64_t tokens = n.dim(0);
  n_ = n;
  SM_RETURN_IF_ERROR(router_->Forward(ctx, n));
  permuter_->Plan(ctx, router_->expert_ids(), router_->kept());
  Tensor permuted_x = Tensor::Empty({tokens * top_k_, hidden_}, n.dtype(), ctx.device());
  permuter_->Permute(ctx, n, permuted_x);
  permuted_y_ = Tensor::Empty(permuted_x.shape(), n.dtype(), ctx.device());
  if (dispatcher_) {
    SM_RETURN_IF_ERROR(dispatcher_->Plan(permuter_->counts()));
    const Shape rows{dispatcher_->received_rows(), hidden_};
    Tensor expert_x = Tensor::Empty(rows, n.dtype(), ctx.device());
    Tensor expert_y = Tensor::Empty(rows, n.dtype(), ctx.device());
    SM_RETURN_IF_ERROR(dispatcher_->Dispatch(ctx, permuted_x, expert_x));
    SM_RETURN_IF_ERROR(RunExperts(ctx, expert_x, dispatcher_->local_counts(), expert_y));
    SM_RETURN_IF_ERROR(dispatcher_->Combine(ctx, expert_y, permuted_y_));
  } else {
    SM_RETURN_IF_ERROR(RunExperts(ctx, permuted_x, permuter_->counts(), permuted_y_));
  }
  ops::Zero(ctx, out);
  permuter_->Unpermute(ctx, permuted_y_, router_->weights(), out);

  if (shared_experts_) {
    // Every shared expert sees every token: rows s*N + t of the tiled input.
    shared_tiled_ = Tensor::Empty({num_shared_ * tokens}, DType::kI32, ctx.device());
    for (int64_t i = 0; i < num_shared_ * tokens; ++i) {
      shared_tiled_.data<int32_t>()[i] = static_cast<int32_t>(i % tokens);
    }
    Tensor x_sh = Tensor::Empty({num_shared_ * tokens, hidden_}, n.dtype(), ctx.device());
    Tensor y_sh = Tensor::Empty(x_sh.shape(), n.dtype(), ctx.device());
    ops::GatherRows(ctx, n, shared_tiled_, 1, x_sh);
    shared_experts_->Forward(ctx, x_sh, std::vector<int64_t>(num_shared_, tokens), y_sh);
    ops::ScatterAddRows(ctx, y_sh, shared_tiled_, 1, Tensor(), out);
  }

  // Stats from the counts already on the host; with several replicas of the
  // router summed over them (counts [E] and the assignment total in one
  // all-reduce per replica group, tp then dp: Σ over tp of Σ over dp is every
  // rank of the stage once).
  stats_.tokens_per_expert = permuter_->counts();
  int64_t assignments = tokens * top_k_;
  if (!loads_comms_.empty()) {
    Tensor sums = Tensor::Empty({num_experts_ + 1}, DType::kI64);
    int64_t* v = sums.data<int64_t>();
    std::copy(stats_.tokens_per_expert.begin(), stats_.tokens_per_expert.end(), v);
    v[num_experts_] = assignments;
    for (Communicator* c : loads_comms_) {
      SM_RETURN_IF_ERROR(WithContext(c->AllReduceHost(sums), "expert loads"));
    }
    stats_.tokens_per_expert.assign(v, v + num_experts_);
    assignments = v[num_experts_];
  }
  int64_t kept = 0;
  for (int64_t c : stats_.tokens_per_expert) kept += c;
  stats_.dropped_tokens = assignments - kept;
  const double mean = static_cast<double>(kept) / num_experts_;
  double var = 0;
  for (int e = 0; e < num_experts_; ++e) {
    const double d = static_cast<double>(stats_.tokens_per_expert[e]) - mean;
    var += d * d;
  }
  stats_.load_cv = mean > 0 ? std::sqrt(var / num_experts_) / mean : 0.0;
  stats_.aux_loss = router_->aux_loss();
  stats_.z_loss = router_->z_loss();
  return absl::OkStatus();
}

Status MoeLayer::Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                          double loss_grad_scale) {
  SM_CHECK_MSG(d_out.shape() == n_.shape() && d_n.shape() == n_.shape(),
               "MoeLayer::Backward: d_out ", d_out.DebugString(), " d_n ", d_n.DebugString(),
               " for n ", n_.DebugString());
  // A Backward marks its Forward as a training micro-batch of this step.
  for (int e = 0; e < num_experts_; ++e) step_loads_[e] += stats_.tokens_per_expert[e];
  step_dropped_ += stats_.dropped_tokens;
  step_aux_ += stats_.aux_loss;
  step_z_ += stats_.z_loss;
  ++step_micro_batches_;
  const DType dt = n_.dtype();
  Tensor d_permuted_y = Tensor::Empty(permuted_y_.shape(), dt, ctx.device());
  Tensor d_weights = Tensor::Empty(router_->weights().shape(), dt, ctx.device());
  permuter_->UnpermuteBackward(ctx, d_out, permuted_y_, router_->weights(), d_permuted_y,
                               d_weights);
  Tensor d_permuted_x = Tensor::Empty(permuted_y_.shape(), dt, ctx.device());
  if (dispatcher_) {
    // The mirror of Forward: gradients of the outputs travel like the inputs
    // did (Dispatch), gradients of the inputs like the outputs did (Combine).
    const Shape rows{dispatcher_->received_rows(), hidden_};
    Tensor d_expert_y = Tensor::Empty(rows, dt, ctx.device());
    Tensor d_expert_x = Tensor::Empty(rows, dt, ctx.device());
    SM_RETURN_IF_ERROR(dispatcher_->Dispatch(ctx, d_permuted_y, d_expert_y));
    SM_RETURN_IF_ERROR(RunExpertsBackward(ctx, d_expert_y, d_expert_x));
    SM_RETURN_IF_ERROR(dispatcher_->Combine(ctx, d_expert_x, d_permuted_x));
  } else {
    SM_RETURN_IF_ERROR(RunExpertsBackward(ctx, d_permuted_y, d_permuted_x));
  }
  router_->Backward(ctx, d_weights, loss_grad_scale, d_n);
  permuter_->PermuteBackward(ctx, d_permuted_x, d_n);
  if (shared_experts_) {
    const int64_t rows = shared_tiled_.numel();
    Tensor d_y_sh = Tensor::Empty({rows, hidden_}, dt, ctx.device());
    Tensor d_x_sh = Tensor::Empty({rows, hidden_}, dt, ctx.device());
    ops::GatherRows(ctx, d_out, shared_tiled_, 1, d_y_sh);
    shared_experts_->Backward(ctx, d_y_sh, d_x_sh);
    ops::ScatterAddRows(ctx, d_x_sh, shared_tiled_, 1, Tensor(), d_n);
  }
  return absl::OkStatus();
}

Status MoeLayer::RunExperts(const ExecContext& ctx, const Tensor& x,
                            const std::vector<int64_t>& counts, const Tensor& y) {
  if (!etp_exchange_) {
    experts_->Forward(ctx, x, counts, y);
    return absl::OkStatus();
  }
  // Every ETP rank runs every row of the group on its F slice; the partial
  // outputs are summed back to the rows' owner.
  SM_RETURN_IF_ERROR(etp_exchange_->Plan(counts));
  const Shape rows{etp_exchange_->group_rows(), hidden_};
  Tensor group_x = Tensor::Empty(rows, x.dtype(), ctx.device());
  Tensor group_y = Tensor::Empty(rows, x.dtype(), ctx.device());
  SM_RETURN_IF_ERROR(etp_exchange_->Gather(ctx, x, group_x));
  experts_->Forward(ctx, group_x, etp_exchange_->group_counts(), group_y);
  return etp_exchange_->ScatterReduce(ctx, group_y, y);
}

Status MoeLayer::RunExpertsBackward(const ExecContext& ctx, const Tensor& d_y,
                                    const Tensor& d_x) {
  if (!etp_exchange_) {
    experts_->Backward(ctx, d_y, d_x);
    return absl::OkStatus();
  }
  // The mirror: d_y travels like x did (Gather), d_x like y did (ScatterReduce).
  const Shape rows{etp_exchange_->group_rows(), hidden_};
  Tensor group_d_y = Tensor::Empty(rows, d_y.dtype(), ctx.device());
  Tensor group_d_x = Tensor::Empty(rows, d_y.dtype(), ctx.device());
  SM_RETURN_IF_ERROR(etp_exchange_->Gather(ctx, d_y, group_d_y));
  experts_->Backward(ctx, group_d_y, group_d_x);
  return etp_exchange_->ScatterReduce(ctx, group_d_x, d_x);
}

Status MoeLayer::FinishBackward(const ExecContext& ctx) {
  router_->FinishBackward(ctx);
  SM_RETURN_IF_ERROR(experts_->FinishBackward(ctx));
  if (shared_experts_) SM_RETURN_IF_ERROR(shared_experts_->FinishBackward(ctx));
  if (shared_group_) SM_RETURN_IF_ERROR(shared_group_->Backward(ctx));
  if (own_group_) SM_RETURN_IF_ERROR(own_group_->Backward(ctx));
  return absl::OkStatus();
}

void MoeLayer::UpdateExpertBias() {
  router_->UpdateExpertBias(step_loads_);
}

MoeLayerStats MoeLayer::step_stats() const {
  MoeLayerStats s;
  s.tokens_per_expert = step_loads_;
  s.dropped_tokens = step_dropped_;
  int64_t kept = 0;
  for (int64_t c : step_loads_) kept += c;
  const double mean = static_cast<double>(kept) / num_experts_;
  double var = 0;
  for (int64_t c : step_loads_) {
    const double d = static_cast<double>(c) - mean;
    var += d * d;
  }
  s.load_cv = mean > 0 ? std::sqrt(var / num_experts_) / mean : 0.0;
  const double n = std::max(1, step_micro_batches_);
  s.aux_loss = step_aux_ / n;
  s.z_loss = step_z_ / n;
  return s;
}

double MoeLayer::aux_loss() const { return stats_.aux_loss; }
double MoeLayer::z_loss() const { return stats_.z_loss; }
const MoeLayerStats& MoeLayer::stats() const { return stats_; }

}  // namespace scalemoe
