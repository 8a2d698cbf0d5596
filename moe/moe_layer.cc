#include "moe/moe_layer.h"

#include <algorithm>
#include <cmath>

#include "absl/types/span.h"
#include "core/host_values.h"
#include "core/ops.h"
#include "moe/expert_tp_exchange.h"
#include "moe/grouped_experts.h"
#include "moe/router.h"
#include "moe/token_dispatcher.h"
#include "moe/token_permuter.h"
#include "norm/branch_scales.h"
#include "norm/scale_options.h"
#include "norm/scaled_linear.h"
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
      fuse_permute_(cfg.moe().fuse_permute()),
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
  // Logical Input-Norm branches: router, then (gate, up) per routed expert,
  // then (gate, up) per shared expert, each a branch of one of the groups.
  using Source = ExpertGroupOptions::GammaSource;
  auto ref = [&](size_t i) {
    return Source{refs[i].first ? own_group_.get() : shared_group_.get(), refs[i].second};
  };
  const Source router_gamma = ref(0);
  std::vector<Source> expert_gate, expert_up, shared_gate, shared_up;
  for (int e = 0; e < num_local_; ++e) {
    expert_gate.push_back(ref(1 + 2 * e));
    expert_up.push_back(ref(2 + 2 * e));
  }
  for (int s = 0; s < num_shared_; ++s) {
    shared_gate.push_back(ref(1 + 2 * num_local_ + 2 * s));
    shared_up.push_back(ref(2 + 2 * num_local_ + 2 * s));
  }

  router_ = std::make_unique<Router>(registry, cfg, layer, prefix, router_gamma.scales,
                                     router_gamma.branch, tp_);
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
  opts.bf16_operands = Bf16Operands(cfg);
  opts.fuse_gate_up = cfg.moe().fuse_gate_up();
  opts.fuse_swiglu = cfg.moe().fuse_swiglu();
  opts.gate_gamma = expert_gate;
  opts.up_gamma = expert_up;
  experts_ = std::make_unique<GroupedExperts>(registry, so, opts);
  opts.ffn_split_group = nullptr;
  opts.gate_gamma = shared_gate;
  opts.up_gamma = shared_up;
  if (num_shared_ > 0) {
    opts.prefix = prefix + ".shared_experts";
    opts.num_experts = num_shared_;
    opts.first_expert = 0;
    opts.ffn = moe.shared_expert_ffn_hidden_size() > 0 ? moe.shared_expert_ffn_hidden_size()
                                                       : moe.expert_ffn_hidden_size();
    opts.routed = false;
    shared_experts_ = std::make_unique<GroupedExperts>(registry, so, opts);
  }
}

MoeLayer::~MoeLayer() = default;


void MoeLayer::ResetStepStats(const ExecContext& ctx, DType dtype) {
  // Kept from step to step (zeroed, not replaced): a CUDA graph of the
  // micro-batches adds into the buffers it was captured with.
  if (!step_counts_.defined()) step_counts_ = ctx.Empty({num_experts_ + 1}, DType::kI64);
  if (!step_losses_.defined() || step_losses_.dtype() != dtype) {
    step_losses_ = ctx.Empty({2}, dtype);
  }
  ops::Zero(ctx, step_counts_);
  ops::Zero(ctx, step_losses_);
  step_micro_batches_ = 0;
  reduced_counts_ = Tensor();
  reduced_ = false;
}

Status MoeLayer::PrepareStep(const ExecContext& ctx, DType dtype) {
  dtype_ = dtype;
  ResetStepStats(ctx, dtype);
  if (shared_group_) SM_RETURN_IF_ERROR(shared_group_->Forward(ctx, dtype));
  if (own_group_) SM_RETURN_IF_ERROR(own_group_->Forward(ctx, dtype));
  SM_RETURN_IF_ERROR(router_->PrepareStep(ctx, dtype));
  SM_RETURN_IF_ERROR(experts_->PrepareStep(ctx, dtype));
  if (shared_experts_) SM_RETURN_IF_ERROR(shared_experts_->PrepareStep(ctx, dtype));
  return absl::OkStatus();
}

