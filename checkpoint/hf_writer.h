// A FoldedModel under one Hugging Face architecture's own names and config
// keys: the tensors of model.safetensors and the body of config.json.
//
// Tensor names are those of the architecture's checkpoints on the Hub, which
// transformers 4.x loads as they are and transformers 5 loads through its
// conversion mapping (conversion_mapping.py: per-expert weights merged into
// the fused 3-D experts.gate_up_proj / experts.down_proj, Mixtral's
// block_sparse_moe renamed to mlp), with no missing or unexpected key:
//   every architecture  model.embed_tokens.weight, model.norm.weight,
//     lm_head.weight (untied only: a tied checkpoint has none),
//     model.layers.L.{input_layernorm,post_attention_layernorm}.weight (ones),
//     model.layers.L.self_attn.{q,k,v,o}_proj.weight,
//     model.layers.L.self_attn.{q,k}_norm.weight (Qwen3, Qwen3-MoE; GLM-4-MoE
//       with use_qk_norm), dense layers model.layers.L.mlp.{gate,up,down}_proj.weight
//   Mixtral    model.layers.L.block_sparse_moe.gate.weight,
//              model.layers.L.block_sparse_moe.experts.E.{w1,w3,w2}.weight (gate, up, down)
//   Qwen3-MoE  model.layers.L.mlp.gate.weight,
//              model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight
//   GLM-4-MoE  the Qwen3-MoE names, model.layers.L.mlp.gate.e_score_correction_bias
//              (always; zeros without an expert bias; f32 whatever --dtype, as
//              transformers keeps it), model.layers.L.mlp.shared_experts.{gate,up,down}_proj.weight
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "checkpoint/folded_model.h"
#include "checkpoint/hf_architecture.h"
#include "configs/scalemoe.pb.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {

struct HfTensor {
  std::string name;
  Tensor value;          // f32
  bool keep_f32 = false; // written as F32 even in a bf16 export
};

std::vector<HfTensor> HfTensors(const FoldedModel& model, const HfArchitecture& arch);

// Token ids for config.json; -1 = unknown (no tokenizer exported).
struct SpecialTokens {
  int64_t bos = -1, eos = -1;
};

// config.json for `arch`. `dtype_name`: "float32" or "bfloat16".
nlohmann::json HfConfig(const FoldedModel& model, const config::RunConfig& cfg,
                        const HfArchitecture& arch, const std::string& dtype_name,
                        const SpecialTokens& tokens);

}  // namespace scalemoe::checkpoint
