// MoeLayer: one MoE FFN sublayer (Megatron's stages behind small seams):
//   route (moe/router.h) -> permute (moe/token_permuter.h) -> experts
//   (moe/grouped_experts.h) -> unpermute/combine, plus optional shared experts.
//
// The layer owns the Input-Norm scale vectors of everything it feeds (router
// γ, every routed/shared expert's γ_gate/γ_up) through norm/branch_scales.h,
// and the experts' output-side vectors under DUAL placement. Gradient
// contract: Backward overwrites d_n and accumulates (+=) parameter gradients;
// folded-weight gradients are turned into parameter gradients only in
// FinishBackward (once per step).
//
// Host synchronisation: at most ONE device->host read per Forward and none in
// Backward — none at all when every expert is on this rank (no EP, no ETP),
// no token is dropped (capacity_factor 0) and the experts run as grouped
// GEMMs: their row offsets are then scanned on the device (ops::CountOffsets)
// and nothing on the host depends on the counts. Otherwise Forward builds
// every count it needs on the device — this rank's per-expert counts
// (TokenPermuter), under EP the exchanged counts matrix
// (TokenDispatcher::ExchangeCounts), under ETP the group's (ExpertTpExchange::
// ExchangeCounts) — in one i64 buffer, and reads it with one ctx.ToHost
// (MoeLayer::PlanCounts, the one place the layer reads host values in a
// step): the host copy sizes the per-expert GEMMs and the all-to-alls; every
// index (permutation, expert<->received and ETP group orders, the shared
// experts' rows) is built on the device from the device counts. The aux/z
// losses stay [1] device tensors; the statistics accumulate on the device
// (see "Statistics" below).
//
// Expert parallelism (ProcessGroups::ep of size EP > 1): this rank creates
// and runs only the experts it owns, [r*E/EP, (r+1)*E/EP) (global names and
// ParamLayout.expert unchanged); the router, the Input-Norm vectors that are
// not per expert and the shared experts are replicated. Between permute and
// the experts a TokenDispatcher (moe/token_dispatcher.h) exchanges counts and
// rows over the EP group, and mirrors it before the combine; Backward sends
// the rows' gradients the opposite way. What EP changes and what it does not:
// - Outputs, d_n and the aux/z losses of rank r equal the single-rank layer's
//   on rank r's tokens: routing, losses and capacity are local (capacity is
//   ceil(cf·N_local·K/E) per expert per source rank, so an owner may get up
//   to EP times that many rows of one expert).
// - An owned expert's parameter gradient collects the rows of every EP rank,
//   i.e. it already is the SUM over the EP group of what each rank's tokens
//   contribute; replicated parameters hold only this rank's share (a shared
//   γ also receives the owned experts' contribution from every rank's rows).
//   Summed over the ranks (the DP/EDP gradient reduction), both give the
//   single-rank gradient of the union of the tokens.
// - Step statistics are global once reduced: the per-expert loads and drop
//   counts of the step are all-reduced (sum) over the TP and then the DP
//   group (every replica of the router: the whole pipeline stage) ONCE PER
//   STEP, when they are first needed (ReduceStepStats: the expert-bias
//   update or the trainer's log), so every rank reports, and updates the
//   replicated expert bias from, the same loads — whatever TP, EP and EDP are.
// - A failed collective's Status is returned (naming the exchange) by
//   PrepareStep, Forward, Backward and FinishBackward.
//
// Tensor parallelism (ProcessGroups::tp of size TP > 1): the model splits a
// micro-batch's tokens over the TP group: each TP rank passes its own N rows
// (rank r: rows [r*N, (r+1)*N) of the micro-batch, every rank the same N).
// The reference is the single-rank layer on the N·TP rows in TP rank order.
// - Routing, permutation, the shared experts and capacity are per rank
//   (capacity = ceil(cf·N·K/E) of the LOCAL rows, as under EP).
// - The aux and z losses are the micro-batch's (moe/router.h: f_e from top-k
//   counts summed over TP, denominators N·TP); each rank's Backward adds the
//   gradient of its own additive share; aux_loss()/z_loss() hold the whole
//   value, identical on every TP rank.
// - Every parameter that is not a routed expert's (router weight, the
//   Input-Norm γ's that are not per routed expert, shared experts' weights
//   and u's) is replicated with layout.tp_partial_grad: this rank's rows give
//   a share, which the model sums over TP (parallel/tp_grad_reduce.h) before
//   the DP reduction.
// Expert tensor parallelism (ProcessGroups::etp of size ETP > 1): every
// routed expert's FFN is split on F over ETP (moe/grouped_experts.h gives the
// layouts; moe.expert_ffn_hidden_size must divide by ETP). After the EP
// dispatch (or the permute when EP = 1) an ExpertTpExchange
// (moe/expert_tp_exchange.h) gathers the rows of every ETP rank of the group,
// the experts run on their F slice, and the partial outputs are summed back
// to the rows' owners; Backward mirrors it. The ETP group need not be the TP
// group (tp=1, etp=2 makes two DP ranks, with different tokens, share the
// experts). Per-routed-expert γ's and u_down are replicated over ETP with
// tp_partial_grad (tp_group kExpert: summed over ETP). A replicated vector
// shared with the routed experts (SHARED mode's "<norm>.scale") collects the
// F-slice shares too; the TP then DP sum covers every rank once, so it comes
// out whole.
// The ParamRegistry's ShardCoords must be built from the same groups.
// A null ProcessGroups or groups of one are exactly the single-rank layer.
//
// Statistics: every Backward marks its Forward as a training micro-batch of
// the step and adds, on the device, that Forward's per-expert loads (after
// capacity drops) and dropped assignments to an [E + 1] i64 step tensor
// (ops::AccumulateExpertLoads) and its (aux, z) to a [2] tensor; PrepareStep
// starts them from zero. ReduceStepStats sums the loads over the router's
// replica groups once per step (the static form does it for several layers
// with one all-reduce per group); UpdateExpertBias reads the reduced loads
// on the device; StepStats produces host values (MoeLayerStats) for the log,
// reading with ctx.ToHost then.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/forward_cache.h"
#include "core/params.h"
#include "core/tensor.h"

