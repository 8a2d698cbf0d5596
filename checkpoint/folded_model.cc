#include "checkpoint/folded_model.h"

#include <cmath>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/context.h"
#include "core/ops.h"

namespace scalemoe::checkpoint {
namespace {

using Reparam = config::ScaleVectorConfig::Reparam;

// The checkpoint's tensors, and which of them were used (every one must be).
class Params {
 public:
  Params(std::map<std::string, Tensor> tensors, Reparam reparam)
      : tensors_(std::move(tensors)), reparam_(reparam) {}

  std::optional<Tensor> Take(const std::string& name) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) return std::nullopt;
    used_.insert(name);
    return it->second;
  }
  StatusOr<Tensor> Require(const std::string& name) {
    if (std::optional<Tensor> t = Take(name)) return *t;
    return absl::NotFoundError(absl::StrCat("export: the checkpoint has no '", name, "'"));
  }
  // The effective scale vector stored under `name` (plain, or β·α).
  std::optional<Tensor> Gamma(const std::string& name) {
    if (std::optional<Tensor> plain = Take(name)) return plain;
    if (!tensors_.count(name + ".alpha") || !tensors_.count(name + ".beta")) return std::nullopt;
    const Tensor alpha = *Take(name + ".alpha");
    double scale = Take(name + ".beta")->At(0);
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
  Reparam reparam_;
  std::set<std::string> used_;
};

Tensor Ones(int64_t n) {
  Tensor t = Tensor::Empty({n}, DType::kF32);
  t.Fill(1.0);
  return t;
}

// diag(u) · W · diag(γ) of weight `w`, γ the first of `gammas` held, with
// the model's own op.
StatusOr<Tensor> Project(Params& params, const std::string& w, const std::vector<std::string>& gammas,
                         const std::string& u) {
  SM_ASSIGN_OR_RETURN(Tensor weight, params.Require(w));
  const std::optional<Tensor> gamma = params.FirstGamma(gammas);
  const std::optional<Tensor> out_scale = params.Gamma(u);
  Tensor out = Tensor::Empty(weight.shape(), DType::kF32);
  ops::ScaleRowsCols(ExecContext::Cpu(), weight, out_scale.value_or(Tensor()), gamma.value_or(Tensor()),
                     out);
  return out;
}

// The SwiGLU under `prefix` ("layers.L.mlp." or an expert's), fed by `norm`.
StatusOr<SwiGlu> FoldSwiGlu(Params& params, const std::string& prefix, const std::string& norm) {
  SwiGlu out;
  SM_ASSIGN_OR_RETURN(out.gate, Project(params, prefix + "w_gate", {prefix + "gamma_gate", norm},
                                        prefix + "u_gate"));
  SM_ASSIGN_OR_RETURN(out.up, Project(params, prefix + "w_up", {prefix + "gamma_up", norm},
                                      prefix + "u_up"));
  SM_ASSIGN_OR_RETURN(out.down, Project(params, prefix + "w_down", {}, prefix + "u_down"));
  return out;
}

// Several SwiGLUs on one input as one: hidden units side by side.
SwiGlu Concatenate(const std::vector<SwiGlu>& parts) {
  int64_t hidden = 0;
  for (const SwiGlu& p : parts) hidden += p.gate.dim(0);
  const int64_t c = parts.front().gate.dim(1);
  SwiGlu out{Tensor::Empty({hidden, c}, DType::kF32), Tensor::Empty({hidden, c}, DType::kF32),
             Tensor::Empty({c, hidden}, DType::kF32)};
  int64_t at = 0;
  for (const SwiGlu& p : parts) {
    const int64_t f = p.gate.dim(0);
    out.gate.Narrow(0, at, f).CopyFrom(p.gate);
    out.up.Narrow(0, at, f).CopyFrom(p.up);
    out.down.Narrow(1, at, f).CopyFrom(p.down);
    at += f;
  }
  return out;
}

// The per-head norm of projection `b` ("q", "k"): its γ (DNP's or QK-norm's),
// or ones when the norm has no scale (mode NONE).
Tensor HeadNorm(Params& params, const std::string& attn, const std::string& b, int64_t head_dim) {
  std::optional<Tensor> g = params.FirstGamma({attn + "dnp_" + b + ".scale", attn + b + "_norm.scale"});
  return g ? *g : Ones(head_dim);
}

StatusOr<FoldedLayer> FoldLayer(Params& params, const config::RunConfig& cfg,
                                const ModelFeatures& features, int l) {
  const std::string p = absl::StrCat("layers.", l, ".");
  const std::string attn = p + "attn.";
  FoldedLayer out;
  Tensor* qkvo[] = {&out.q, &out.k, &out.v, &out.o};
  const char* names[] = {"q", "k", "v", "o"};
  for (int i = 0; i < 4; ++i) {
    const std::string b = names[i];
    std::vector<std::string> gammas;
    if (b != "o") gammas = {attn + "gamma_" + b, p + "attn_norm.scale"};
    SM_ASSIGN_OR_RETURN(*qkvo[i], Project(params, attn + "w_" + b, gammas, attn + "u_" + b));
  }
  if (features.head_qk_norm) {
    const int64_t head_dim = cfg.model().hidden_size() / cfg.model().num_heads();
    out.q_norm = HeadNorm(params, attn, "q", head_dim);
    out.k_norm = HeadNorm(params, attn, "k", head_dim);
  }
  const std::string ffn_norm = p + "ffn_norm.scale";
  out.moe = features.moe_layers[l];
  if (!out.moe) {
    SM_ASSIGN_OR_RETURN(out.mlp, FoldSwiGlu(params, p + "mlp.", ffn_norm));
    return out;
  }
  const std::string moe = p + "moe.";
  SM_ASSIGN_OR_RETURN(out.router, Project(params, moe + "router.weight", {moe + "router.gamma", ffn_norm}, ""));
  if (std::optional<Tensor> bias = params.Take(moe + "router.expert_bias")) out.expert_bias = *bias;
  for (int e = 0; e < features.routed_experts; ++e) {
    SM_ASSIGN_OR_RETURN(SwiGlu expert, FoldSwiGlu(params, absl::StrCat(moe, "experts.", e, "."), ffn_norm));
    out.experts.push_back(std::move(expert));
  }
  std::vector<SwiGlu> shared;
  for (int s = 0; s < features.shared_experts; ++s) {
    SM_ASSIGN_OR_RETURN(SwiGlu expert,
                        FoldSwiGlu(params, absl::StrCat(moe, "shared_experts.", s, "."), ffn_norm));
    shared.push_back(std::move(expert));
  }
  if (!shared.empty()) out.shared = Concatenate(shared);
  return out;
}

}  // namespace

