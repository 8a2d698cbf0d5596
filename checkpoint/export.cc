#include "checkpoint/export.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/checkpoint_files.h"
#include "checkpoint/manifest_io.h"
#include "checkpoint/safetensors.h"
#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/ops.h"
#include "google/protobuf/text_format.h"
#include "nlohmann/json.hpp"

namespace scalemoe::checkpoint {
namespace {

namespace fs = std::filesystem;

// The checkpoint's model tensors (f32, whole) and which ones were exported.
class Params {
 public:
  Params(std::map<std::string, Tensor> tensors, config::ScaleVectorConfig::Reparam reparam)
      : tensors_(std::move(tensors)), reparam_(reparam) {}

  std::optional<Tensor> Take(const std::string& name) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return std::nullopt;
    used_.insert(name);
    return it->second;
  }
  // The effective scale vector stored under `name` (plain, or β·α).
  std::optional<Tensor> Gamma(const std::string& name) {
    if (std::optional<Tensor> plain = Take(name)) return plain;
    if (!tensors_.count(name + ".alpha") || !tensors_.count(name + ".beta")) return std::nullopt;
    const Tensor alpha = *Take(name + ".alpha");
    const double beta = Take(name + ".beta")->At(0);
    double scale = beta;
    if (reparam_ == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
      double sq = 0;
      for (double a : alpha.ToVector()) sq += a * a;
      scale *= std::sqrt(static_cast<double>(alpha.numel()) / sq);
    }
    Tensor gamma = alpha.Clone();
    ops::Scale(ExecContext::Cpu(), scale, gamma);
    return gamma;
  }
  std::optional<Tensor> FirstGamma(const std::vector<std::string>& names) {
    for (const std::string& n : names) {
      if (std::optional<Tensor> g = Gamma(n)) return g;
    }
    return std::nullopt;
  }
  std::vector<std::string> Unused() const {
    std::vector<std::string> out;
    for (const auto& [name, t] : tensors_) {
      if (!used_.count(name)) out.push_back(name);
    }
    return out;
  }

 private:
  std::map<std::string, Tensor> tensors_;
  config::ScaleVectorConfig::Reparam reparam_;
  std::set<std::string> used_;
};

// diag(u) · W · diag(γ), with the model's own op.
Tensor Fold(const Tensor& w, const std::optional<Tensor>& u, const std::optional<Tensor>& gamma) {
  Tensor out = Tensor::Empty(w.shape(), DType::kF32);
  ops::ScaleRowsCols(ExecContext::Cpu(), w, u.value_or(Tensor()), gamma.value_or(Tensor()), out);
  return out;
}

Tensor Ones(int64_t n) {
  Tensor t = Tensor::Empty({n}, DType::kF32);
  t.Fill(1.0);
  return t;
}

StatusOr<std::map<std::string, Tensor>> LoadWholeModel(const std::string& dir, const CheckpointManifest& manifest) {
  std::map<std::string, Tensor> tensors;
  LoadRequest request;
  for (const TensorEntry& e : manifest.tensors()) {
    if (e.role() != TensorEntry::MODEL || tensors.count(e.name())) continue;
    const Shape global(e.global_shape().begin(), e.global_shape().end());
    if (e.dtype() != "F32" && e.dtype() != "BF16") {
      return absl::UnimplementedError(absl::StrCat("export: model tensor '", e.name(), "' is ", e.dtype(),
                                                   "; only F32/BF16 model tensors can be exported"));
    }
    tensors[e.name()] = Tensor::Empty(global, DType::kF32);
    request.targets.push_back({e.name(), tensors[e.name()], {}, {}, TensorRole::kModel});
  }
  SM_RETURN_IF_ERROR(LoadCheckpoint(dir, request).status());
  return tensors;
}

// Exports one projection: W (required), folded with the first γ found and u.
Status Project(Params& params, std::map<std::string, Tensor>& out, const std::string& from,
               const std::string& to, const std::vector<std::string>& gammas, const std::string& u) {
  std::optional<Tensor> w = params.Take(from);
  if (!w) return absl::NotFoundError(absl::StrCat("export: the checkpoint has no '", from, "'"));
  std::optional<Tensor> g = params.FirstGamma(gammas);
  out[to] = Fold(*w, params.Gamma(u), g);
  return absl::OkStatus();
}

}  // namespace