Status MoeLayer::PlanCounts(const ExecContext& ctx) {
  // One i64 buffer: [E] this rank's kept loads per global expert | EP: the
  // exchanged matrix [EP, E_local] | ETP under EP: this rank's rows per local
  // expert [E_local] | ETP: the group's matrix [ETP, E_local].
  const int64_t e = num_experts_, local = num_local_;
  const int64_t ep_size = dispatcher_ ? dispatcher_->received_counts_size() : 0;
  const int64_t local_size = etp_exchange_ && dispatcher_ ? local : 0;
  const int64_t etp_size = etp_exchange_ ? etp_->size() * local : 0;
  plan_counts_ = ctx.Empty({e + ep_size + local_size + etp_size}, DType::kI64);
  const Tensor counts = plan_counts_.Narrow(0, 0, e);
  const Tensor received = plan_counts_.Narrow(0, e, ep_size);
  const Tensor group = plan_counts_.Narrow(0, e + ep_size + local_size, etp_size);
  forward_loads_ = counts;
  permuter_->Plan(ctx, router_->expert_ids(), router_->kept(), counts);
  if (dispatcher_) SM_RETURN_IF_ERROR(dispatcher_->ExchangeCounts(ctx, counts, received));
  // Every expert local, none dropped and the grouped GEMMs (which read their
  // row offsets on the device): the counts size nothing on the host, so no
  // host read at all; the offsets are scanned on the device.
  expert_offsets_ = Tensor();
  if (!dispatcher_ && !etp_exchange_ && router_->capacity() == 0 &&
      experts_->reads_device_offsets()) {
    expert_offsets_ = ctx.Empty({e + 1}, DType::kI64);
    ops::CountOffsets(ctx, counts, expert_offsets_);
    expert_counts_.clear();
    return absl::OkStatus();
  }
  if (etp_exchange_) {
    Tensor mine = counts;  // rows per local expert: all experts are local without EP
    if (dispatcher_) {
      mine = plan_counts_.Narrow(0, e + ep_size, local);
      ops::SumSourceCounts(ctx, received.View({ep_->size(), local}), mine);
    }
    SM_RETURN_IF_ERROR(etp_exchange_->ExchangeCounts(ctx, mine, group));
  }

  // The layer's one host read of a step (documented in the header).
  const std::vector<int64_t> host = ReadHostInts(ctx, plan_counts_);
  const absl::Span<const int64_t> all(host);
  expert_counts_.assign(host.begin(), host.begin() + e);
  if (dispatcher_) {
    SM_RETURN_IF_ERROR(
        dispatcher_->Plan(ctx, received, all.subspan(0, e), all.subspan(e, ep_size)));
    expert_counts_ = dispatcher_->local_counts();
  }
  if (etp_exchange_) {
    SM_RETURN_IF_ERROR(
        etp_exchange_->Plan(ctx, group, all.subspan(e + ep_size + local_size, etp_size)));
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
  forward_assignments_ = tokens * top_k_;
  // The router's logits decide the routing: it reads n in the master's
  // dtype, a copy of bf16 activations unless it takes them as they are
  // (its f32 products on bf16 parts).
  const bool router_bf16 = router_->takes_bf16_input() && n.dtype() == DType::kBF16;
  SM_RETURN_IF_ERROR(router_->Forward(ctx, router_bf16 ? n : InDType(ctx, n, dtype_)));
  SM_RETURN_IF_ERROR(PlanCounts(ctx));
  permuted_y_ = ctx.Empty({tokens * top_k_, hidden_}, n.dtype());
  if (fuse_permute_ && expert_offsets_.defined()) {
    // moe.fuse_permute: the first expert GEMMs read the permuted rows from n
    // through the permutation; no permuted copy is written.
    experts_->ForwardAllRowsGathered(ctx, n, permuter_->perm_slot(), top_k_, expert_offsets_,
                                     permuted_y_);
  } else {
    Tensor permuted_x = ctx.Empty(permuted_y_.shape(), n.dtype());
    permuter_->Permute(ctx, n, permuted_x);
    if (dispatcher_) {
      const Shape rows{dispatcher_->received_rows(), hidden_};
      Tensor expert_x = ctx.Empty(rows, n.dtype());
      Tensor expert_y = ctx.Empty(rows, n.dtype());
      SM_RETURN_IF_ERROR(dispatcher_->Dispatch(ctx, permuted_x, expert_x));
      SM_RETURN_IF_ERROR(RunExperts(ctx, expert_x, expert_counts_, expert_y));
      SM_RETURN_IF_ERROR(dispatcher_->Combine(ctx, expert_y, permuted_y_));
    } else {
      SM_RETURN_IF_ERROR(RunExperts(ctx, permuted_x, expert_counts_, permuted_y_));
    }
  }
  ops::Zero(ctx, out);
  permuter_->Unpermute(ctx, permuted_y_, router_->weights(), out);

  if (shared_experts_) {
    // Every shared expert sees every token: rows s*N + t of the tiled input,
    // summed back per token.
    shared_gather_ = ctx.Empty({num_shared_ * tokens}, DType::kI32);
    shared_slots_ = ctx.Empty({tokens, num_shared_}, DType::kI32);
    ops::TiledRowIndex(ctx, num_shared_, shared_gather_, shared_slots_);
    // One shared expert's tiled input is n itself: no copy.
    Tensor x_sh = n;
    if (num_shared_ > 1) {
      x_sh = ctx.Empty({num_shared_ * tokens, hidden_}, n.dtype());
      ops::GatherRows(ctx, n, shared_gather_, 1, x_sh);
    }
    Tensor y_sh = ctx.Empty(x_sh.shape(), n.dtype());
    shared_experts_->Forward(ctx, x_sh, std::vector<int64_t>(num_shared_, tokens), y_sh);
    ops::CombineSlots(ctx, y_sh, shared_slots_, Tensor(), out);
  }
  return absl::OkStatus();
}

Status MoeLayer::Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                          double loss_grad_scale) {
  SM_CHECK_MSG(d_out.shape() == n_.shape() && d_n.shape() == n_.shape(),
               "MoeLayer::Backward: d_out ", d_out.DebugString(), " d_n ", d_n.DebugString(),
               " for n ", n_.DebugString());
  SM_CHECK_MSG(step_counts_.defined(), "MoeLayer::Backward before PrepareStep");
  // A Backward marks its Forward as a training micro-batch of this step.
  ops::AccumulateExpertLoads(ctx, forward_loads_, forward_assignments_, step_counts_);
  ops::Axpy(ctx, 1.0, router_->losses(), step_losses_);
  // Again at each replay when this Backward is captured into a CUDA graph.
  ctx.HostEffect([this] {
    ++step_micro_batches_;
    reduced_ = false;
  });
  const DType dt = n_.dtype();
  Tensor d_permuted_y = ctx.Empty(permuted_y_.shape(), dt);
  Tensor d_weights = ctx.Empty(router_->weights().shape(), router_->weights().dtype());
  permuter_->UnpermuteBackward(ctx, d_out, permuted_y_, router_->weights(), d_permuted_y,
                               d_weights);
  Tensor d_permuted_x = ctx.Empty(permuted_y_.shape(), dt);
  if (dispatcher_) {
    // The mirror of Forward: gradients of the outputs travel like the inputs
    // did (Dispatch), gradients of the inputs like the outputs did (Combine).
    const Shape rows{dispatcher_->received_rows(), hidden_};
    Tensor d_expert_y = ctx.Empty(rows, dt);
    Tensor d_expert_x = ctx.Empty(rows, dt);
    SM_RETURN_IF_ERROR(dispatcher_->Dispatch(ctx, d_permuted_y, d_expert_y));
    SM_RETURN_IF_ERROR(RunExpertsBackward(ctx, d_expert_y, d_expert_x));
    SM_RETURN_IF_ERROR(dispatcher_->Combine(ctx, d_expert_x, d_permuted_x));
  } else {
    SM_RETURN_IF_ERROR(RunExpertsBackward(ctx, d_permuted_y, d_permuted_x));
  }
  // The router's d_n in its own dtype (or bf16 where it took bf16 n), then
  // the rows' gradients added in.
  const bool router_bf16 = router_->takes_bf16_input() && d_n.dtype() == DType::kBF16;
  const Tensor d_n_router =
      d_n.dtype() == dtype_ || router_bf16 ? d_n : ctx.Empty(d_n.shape(), dtype_);
  router_->Backward(ctx, d_weights, loss_grad_scale, d_n_router);
  if (!d_n_router.SharesDataWith(d_n)) ops::Copy(ctx, d_n_router, d_n);
  permuter_->PermuteBackward(ctx, d_permuted_x, d_n);
  if (shared_experts_) {
    const int64_t rows = shared_gather_.numel();
    Tensor d_y_sh = d_out;
    if (num_shared_ > 1) {
      d_y_sh = ctx.Empty({rows, hidden_}, dt);
      ops::GatherRows(ctx, d_out, shared_gather_, 1, d_y_sh);
    }
    Tensor d_x_sh = ctx.Empty({rows, hidden_}, dt);
    shared_experts_->Backward(ctx, d_y_sh, d_x_sh);
    ops::CombineSlots(ctx, d_x_sh, shared_slots_, Tensor(), d_n);
  }
  return absl::OkStatus();
}

