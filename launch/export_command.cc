// `scalemoe export`: a checkpoint as a plain Hugging Face-style model
// directory (model.safetensors, config.json, tokenizer files), scale vectors
// folded into the weights. The mapping lives in checkpoint/export.h.
#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint/export.h"
#include "launch/commands.h"
#include "launch/flags.h"

namespace scalemoe {
namespace {

constexpr char kUsage[] =
    "usage: scalemoe export --checkpoint DIR --out DIR [--dtype fp32|bf16] [--tokenizer DIR]\n"
    "  Writes OUT/model.safetensors (every rank shard assembled, HF names),\n"
    "  OUT/config.json and copies the files of --tokenizer DIR.\n"
    "  Folded: every Input-Norm gamma (shared or per-branch, router, experts,\n"
    "  final norm; OR's beta*alpha formed first) into the columns of the next\n"
    "  weight, every output-side u into its rows; input norms export as ones.\n"
    "  Not foldable, exported as extra tensors (config.json scalemoe.extra_tensors):\n"
    "    model.layers.L.self_attn.{q,k,v}_norm.weight   DNP / QK per-head RMSNorm\n"
    "        scales (over head_dim, after the projection, before RoPE)\n"
    "    model.layers.L.post_attention_output_norm.weight,\n"
    "    model.layers.L.post_feedforward_layernorm.weight  sandwich norms (on the\n"
    "        sublayer output, before the residual add)\n"
    "  Check an export with: python3 scripts/export_check.py OUT\n";

int Fail(const std::string& message, int code) {
  std::fprintf(stderr, "scalemoe export: %s\n", message.c_str());
  return code;
}

int RunExport(const std::vector<std::string>& args) {
  StatusOr<ParsedFlags> flags =
      ParseFlags(args, {{"checkpoint"}, {"out"}, {"dtype"}, {"tokenizer"}});
  if (!flags.ok()) return Fail(std::string(flags.status().message()) + "\n" + kUsage, 2);
  if (flags->help) {
    std::printf("%s", kUsage);
    return 0;
  }
  checkpoint::ExportOptions options;
  options.checkpoint_dir = flags->Get("checkpoint");
  options.out_dir = flags->Get("out");
  options.tokenizer_dir = flags->Get("tokenizer");
  const std::string dtype = flags->Get("dtype", "fp32");
  if (dtype != "fp32" && dtype != "bf16") {
    return Fail("--dtype '" + dtype + "' must be fp32 or bf16", 2);
  }
  options.dtype = dtype == "fp32" ? DType::kF32 : DType::kBF16;
  if (options.checkpoint_dir.empty() || options.out_dir.empty()) {
    return Fail(std::string("--checkpoint and --out are required\n") + kUsage, 2);
  }
  if (Status s = checkpoint::ExportCheckpoint(options); !s.ok()) return Fail(std::string(s.message()), 1);
  std::printf("exported %s to %s\n", options.checkpoint_dir.c_str(), options.out_dir.c_str());
  return 0;
}

}  // namespace

Subcommand ExportCommand() {
  return {"export", "write a checkpoint as a Hugging Face-style model (folded scale vectors)", RunExport};
}

}  // namespace scalemoe