Status ExportCheckpoint(const ExportOptions& options) {
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("export: --dtype must be fp32 or bf16");
  }
  SM_ASSIGN_OR_RETURN(CheckpointManifest manifest, ReadVerifiedManifest(options.checkpoint_dir));
  config::RunConfig cfg;
  if (!google::protobuf::TextFormat::ParseFromString(manifest.config_text(), &cfg)) {
    return absl::DataLossError(absl::StrCat("export: the config stored in ", options.checkpoint_dir,
                                            " does not parse as a RunConfig"));
  }
  SM_ASSIGN_OR_RETURN(auto whole, LoadWholeModel(options.checkpoint_dir, manifest));
  Params params(std::move(whole), cfg.scale_vectors().reparam());
  const config::ModelConfig& m = cfg.model();
  const config::MoEConfig& moe = cfg.moe();
  const int64_t c = m.hidden_size();

  std::map<std::string, Tensor> out;
  std::vector<std::string> extras;
  auto extra = [&](const std::vector<std::string>& from, const std::string& to) {
    if (std::optional<Tensor> g = params.FirstGamma(from)) {
      out[to] = *g;
      extras.push_back(to);
    }
  };
  int64_t moe_intermediate = 0;
  for (int l = 0; l < m.num_layers(); ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    const std::string h = absl::StrCat("model.layers.", l, ".");
    for (const char* b : {"q", "k", "v", "o"}) {
      const bool input_side = std::string(b) != "o";
      std::vector<std::string> gammas;
      if (input_side) gammas = {p + "attn.gamma_" + b, p + "attn_norm.scale"};
      SM_RETURN_IF_ERROR(Project(params, out, p + "attn.w_" + b, h + "self_attn." + b + "_proj.weight", gammas,
                                 p + "attn.u_" + b));
      if (input_side) extra({p + "attn.dnp_" + b + ".scale", p + "attn." + b + "_norm.scale"}, h + "self_attn." + b + "_norm.weight");
    }
    extra({p + "post_attn_norm.scale"}, h + "post_attention_output_norm.weight");
    extra({p + "post_ffn_norm.scale"}, h + "post_feedforward_layernorm.weight");
    out[h + "input_layernorm.weight"] = Ones(c);
    out[h + "post_attention_layernorm.weight"] = Ones(c);
    const std::string ffn_norm = p + "ffn_norm.scale";
    auto swiglu = [&](const std::string& from, const std::string& to) -> Status {
      for (const char* b : {"gate", "up", "down"}) {
        std::vector<std::string> gammas;
        if (std::string(b) != "down") gammas = {from + "gamma_" + b, ffn_norm};
        SM_RETURN_IF_ERROR(Project(params, out, from + "w_" + b, to + b + "_proj.weight", gammas, from + "u_" + b));
      }
      return absl::OkStatus();
    };
    if (params.Take(p + "mlp.w_gate")) {
      SM_RETURN_IF_ERROR(swiglu(p + "mlp.", h + "mlp."));
      continue;
    }
    SM_RETURN_IF_ERROR(Project(params, out, p + "moe.router.weight", h + "mlp.gate.weight",
                               {p + "moe.router.gamma", ffn_norm}, ""));
    for (int e = 0; e < moe.num_experts(); ++e) {
      SM_RETURN_IF_ERROR(swiglu(absl::StrCat(p, "moe.experts.", e, "."), absl::StrCat(h, "mlp.experts.", e, ".")));
      moe_intermediate = out[absl::StrCat(h, "mlp.experts.", e, ".up_proj.weight")].shape()[0];
    }
    for (int s = 0; s < moe.num_shared_experts(); ++s) {
      SM_RETURN_IF_ERROR(swiglu(absl::StrCat(p, "moe.shared_experts.", s, "."),
                                absl::StrCat(h, "mlp.shared_experts.", s, ".")));
    }
  }
  std::optional<Tensor> embedding = params.Take("embedding.weight");
  if (!embedding) return absl::NotFoundError("export: the checkpoint has no 'embedding.weight'");
  out["model.embed_tokens.weight"] = *embedding;
  std::optional<Tensor> head = params.Take("lm_head.weight");
  std::optional<Tensor> final_gamma = params.Gamma("final_norm.scale");
  out["lm_head.weight"] = Fold(head.value_or(*embedding), std::nullopt, final_gamma);
  out["model.norm.weight"] = Ones(c);
  if (std::vector<std::string> unused = params.Unused(); !unused.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "export: no Hugging Face name for model tensor '", unused.front(), "' (and ", unused.size() - 1,
        " more); extend the mapping in checkpoint/export.cc"));
  }

  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("export: cannot create ", options.out_dir, ": ", ec.message()));
  std::vector<std::pair<std::string, Tensor>> pairs;
  for (const auto& [name, t] : out) {
    Tensor converted = Tensor::Empty(t.shape(), options.dtype);
    converted.CopyFrom(t);
    pairs.emplace_back(name, converted);
  }
  SM_RETURN_IF_ERROR(WriteSafetensors((fs::path(options.out_dir) / "model.safetensors").string(), pairs,
                                      {{"format", "pt"}, {"scalemoe.step", absl::StrCat(manifest.step())}})
                         .status());

  const int kv_heads = m.num_kv_heads() > 0 ? m.num_kv_heads() : m.num_heads();
  std::string sv_text;
  google::protobuf::TextFormat::PrintToString(cfg.scale_vectors(), &sv_text);
  nlohmann::json j = {
      {"architectures", {moe.num_experts() > 0 ? "MixtralForCausalLM" : "LlamaForCausalLM"}},
      {"model_type", moe.num_experts() > 0 ? "mixtral" : "llama"},
      {"hidden_size", c},
      {"num_hidden_layers", m.num_layers()},
      {"num_attention_heads", m.num_heads()},
      {"num_key_value_heads", kv_heads},
      {"head_dim", c / m.num_heads()},
      {"intermediate_size", m.ffn_hidden_size()},
      {"moe_intermediate_size", moe_intermediate},
      {"num_experts", moe.num_experts()},
      {"num_local_experts", moe.num_experts()},
      {"num_experts_per_tok", moe.top_k()},
      {"num_shared_experts", moe.num_shared_experts()},
      {"first_k_dense_replace", moe.first_dense_layers()},
      {"moe_layer_freq", moe.moe_layer_frequency()},
      {"norm_topk_prob", moe.normalize_topk()},
      {"scoring_func", config::MoEConfig::ScoreFunction_Name(moe.score_function())},
      {"vocab_size", m.vocab_size()},
      {"max_position_embeddings", m.seq_length()},
      {"rope_theta", m.rope_theta()},
      {"rms_norm_eps", m.norm_eps()},
      {"tie_word_embeddings", false},
      {"torch_dtype", options.dtype == DType::kF32 ? "float32" : "bfloat16"},
      {"scalemoe",
       {{"step", manifest.step()},
        {"scale_vectors", sv_text},
        {"folded", "every Input-Norm gamma into W columns, every output-side u into W rows"},
        {"qk_norm", m.qk_norm()},
        {"sandwich_norm", m.sandwich_norm()},
        {"extra_tensors", extras}}},
  };
  SM_RETURN_IF_ERROR(WriteWholeFile((fs::path(options.out_dir) / "config.json").string(), j.dump(2) + "\n").status());

  if (!options.tokenizer_dir.empty()) {
    for (const fs::directory_entry& f : fs::directory_iterator(options.tokenizer_dir, ec)) {
      if (!f.is_regular_file()) continue;
      fs::copy_file(f.path(), fs::path(options.out_dir) / f.path().filename(),
                    fs::copy_options::overwrite_existing, ec);
      if (ec) return absl::PermissionDeniedError(absl::StrCat("export: cannot copy ", f.path().string(), ": ", ec.message()));
    }
    if (ec) return absl::NotFoundError(absl::StrCat("export: cannot read --tokenizer ", options.tokenizer_dir, ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe::checkpoint