namespace scalemoe {

class BranchScales;
class Communicator;
class ExpertTpExchange;
class GroupedExperts;
class Router;
class TokenDispatcher;
class TokenPermuter;
struct ProcessGroups;

// Statistics of a step, for metrics (host values, produced only when the
// trainer logs: MoeLayer::StepStats).
struct MoeLayerStats {
  // [E] all experts, after drops, summed over every router replica (tp, dp)
  std::vector<int64_t> tokens_per_expert;
  int64_t dropped_tokens = 0;              // (token, expert) assignments dropped by capacity
  double load_cv = 0;                      // coefficient of variation of tokens_per_expert
  double aux_loss = 0;                     // coefficient-weighted load-balancing loss
  double z_loss = 0;                       // coefficient-weighted router z-loss
};

// One MoE FFN sublayer: router -> permute -> experts -> unpermute/combine,
// plus optional shared experts. Input is the pre-FFN NORMALIZED activation
// n = x / rms(x) WITHOUT any γ: the layer owns its Input-Norm scale vectors
// (router γ, every expert's γ_gate/γ_up, shared experts' γ) through
// norm/branch_scales.h; in SHARED mode they are all the one vector named
// "<norm_name>.scale" (e.g. "layers.3.ffn_norm.scale").
class MoeLayer {
 public:
  // prefix e.g. "layers.3.moe"; norm_name e.g. "layers.3.ffn_norm"; layer = 3.
  // groups (not owned, may be null) supplies the TP, DP, EP and ETP groups;
  // it must outlive the layer.
  MoeLayer(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
           const std::string& prefix, const std::string& norm_name,
           const ProcessGroups* groups = nullptr);
  ~MoeLayer();
  MoeLayer(const MoeLayer&) = delete;
  MoeLayer& operator=(const MoeLayer&) = delete;

