// `scalemoe export`: a checkpoint as a Hugging Face model directory
// (model.safetensors, config.json, tokenizer files) under the architecture
// that computes it exactly, scale vectors folded into the weights. The
// choice and the mapping live in checkpoint/ (export.h, hf_architecture.h).
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/export.h"
#include "core/philox.h"
#include "launch/commands.h"
#include "launch/config.h"
#include "launch/flags.h"
#include "model/model.h"
#include "nlohmann/json.hpp"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe export --checkpoint DIR --out DIR [--dtype fp32|bf16] [--tokenizer DIR]\n"
    "       scalemoe export --checkpoint DIR --out DIR --unfolded [--dtype fp32|bf16]\n"
    "  Writes a Hugging Face model directory that transformers loads exactly\n"
    "  (AutoModelForCausalLM.from_pretrained(OUT): no missing or unexpected key,\n"
    "  the trainer's loss), every rank shard assembled:\n"
    "    OUT/model.safetensors, OUT/config.json under the first architecture that\n"
    "    computes the model exactly, with its own tensor names and config keys:\n"
    "      dense, no per-head q/k norms                 LlamaForCausalLM\n"
    "      dense, per-head q/k norms (DNP or qk_norm)   Qwen3ForCausalLM\n"
    "      MoE, softmax routing, no q/k norms           MixtralForCausalLM\n"
    "      MoE, softmax routing, q/k norms              Qwen3MoeForCausalLM\n"
    "      MoE, sigmoid routing with shared experts     Glm4MoeForCausalLM\n"
    "    A model none of them computes (sandwich norms, a v norm, capacity\n"
    "    dropping, an expert bias on softmax scores, ...) is refused, with the\n"
    "    reason for every architecture considered (checkpoint/hf_architecture.cc).\n"
    "    With --tokenizer DIR (GPT-2 format: encoder.json, vocab.bpe): also\n"
    "    tokenizer.json, vocab.json, merges.txt, tokenizer_config.json for AutoTokenizer.\n"
    "  Folded: every Input-Norm gamma (shared or per-branch, router, experts; OR's\n"
    "  beta*alpha formed first) into the columns of the next weight, every\n"
    "  output-side u into its rows; the input norms export as ones. The per-head\n"
    "  q/k norm scales and the final norm's gamma stay norm weights (so a tied\n"
    "  head stays tied: tie_word_embeddings is true only then).\n"
    "  Also writes OUT/scalemoe_reference.json (the trainer's own cross-entropy on\n"
    "  a fixed token batch) and OUT/scalemoe_export.json (source and choice).\n"
    "  Check: /usr/bin/python3 scripts/export_check.py OUT (numpy, each\n"
    "  architecture's forward as transformers defines it) or\n"
    "  python3 scripts/hf_load_check.py OUT (transformers itself).\n"
    "  --unfolded: instead, every model tensor as the trainer holds it (its global\n"
    "  names and shapes, scale vectors NOT folded: gamma, u, beta, alpha as\n"
    "  parameters) in OUT/model.safetensors, the run's config in\n"
    "  OUT/config.textproto; any model. For starting another implementation from\n"
    "  the trainer's weights (checkpoint.save_initial writes step_0;\n"
    "  bench/torch_train.py --init-from OUT).\n";

int Fail(const std::string& message, int code) {
  std::fprintf(stderr, "scalemoe export: %s\n", message.c_str());
  return code;
}