Status MoeLayer::RunExperts(const ExecContext& ctx, const Tensor& x,
                            const std::vector<int64_t>& counts, const Tensor& y) {
  if (expert_offsets_.defined()) {
    experts_->ForwardAllRows(ctx, x, expert_offsets_, y);
    return absl::OkStatus();
  }
  if (!etp_exchange_) {
    experts_->Forward(ctx, x, counts, y);
    return absl::OkStatus();
  }
  // Every ETP rank runs every row of the group on its F slice; the partial
  // outputs are summed back to the rows' owner.
  const Shape rows{etp_exchange_->group_rows(), hidden_};
  Tensor group_x = ctx.Empty(rows, x.dtype());
  Tensor group_y = ctx.Empty(rows, x.dtype());
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
  Tensor group_d_y = ctx.Empty(rows, d_y.dtype());
  Tensor group_d_x = ctx.Empty(rows, d_y.dtype());
  SM_RETURN_IF_ERROR(etp_exchange_->Gather(ctx, d_y, group_d_y));
  experts_->Backward(ctx, group_d_y, group_d_x);
  return etp_exchange_->ScatterReduce(ctx, group_d_x, d_x);
}

Status MoeLayer::FinishBackward(const ExecContext& ctx) {
  SM_RETURN_IF_ERROR(router_->FinishBackward(ctx));
  SM_RETURN_IF_ERROR(experts_->FinishBackward(ctx));
  if (shared_experts_) SM_RETURN_IF_ERROR(shared_experts_->FinishBackward(ctx));
  if (shared_group_) SM_RETURN_IF_ERROR(shared_group_->Backward(ctx));
  if (own_group_) SM_RETURN_IF_ERROR(own_group_->Backward(ctx));
  return absl::OkStatus();
}

