// ScaleOptions: the one reader of the scale-vector options
// (RunConfig.scale_vectors, SCALE_VECTORS.md). Every question about them is
// answered here and nowhere else: whether a norm has a γ at all, which
// branch groups get their own γ (HG), which projections carry an output-side
// u or a normalized output (DP/DNP; an empty dual_projections means {Q, K,
// V}), fold or per-token, the reparameterisation and the decay policy.
// model/ (attention, MLP, head), moe/ (router, experts), norm/ (BranchScales,
// ScaledRmsNorm) and optim/ (decay) all ask it, so they cannot disagree.
// It lives in norm/ because both model/ and moe/ need it and norm/ sits
// below both (DESIGN.md: launch -> model/optim -> moe/norm -> parallel).
//
// ValidateScaleVectorConfig holds the rules on these options; launch calls
// it once, up front (core/config_problems.h).
#pragma once

#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/config_problems.h"

namespace scalemoe {

using Projection = config::ScaleVectorConfig::Projection;
using Reparam = config::ScaleVectorConfig::Reparam;
using DecayPolicy = config::ScaleVectorConfig::DecayPolicy;

// How a linear map applies its vectors: folded into the weight
// (W_eff = diag(u)·W·diag(γ)) once per step and kept, folded just in time
// (formed before each GEMM that reads it and released after: the forward's
// and the backward's, per micro-batch), or per token on the activations.
enum class ScalePath : uint8_t { kFold = 0, kPerToken = 1, kFoldJustInTime = 2 };

// The groups of branches that the hg_* flags switch to their own γ.
enum class BranchGroup : uint8_t {
  kAttention,      // γ_q, γ_k, γ_v (hg_attention)
  kFfn,            // γ_gate, γ_up of a dense MLP (hg_ffn)
  kRouter,         // γ_router (hg_router)
  kExperts,        // γ_{e,gate}, γ_{e,up} of every routed expert (hg_experts)
  kSharedExperts,  // the same for shared experts (hg_shared_experts)
};

class ScaleOptions {
 public:
  explicit ScaleOptions(const config::ScaleVectorConfig& cfg) : cfg_(cfg) {}

  // Mode NONE: no γ, no u, no scale on any norm (normalizations stay).
  bool none() const { return cfg_.mode() == config::ScaleVectorConfig::NONE; }
  // Whether the branches of `group` each get their own Input-Norm γ: only
  // under PER_BRANCH and with the group's hg_* flag.
  bool OwnVectors(BranchGroup group) const;
  ScalePath path() const {
    if (!cfg_.fold_into_weights()) return ScalePath::kPerToken;
    return cfg_.fold_just_in_time() ? ScalePath::kFoldJustInTime : ScalePath::kFold;
  }
  // DNP replaces the output side of q and k (and v with dnp_normalize_v) by
  // a per-head RMSNorm with scale. Under mode NONE the norm stays, unscaled.
  bool NormalizedOutput(Projection p) const;
  // The projections that carry an output-side vector when DUAL placement
  // applies: dual_projections, or {Q, K, V} when it is empty.
  std::vector<Projection> DualProjections() const;
  // An output-side vector u on projection p: DUAL or DUAL_NORMALIZED
  // placement, p in DualProjections() and without a normalized output side;
  // never under mode NONE.
  bool OutputVector(Projection p) const;
  Reparam reparam() const { return cfg_.reparam(); }
  DecayPolicy decay_policy() const { return cfg_.decay_policy(); }

 private:
  config::ScaleVectorConfig cfg_;  // a copy: callers need not keep theirs
};

// Appends every broken scale_vectors rule to `problems`.
void ValidateScaleVectorConfig(const config::RunConfig& cfg, ConfigProblems& problems);

}  // namespace scalemoe