  // Once per optimizer step, after parameters changed (and before the first
  // Forward): computes effective γ's and folds them into the expert weights.
  Status PrepareStep(const ExecContext& ctx, DType dtype);
  // out[N, C] = MoE(n[N, C]); computes the aux and z losses of this call and
  // caches what Backward needs. N = tokens of the micro-batch (under TP this
  // rank's share of them; see above).
  Status Forward(const ExecContext& ctx, const Tensor& n, const Tensor& out);
  // d_n overwritten; parameter gradients accumulated. The aux/z losses' own
  // gradients are added scaled by `loss_grad_scale` (the same factor the
  // trainer applies to the total loss, e.g. 1/num_micro_batches).
  Status Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                  double loss_grad_scale);
  // Once per step after the last Backward: turns accumulated folded-weight
  // gradients into parameter (and γ) gradients.
  Status FinishBackward(const ExecContext& ctx);
  // Moves this module's per-Forward members (and its children's) into or
  // out of `stash` (core/forward_cache.h).
  void VisitForwardCache(ForwardCacheStash& stash);
  // Aux-loss-free balancing: nudge the expert bias from this step's loads,
  // reduced over the router's replicas (ReduceStepStats if not yet done this
  // step), on the device. No-op unless moe.expert_bias. Call after the
  // optimizer step; fails when the reduction fails.
  // skip: the step's non-finite flag (i32[1], may be undefined); set, the
  // bias stays as the parameters do.
  Status UpdateExpertBias(const ExecContext& ctx, const Tensor& skip = Tensor());
  bool has_expert_bias() const;

  // The whole micro-batch's losses of the last Forward, coefficient-weighted:
  // device tensors in the compute dtype, losses() [2] = (aux, z), and its
  // [1] views (add them into a device loss accumulator; read them with
  // ctx.ToHost only where a host value is needed).
  const Tensor& losses() const;
  Tensor aux_loss() const;
  Tensor z_loss() const;
  // [E] i64 on the device: this rank's kept assignments per global expert in
  // the last Forward (before any reduction over replicas).
  const Tensor& forward_loads() const { return forward_loads_; }
  // Tests only (precision checks that hold the routing fixed): the last
  // Forward's selection, expert_ids [N, K] i32 on the device, and a
  // selection every later Forward uses instead of the router's top-k
  // (Router::ForceSelection; undefined clears).
  const Tensor& expert_ids() const;
  Status ForceRouting(const ExecContext& ctx, const Tensor& expert_ids);

  // Sums the step's loads and drops (since PrepareStep; every micro-batch
  // that had a Backward, evaluation and pipeline recomputation excluded)
  // over every replica of the router, for each layer not yet reduced this
  // step: one all-reduce per replica group (tp, dp) of all those layers'
  // statistics at once. The layers must share their process groups (one
  // model stage's). Every rank of those groups must call it alike.
  static Status ReduceStepStats(const ExecContext& ctx, const std::vector<MoeLayer*>& layers);
  // Host values of the step's statistics of each layer (reduced first, as
  // above): loads and drops summed over the micro-batches and the router's
  // replicas, aux and z the mean over this replica's micro-batches. Two
  // ctx.ToHost reads for all the layers: for the trainer's log only.
  static StatusOr<std::vector<MoeLayerStats>> StepStats(const ExecContext& ctx,
                                                        const std::vector<MoeLayer*>& layers);
  StatusOr<MoeLayerStats> step_stats(const ExecContext& ctx);  // StepStats of this layer
  // Routed experts held by this rank: global [first_local_expert(),
  // first_local_expert() + num_local_experts()).
  int first_local_expert() const { return first_expert_; }
  int num_local_experts() const { return num_local_; }