bool MoeLayer::has_expert_bias() const { return router_->has_expert_bias(); }

Status MoeLayer::UpdateExpertBias(const ExecContext& ctx, const Tensor& skip) {
  if (!router_->has_expert_bias()) return absl::OkStatus();
  SM_RETURN_IF_ERROR(ReduceStepStats(ctx, {this}));
  router_->UpdateExpertBias(ctx, reduced_counts_.Narrow(0, 0, num_experts_), skip);
  return absl::OkStatus();
}

Status MoeLayer::ReduceStepStats(const ExecContext& ctx, const std::vector<MoeLayer*>& layers) {
  std::vector<MoeLayer*> pending;
  for (MoeLayer* l : layers) {
    if (!l->step_counts_.defined()) l->ResetStepStats(ctx, DType::kF64);
    if (!l->reduced_) pending.push_back(l);
  }
  if (pending.empty()) return absl::OkStatus();
  const std::vector<Communicator*>& comms = pending.front()->loads_comms_;
  int64_t total = 0;
  for (MoeLayer* l : pending) {
    SM_CHECK_MSG(l->loads_comms_ == comms,
                 "MoeLayer::ReduceStepStats: layers of different process groups");
    total += l->step_counts_.numel();
  }
  if (comms.empty()) {
    for (MoeLayer* l : pending) {
      l->reduced_counts_ = l->step_counts_;
      l->reduced_ = true;
    }
    return absl::OkStatus();
  }
  // Every pending layer's [E + 1] counts in one buffer: one all-reduce per
  // replica group (tp then dp: every rank of the stage once).
  Tensor all = ctx.Empty({total}, DType::kI64);
  int64_t at = 0;
  for (MoeLayer* l : pending) {
    ops::Copy(ctx, l->step_counts_, all.Narrow(0, at, l->step_counts_.numel()));
    at += l->step_counts_.numel();
  }
  for (Communicator* c : comms) {
    SM_RETURN_IF_ERROR(WithContext(c->AllReduce(ctx, all), "MoE step statistics"));
  }
  at = 0;
  for (MoeLayer* l : pending) {
    l->reduced_counts_ = all.Narrow(0, at, l->step_counts_.numel());
    at += l->step_counts_.numel();
    l->reduced_ = true;
  }
  return absl::OkStatus();
}

