// `scalemoe export`: a checkpoint as a plain Hugging Face-style model
// directory (model.safetensors, config.json, tokenizer files), scale vectors
// folded into the weights. The mapping lives in checkpoint/export.h.
#include <cstdio>
#include <string>
#include <vector>

#include "checkpoint/export.h"
#include "launch/commands.h"

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
  checkpoint::ExportOptions options;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
    const size_t eq = arg.find('=');
    const bool inline_value = arg.rfind("--", 0) == 0 && eq != std::string::npos;
    const std::string flag = inline_value ? arg.substr(0, eq) : arg;
    if (flag != "--checkpoint" && flag != "--out" && flag != "--dtype" && flag != "--tokenizer") {
      return Fail("unknown argument '" + arg + "'\n" + kUsage, 2);
    }
    if (!inline_value && i + 1 >= args.size()) return Fail(flag + " needs a value\n" + kUsage, 2);
    const std::string value = inline_value ? arg.substr(eq + 1) : args[++i];
    if (flag == "--checkpoint") {
      options.checkpoint_dir = value;
    } else if (flag == "--out") {
      options.out_dir = value;
    } else if (flag == "--tokenizer") {
      options.tokenizer_dir = value;
    } else if (value == "fp32" || value == "bf16") {
      options.dtype = value == "fp32" ? DType::kF32 : DType::kBF16;
    } else {
      return Fail("--dtype '" + value + "' must be fp32 or bf16", 2);
    }
  }
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