 private:
  // Builds every count of this Forward on the device (see the header) and
  // reads them with the layer's one host read; plans the EP dispatch and
  // the ETP exchange. Sets expert_counts_ (rows per local expert) — or,
  // when every expert is local and none drops a token, only the device
  // offsets expert_offsets_, without a host read.
  Status PlanCounts(const ExecContext& ctx);
  // The per-step statistics tensors, from zero (PrepareStep), or created
  // zero when a step's statistics are asked for before any PrepareStep.
  void ResetStepStats(const ExecContext& ctx, DType dtype);
  // The routed experts on x [M, C] (counts per local expert), through the
  // ETP exchange when there is one (planned by PlanCounts); and their backward.
  Status RunExperts(const ExecContext& ctx, const Tensor& x, const std::vector<int64_t>& counts,
                    const Tensor& y);
  Status RunExpertsBackward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x);

  DType dtype_ = DType::kF32;  // the master weights' (PrepareStep): the router's
  int64_t hidden_;       // C
  int num_experts_;      // E
  int top_k_;            // K
  int num_shared_;       // S
  // moe.fuse_permute: where the experts read device offsets (no EP, ETP or
  // capacity), their first GEMMs gather the permuted rows from n
  // (GroupedExperts::ForwardAllRowsGathered) instead of a permuted copy.
  bool fuse_permute_ = false;
  Communicator* ep_ = nullptr;   // EP group when EP > 1, else null (single-rank path)
  Communicator* tp_ = nullptr;   // TP group when TP > 1 (splits the micro-batch's tokens)
  Communicator* etp_ = nullptr;  // ETP group when ETP > 1 (splits the routed experts' F)
  // The router's replica groups (tp, dp) that have several ranks: expert
  // loads are summed over them, so the statistics and the expert-bias update
  // see every token of the step and stay identical on all replicas.
  std::vector<Communicator*> loads_comms_;
  int first_expert_ = 0;        // owned routed experts [first_expert_, + num_local_)
  int num_local_ = 0;
  std::unique_ptr<BranchScales> shared_group_;  // branches without their own γ
  std::unique_ptr<BranchScales> own_group_;     // branches with their own γ (HG)
  std::unique_ptr<Router> router_;
  std::unique_ptr<TokenPermuter> permuter_;
  std::unique_ptr<TokenDispatcher> dispatcher_;  // null unless EP > 1
  std::unique_ptr<ExpertTpExchange> etp_exchange_;  // null unless ETP > 1
  std::unique_ptr<GroupedExperts> experts_;
  std::unique_ptr<GroupedExperts> shared_experts_;  // null when S == 0
  // Forward cache (what Backward needs).
  Tensor n_;              // [N, C] input
  Tensor permuted_y_;     // [N*K, C] routed expert outputs, permuted order
  Tensor shared_gather_;  // [S*N] i32 token of each shared-expert row
  Tensor shared_slots_;   // [N, S] i32 shared-expert row of each (token, expert)
  Tensor plan_counts_;    // i64: [E] this rank's kept loads | EP: [EP*E_local] | ETP: ...
  Tensor forward_loads_;  // [E] i64 view of plan_counts_: this Forward's kept loads
  std::vector<int64_t> expert_counts_;  // rows per local expert (host, sizes the GEMMs)
  // Without a host read (PlanCounts): the experts' row offsets [E + 1] on
  // the device, for this Forward's RunExperts; undefined otherwise.
  Tensor expert_offsets_;
  int64_t forward_assignments_ = 0;     // N*K of the last Forward
  // This step's training micro-batches (reset by PrepareStep, added by
  // Backward), on the device.
  Tensor step_counts_;    // [E + 1] i64: loads per expert, dropped; this rank's
  Tensor step_losses_;    // [2] Σ (aux, z) over this replica's micro-batches
  int step_micro_batches_ = 0;
  // step_counts_ summed over the router's replicas (step_counts_ itself when
  // there are none); valid until the next Backward or PrepareStep.
  Tensor reduced_counts_;
  bool reduced_ = false;
};

}  // namespace scalemoe
