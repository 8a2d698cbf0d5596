// Export of a checkpoint as a plain Hugging Face-style model directory:
//   model.safetensors  every model tensor, consolidated (all rank shards
//                      assembled), scale vectors folded, HF names
//   config.json        HF-style keys + a "scalemoe" block (strategy, extras)
//   tokenizer files    copied from --tokenizer DIR when given
//
// Folding (shared/SCALE_VECTORS.md, "Cost"): every Input-Norm γ (shared
// attn_norm/ffn_norm scale, per-branch γ_q/γ_k/γ_v, γ_gate/γ_up, router γ,
// expert γ's, final_norm) and every output-side u is folded as
// W_eff = diag(u) · W · diag(γ) with ops::ScaleRowsCols, OR's γ = β·α (or the
// normalized variant) formed first. The exported input norms then have weight
// 1 and are written as ones under their HF names.
//
// Names: embedding.weight -> model.embed_tokens.weight;
//   layers.L.attn.w_{q,k,v,o} -> model.layers.L.self_attn.{q,k,v,o}_proj.weight;
//   layers.L.mlp.w_{gate,up,down} -> model.layers.L.mlp.{gate,up,down}_proj.weight;
//   layers.L.moe.router.weight -> model.layers.L.mlp.gate.weight;
//   layers.L.moe.experts.E.w_X -> model.layers.L.mlp.experts.E.X_proj.weight;
//   layers.L.moe.shared_experts.S.w_X -> model.layers.L.mlp.shared_experts.S.X_proj.weight;
//   final_norm -> model.norm.weight (ones); lm_head.weight (always written:
//   a folded final γ unties it from the embedding).
//   Norms: model.layers.L.input_layernorm.weight and
//   model.layers.L.post_attention_layernorm.weight (the pre-FFN norm, Llama
//   convention), both ones.
// Not foldable (exported as extra tensors, listed in config.json
// "scalemoe.extra_tensors"):
//   DNP / QK per-head norm scales -> model.layers.L.self_attn.{q,k,v}_norm.weight
//     (RMSNorm over head_dim applied after the projection, before RoPE);
//   sandwich norms layers.L.post_{attn,ffn}_norm ->
//     model.layers.L.post_attention_output_norm.weight /
//     model.layers.L.post_feedforward_layernorm.weight (applied to the
//     sublayer output before the residual add).
#pragma once

#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace scalemoe::checkpoint {

struct ExportOptions {
  std::string checkpoint_dir;  // a step_N directory
  std::string out_dir;         // created if missing
  DType dtype = DType::kF32;   // kF32 or kBF16
  std::string tokenizer_dir;   // optional: every regular file is copied
};

Status ExportCheckpoint(const ExportOptions& options);

}  // namespace scalemoe::checkpoint