StatusOr<FoldedModel> FoldModel(std::map<std::string, Tensor> tensors, const config::RunConfig& cfg,
                                const ModelFeatures& features) {
  if (features.head_v_norm || features.sandwich_norm) {
    return absl::InvalidArgumentError(
        "export: a per-head v norm or sandwich norms cannot be folded into any weight");
  }
  Params params(std::move(tensors), cfg.scale_vectors().reparam());
  FoldedModel out;
  for (int l = 0; l < cfg.model().num_layers(); ++l) {
    SM_ASSIGN_OR_RETURN(FoldedLayer layer, FoldLayer(params, cfg, features, l));
    out.layers.push_back(std::move(layer));
  }
  SM_ASSIGN_OR_RETURN(out.embedding, params.Require("embedding.weight"));
  if (std::optional<Tensor> head = params.Take("lm_head.weight")) out.head = *head;
  const std::optional<Tensor> final_gamma = params.Gamma("final_norm.scale");
  out.final_norm = final_gamma ? *final_gamma : Ones(out.embedding.dim(1));
  if (std::vector<std::string> unused = params.Unused(); !unused.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "export: no Hugging Face tensor for model tensor '", unused.front(), "' (and ",
        unused.size() - 1, " more); extend checkpoint/folded_model.cc"));
  }
  return out;
}

}  // namespace scalemoe::checkpoint
