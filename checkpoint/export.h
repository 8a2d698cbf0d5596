// Export of a checkpoint as a Hugging Face model directory that
// AutoModelForCausalLM.from_pretrained(OUT) loads exactly (no missing or
// unexpected keys, the trainer's loss):
//   model.safetensors    every model tensor, consolidated (all rank shards
//                        assembled), scale vectors folded (folded_model.h),
//                        under the chosen architecture's names (hf_writer.h)
//   config.json          that architecture's own keys only
//   tokenizer files      from --tokenizer DIR (hf_tokenizer.h)
//   scalemoe_export.json the source step, strategy and architecture choice
// The architecture is the first of hf_architecture.h's table that computes
// the model's function exactly: Llama or Qwen3 (dense, without or with
// per-head q/k norms), Mixtral (softmax routing, no q/k norms), Qwen3-MoE
// (softmax routing with q/k norms, dense layers anywhere), GLM-4-MoE
// (sigmoid routing with shared experts, optional expert bias, q/k norms and
// leading dense layers). A model none of them computes is refused, with the
// reason for each architecture considered; nothing is written then.
//
// Unfolded (ExportOptions.unfolded): instead, every model tensor as the
// trainer holds it (consolidated, scale vectors NOT folded, the trainer's
// global names and shapes, e.g. layers.0.attn.gamma_q.beta) in
// model.safetensors, the resolved config in config.textproto, and
// scalemoe_export.json; any model, no architecture choice. For loading the
// trainer's weights into another implementation of the same model
// (bench/torch_train.py --init-from).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/dtype.h"
#include "core/params.h"
#include "core/status.h"

namespace scalemoe::checkpoint {

// The ParamSpecs of the whole model a config describes (launch builds the
// model; checkpoint/ sits below model/): which weight each scale vector
// folds into comes from them, not from parameter names.
using ModelSpecsFn = std::function<std::vector<ParamSpec>(const config::RunConfig&)>;

struct ExportOptions {
  std::string checkpoint_dir;  // a step_N directory
  std::string out_dir;         // created if missing
  DType dtype = DType::kF32;   // kF32 or kBF16
  std::string tokenizer_dir;   // optional: GPT-2 format (encoder.json, vocab.bpe)
  ModelSpecsFn model_specs;    // required unless unfolded
  bool unfolded = false;       // trainer names, nothing folded (see above)
};

// What was exported.
struct ExportResult {
  std::string architecture;  // e.g. "Qwen3MoeForCausalLM"; "unfolded" when unfolded
  bool tied_embeddings = false;
};

StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options);

}  // namespace scalemoe::checkpoint