StatusOr<std::vector<MoeLayerStats>> MoeLayer::StepStats(const ExecContext& ctx,
                                                         const std::vector<MoeLayer*>& layers) {
  SM_RETURN_IF_ERROR(ReduceStepStats(ctx, layers));
  std::vector<MoeLayerStats> out(layers.size());
  if (layers.empty()) return out;
  // Every layer's reduced counts and step losses side by side: two host reads.
  int64_t total = 0;
  for (MoeLayer* l : layers) total += l->reduced_counts_.numel();
  const DType loss_dtype = layers.front()->step_losses_.dtype();
  Tensor counts = ctx.Empty({total}, DType::kI64);
  Tensor losses = ctx.Empty({2 * static_cast<int64_t>(layers.size())}, loss_dtype);
  int64_t at = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const MoeLayer& l = *layers[i];
    SM_CHECK_MSG(l.step_losses_.dtype() == loss_dtype,
                 "MoeLayer::StepStats: layers of different compute dtypes");
    ops::Copy(ctx, l.reduced_counts_, counts.Narrow(0, at, l.reduced_counts_.numel()));
    ops::Copy(ctx, l.step_losses_, losses.Narrow(0, 2 * static_cast<int64_t>(i), 2));
    at += l.reduced_counts_.numel();
  }
  const std::vector<int64_t> c = ReadHostInts(ctx, counts);
  const std::vector<double> v = ReadHostDoubles(ctx, losses);
  at = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    const MoeLayer& l = *layers[i];
    const int e = l.num_experts_;
    MoeLayerStats& s = out[i];
    s.tokens_per_expert.assign(c.begin() + at, c.begin() + at + e);
    s.dropped_tokens = c[at + e];
    at += e + 1;
    int64_t kept = 0;
    for (int64_t load : s.tokens_per_expert) kept += load;
    const double mean = static_cast<double>(kept) / e;
    double var = 0;
    for (int64_t load : s.tokens_per_expert) {
      const double d = static_cast<double>(load) - mean;
      var += d * d;
    }
    s.load_cv = mean > 0 ? std::sqrt(var / e) / mean : 0.0;
    const double n = std::max(1, l.step_micro_batches_);
    s.aux_loss = v[2 * i] / n;
    s.z_loss = v[2 * i + 1] / n;
  }
  return out;
}

StatusOr<MoeLayerStats> MoeLayer::step_stats(const ExecContext& ctx) {
  SM_ASSIGN_OR_RETURN(std::vector<MoeLayerStats> s, StepStats(ctx, {this}));
  return s.front();
}

const Tensor& MoeLayer::losses() const { return router_->losses(); }
Tensor MoeLayer::aux_loss() const { return router_->aux_loss(); }
Tensor MoeLayer::z_loss() const { return router_->z_loss(); }
const Tensor& MoeLayer::expert_ids() const { return router_->expert_ids(); }
Status MoeLayer::ForceRouting(const ExecContext& ctx, const Tensor& expert_ids) {
  return router_->ForceSelection(ctx, expert_ids);
}

// The one place a MoE layer's per-Forward state is listed: the routing and
// its plan, the inputs and outputs the Backward reads, and this Forward's
// loads and losses (Backward adds those to the step statistics, so a
// restored Forward counts once, when its Backward runs).
void MoeLayer::VisitForwardCache(ForwardCacheStash& stash) {
  for (Tensor* t :
       {&n_, &permuted_y_, &shared_gather_, &shared_slots_, &plan_counts_, &forward_loads_}) {
    stash.Visit(*t);
  }
  stash.Visit(expert_counts_);
  stash.Visit(forward_assignments_);
  router_->VisitForwardCache(stash);
  permuter_->VisitForwardCache(stash);
  if (dispatcher_) dispatcher_->VisitForwardCache(stash);
  if (etp_exchange_) etp_exchange_->VisitForwardCache(stash);
  experts_->VisitForwardCache(stash);
  if (shared_experts_) shared_experts_->VisitForwardCache(stash);
}

}  // namespace scalemoe