// The trainer's cross-entropy on a fixed batch (2 sequences of up to 16+1
// Philox-drawn tokens), from the checkpoint itself, so that any independent
// implementation can check the export against it.
Status WriteReferenceLoss(const std::string& checkpoint_dir, const std::string& out_dir) {
  SM_ASSIGN_OR_RETURN(std::string text, checkpoint::CheckpointConfigText(checkpoint_dir));
  SM_ASSIGN_OR_RETURN(config::RunConfig cfg, ParseConfigText(text, checkpoint_dir));
  ParamRegistry registry;
  MoeTransformer model(registry, cfg);
  SM_RETURN_IF_ERROR(registry.Materialize(0, DType::kF32, Device::kCPU));
  checkpoint::LoadRequest request;
  for (const auto& p : registry.params()) {
    request.targets.push_back({p->spec.name, p->value, {}, {}, checkpoint::TensorRole::kModel});
  }
  SM_RETURN_IF_ERROR(checkpoint::LoadCheckpoint(checkpoint_dir, request).status());
  const int64_t batch = 2, seq = std::min<int64_t>(16, cfg.model().seq_length());
  std::vector<int32_t> inputs(batch * seq), targets(batch * seq);
  nlohmann::json sequences = nlohmann::json::array();
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> s(seq + 1);
    for (int64_t t = 0; t <= seq; ++t) {
      s[t] = static_cast<int32_t>(PhiloxUniform(1234, b, t) * cfg.model().vocab_size());
    }
    std::copy(s.begin(), s.end() - 1, inputs.begin() + b * seq);
    std::copy(s.begin() + 1, s.end(), targets.begin() + b * seq);
    sequences.push_back(s);
  }
  const Shape shape = {batch, seq};
  const ExecContext ctx;
  SM_RETURN_IF_ERROR(model.PrepareStep(ctx));
  SM_ASSIGN_OR_RETURN(
      const LossBreakdown loss,
      model.Evaluate(ctx, Tensor::FromBlob(inputs.data(), shape, DType::kI32, Device::kCPU),
                     Tensor::FromBlob(targets.data(), shape, DType::kI32, Device::kCPU)));
  std::ofstream out(out_dir + "/scalemoe_reference.json");
  out << nlohmann::json{{"tokens", sequences}, {"cross_entropy", loss.cross_entropy}}.dump()
      << "\n";
  if (!out) return absl::InternalError("cannot write " + out_dir + "/scalemoe_reference.json");
  return absl::OkStatus();
}

int RunExport(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags =
      ParseFlags(args, {{"checkpoint"}, {"out"}, {"dtype"}, {"tokenizer"}, {"unfolded", false}});
  if (!flags.ok()) return Fail(std::string(flags.status().message()) + "\n" + kUsage, 2);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  checkpoint::ExportOptions options;
  options.checkpoint_dir = flags->Get("checkpoint");
  options.out_dir = flags->Get("out");
  options.tokenizer_dir = flags->Get("tokenizer");
  options.model_specs = WholeModelSpecs;
  options.unfolded = flags->Has("unfolded");
  if (options.unfolded && !options.tokenizer_dir.empty()) {
    return Fail("--tokenizer writes Hugging Face tokenizer files; drop it with --unfolded", 2);
  }
  const std::string dtype = flags->Get("dtype", "fp32");
  if (dtype != "fp32" && dtype != "bf16") {
    return Fail("--dtype '" + dtype + "' must be fp32 or bf16", 2);
  }
  options.dtype = dtype == "fp32" ? DType::kF32 : DType::kBF16;
  if (options.checkpoint_dir.empty() || options.out_dir.empty()) {
    return Fail(std::string("--checkpoint and --out are required\n") + kUsage, 2);
  }
  StatusOr<checkpoint::ExportResult> result = checkpoint::ExportCheckpoint(options);
  if (!result.ok()) return Fail(std::string(result.status().message()), 1);
  if (Status s = WriteReferenceLoss(options.checkpoint_dir, options.out_dir); !s.ok()) {
    return Fail(std::string(s.message()), 1);
  }
  std::printf("exported %s to %s as %s (%s embeddings)\n", options.checkpoint_dir.c_str(),
              options.out_dir.c_str(), result->architecture.c_str(),
              result->tied_embeddings ? "tied" : "untied");
  return 0;
}

}  // namespace

Subcommand ExportCommand() {
  return {"export", "write a checkpoint as a Hugging Face model that transformers loads exactly", RunExport};
}

}  // namespace scalemoe
