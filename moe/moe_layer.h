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
// Host synchronisation: the per-expert token counts are read on the host once
// per Forward (they size the per-expert GEMMs and, under expert parallel, the
// all-to-all); the stats (losses, loads) are computed from the same read.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/params.h"
#include "core/tensor.h"

namespace scalemoe {

class BranchScales;
class GroupedExperts;
class Router;
class TokenPermuter;

// Statistics of the last Forward, for metrics (host values; computing them is
// the one documented host sync of the layer).
struct MoeLayerStats {
  std::vector<int64_t> tokens_per_expert;  // [E], after capacity drops
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
  MoeLayer(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
           const std::string& prefix, const std::string& norm_name);
  ~MoeLayer();
  MoeLayer(const MoeLayer&) = delete;
  MoeLayer& operator=(const MoeLayer&) = delete;

  // Once per optimizer step, after parameters changed (and before the first
  // Forward): computes effective γ's and folds them into the expert weights.
  void PrepareStep(const ExecContext& ctx, DType dtype);
  // out[N, C] = MoE(n[N, C]); computes the aux and z losses of this call and
  // caches what Backward needs. N = tokens of the micro-batch.
  void Forward(const ExecContext& ctx, const Tensor& n, const Tensor& out);
  // d_n overwritten; parameter gradients accumulated. The aux/z losses' own
  // gradients are added scaled by `loss_grad_scale` (the same factor the
  // trainer applies to the total loss, e.g. 1/num_micro_batches).
  void Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                double loss_grad_scale);
  // Once per step after the last Backward: turns accumulated folded-weight
  // gradients into parameter (and γ) gradients.
  void FinishBackward(const ExecContext& ctx);
  // Aux-loss-free balancing: nudge the expert bias from the last step's loads
  // (no-op unless moe.expert_bias). Call after the optimizer step.
  void UpdateExpertBias();

  double aux_loss() const;  // of the last Forward (coefficient-weighted)
  double z_loss() const;
  const MoeLayerStats& stats() const;

 private:
  // Logical Input-Norm branches: router, then (gate, up) per routed expert,
  // then (gate, up) per shared expert. Each maps to one BranchScales group.
  struct BranchRef {
    BranchScales* scales = nullptr;
    int index = 0;
  };
  const Tensor& Gamma(const BranchRef& b) const;
  const Tensor& DGamma(const BranchRef& b) const;

  int64_t hidden_;       // C
  int num_experts_;      // E
  int top_k_;            // K
  int num_shared_;       // S
  std::unique_ptr<BranchScales> shared_group_;  // branches without their own γ
  std::unique_ptr<BranchScales> own_group_;     // branches with their own γ (HG)
  BranchRef router_branch_;
  std::vector<BranchRef> expert_gate_, expert_up_;  // [E]
  std::vector<BranchRef> shared_gate_, shared_up_;  // [S]
  std::unique_ptr<Router> router_;
  std::unique_ptr<TokenPermuter> permuter_;
  std::unique_ptr<GroupedExperts> experts_;
  std::unique_ptr<GroupedExperts> shared_experts_;  // null when S == 0
  // Forward cache (what Backward needs).
  Tensor n_;             // [N, C] input
  Tensor permuted_y_;    // [N*K, C] routed expert outputs, permuted order
  Tensor shared_tiled_;  // [S*N] token index per shared-expert row
  MoeLayerStats stats_;
  std::vector<int64_t> step_loads_;  // [E] tokens per expert since the last bias update
};

}  // namespace scalemoe
