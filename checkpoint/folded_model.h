// The model a checkpoint holds, with its scale vectors folded into the
// weights (shared/SCALE_VECTORS.md, "Cost"), in a neutral layout that
// checkpoint/hf_writer.h names for one Hugging Face architecture.
//
// Folded: every Input-Norm γ feeding a linear map (shared attn_norm/ffn_norm
// scale, per-branch γ_q/γ_k/γ_v, γ_gate/γ_up of the MLP and of every routed
// and shared expert, the router's γ) into the columns of that map, every
// output-side u into its rows: W_eff = diag(u) · W · diag(γ), OR's γ = β·α
// (or its normalized form) formed first. The input norms then have weight 1.
// Kept as norm weights (they cannot be folded, or folding would untie the
// head): the per-head q/k norm scales (ones when the norm has no scale, under
// mode NONE) and the final norm's γ (so a tied head stays the embedding).
// Not representable (refused earlier by the architecture choice): a per-head
// v norm and sandwich norms.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "checkpoint/hf_architecture.h"
#include "configs/scalemoe.pb.h"
#include "core/params.h"
#include "core/tensor.h"

namespace scalemoe::checkpoint {

// One SwiGLU MLP: down(silu(gate x) ⊙ up x). Shapes [F, C], [F, C], [C, F].
struct SwiGlu {
  Tensor gate, up, down;
};

struct FoldedLayer {
  Tensor q, k, v, o;      // [H·D, C], [KV·D, C], [KV·D, C], [C, H·D]
  Tensor q_norm, k_norm;  // [D] per-head RMSNorm weights; undefined without the norms
  bool moe = false;
  SwiGlu mlp;              // dense layers
  Tensor router;           // [E, C] MoE layers
  Tensor expert_bias;      // [E] selection-only bias; undefined without
  std::vector<SwiGlu> experts;
  // The S shared experts as ONE SwiGLU of S·F_s hidden units (gate/up rows
  // stacked, down columns concatenated: the same sum); undefined without.
  SwiGlu shared;
};

struct FoldedModel {
  Tensor embedding;   // [V, C]
  Tensor head;        // [V, C] untied LM head; undefined when tied (the head IS the embedding)
  Tensor final_norm;  // [C] the final norm's γ (ones without a scale)
  std::vector<FoldedLayer> layers;
};

// `tensors`: every MODEL tensor of a checkpoint of `cfg` (whole, f32).
// `features` must come from the same checkpoint (model_features.h) and have
// been accepted by SelectHfArchitecture. `specs`: the model's ParamSpecs;
// each scale vector's ScaleVectorInfo says which weight it folds into.
// Unimplemented when a tensor is left over (a parameter this export does
// not know how to fold).
StatusOr<FoldedModel> FoldModel(std::map<std::string, Tensor> tensors, const config::RunConfig& cfg,
                                const ModelFeatures& features, const std::vector<ParamSpec>& specs);

}  // namespace scalemoe::checkpoint
