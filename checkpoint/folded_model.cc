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

// What the model's ParamSpecs say about its scale vectors: each effective
// vector's parts (a plain γ, or β and α), and the vectors folding into each
// weight, by side.
struct FoldPlan {
  struct Vector {
    std::string plain, alpha, beta;  // part names; empty if absent
  };
  struct Fold {
    std::string vector;
    FoldSide side;
  };
  std::map<std::string, Vector> vectors;
  std::map<std::string, std::vector<Fold>> into;  // weight -> its folds

  // Weights the export writes as they are (a lookup table, a head that may
  // be tied to it) take no fold: their vector stays a norm weight.
  static FoldPlan Of(const std::vector<ParamSpec>& specs) {
    std::set<std::string> as_is;
    for (const ParamSpec& s : specs) {
      if (s.role == ParamRole::kEmbedding || s.role == ParamRole::kLmHead) as_is.insert(s.name);
    }
    FoldPlan plan;
    for (const ParamSpec& s : specs) {
      if (!IsScaleVector(s.role)) continue;
      const ScaleVectorInfo& info = s.scale_vector;
      Vector& v = plan.vectors[info.vector];
      (info.part == VectorPart::kPlain   ? v.plain
       : info.part == VectorPart::kAlpha ? v.alpha
                                         : v.beta) = s.name;
      if (info.part == VectorPart::kBeta) continue;  // α records the same folds
      for (const FoldTarget& t : info.folds_into) {
        if (!as_is.count(t.weight)) plan.into[t.weight].push_back({info.vector, t.side});
      }
    }
    return plan;
  }
};

// The checkpoint's tensors, and which of them were used (every one must be).
class Params {
 public:
  Params(std::map<std::string, Tensor> tensors, const std::vector<ParamSpec>& specs,
         Reparam reparam)
      : tensors_(std::move(tensors)), plan_(FoldPlan::Of(specs)), reparam_(reparam) {}

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
  // The effective scale vector `vector` (plain, or β·α); nullopt if the
  // model has no such vector.
  StatusOr<std::optional<Tensor>> Gamma(const std::string& vector) {
    auto it = plan_.vectors.find(vector);
    if (it == plan_.vectors.end()) return std::optional<Tensor>();
    const FoldPlan::Vector& v = it->second;
    if (!v.plain.empty()) {
      SM_ASSIGN_OR_RETURN(Tensor plain, Require(v.plain));
      return std::optional<Tensor>(plain);
    }
    SM_ASSIGN_OR_RETURN(const Tensor alpha, Require(v.alpha));
    SM_ASSIGN_OR_RETURN(const Tensor beta, Require(v.beta));
    double scale = beta.At(0);
    if (reparam_ == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
      double sq = 0;
      for (double a : alpha.ToVector()) sq += a * a;
      scale *= std::sqrt(static_cast<double>(alpha.numel()) / sq);
    }
    Tensor gamma = alpha.Clone();
    ops::Scale(ExecContext::Cpu(), scale, gamma);
    return std::optional<Tensor>(gamma);
  }
  // The product of the vectors folding into `weight` on `side` (nullopt: none).
  StatusOr<std::optional<Tensor>> Folded(const std::string& weight, FoldSide side) {
    std::optional<Tensor> out;
    auto it = plan_.into.find(weight);
    if (it == plan_.into.end()) return out;
    for (const FoldPlan::Fold& f : it->second) {
      if (f.side != side) continue;
      SM_ASSIGN_OR_RETURN(std::optional<Tensor> g, Gamma(f.vector));
      if (!g)
        return absl::NotFoundError(absl::StrCat("export: no tensor for vector '", f.vector, "'"));
      if (out) {  // two vectors on one side: their product
        const Tensor row = out->View({1, out->numel()});
        ops::ScaleRowsCols(ExecContext::Cpu(), row, Tensor(), *g, row);
      } else {
        out = g->Clone();
      }
    }
    return out;
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
  FoldPlan plan_;
  Reparam reparam_;
  std::set<std::string> used_;
};

Tensor Ones(int64_t n) {
  Tensor t = Tensor::Empty({n}, DType::kF32);
  t.Fill(1.0);
  return t;
}

// diag(u) · W · diag(γ) of weight `w`, with every γ and u the ParamSpecs
// fold into it, by the model's own op.
StatusOr<Tensor> Project(Params& params, const std::string& w) {
  SM_ASSIGN_OR_RETURN(Tensor weight, params.Require(w));
  SM_ASSIGN_OR_RETURN(const std::optional<Tensor> gamma, params.Folded(w, FoldSide::kColumns));
  SM_ASSIGN_OR_RETURN(const std::optional<Tensor> u, params.Folded(w, FoldSide::kRows));
  Tensor out = Tensor::Empty(weight.shape(), DType::kF32);
  ops::ScaleRowsCols(ExecContext::Cpu(), weight, u.value_or(Tensor()), gamma.value_or(Tensor()),
                     out);
  return out;
}

// The SwiGLU under `prefix` ("layers.L.mlp." or an expert's).
StatusOr<SwiGlu> FoldSwiGlu(Params& params, const std::string& prefix) {
  SwiGlu out;
  SM_ASSIGN_OR_RETURN(out.gate, Project(params, prefix + "w_gate"));
  SM_ASSIGN_OR_RETURN(out.up, Project(params, prefix + "w_up"));
  SM_ASSIGN_OR_RETURN(out.down, Project(params, prefix + "w_down"));
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
// or ones when the norm has no scale (mode NONE). These stay norm weights.
StatusOr<Tensor> HeadNorm(Params& params, const std::string& attn, const std::string& b,
                          int64_t head_dim) {
  for (const std::string& name : {attn + "dnp_" + b + ".scale", attn + b + "_norm.scale"}) {
    SM_ASSIGN_OR_RETURN(std::optional<Tensor> g, params.Gamma(name));
    if (g) return *g;
  }
  return Ones(head_dim);
}

StatusOr<FoldedLayer> FoldLayer(Params& params, const config::RunConfig& cfg,
                                const ModelFeatures& features, int l) {
  const std::string p = absl::StrCat("layers.", l, ".");
  const std::string attn = p + "attn.";
  FoldedLayer out;
  SM_ASSIGN_OR_RETURN(out.q, Project(params, attn + "w_q"));
  SM_ASSIGN_OR_RETURN(out.k, Project(params, attn + "w_k"));
  SM_ASSIGN_OR_RETURN(out.v, Project(params, attn + "w_v"));
  SM_ASSIGN_OR_RETURN(out.o, Project(params, attn + "w_o"));
  if (features.head_qk_norm) {
    const int64_t head_dim = cfg.model().hidden_size() / cfg.model().num_heads();
    SM_ASSIGN_OR_RETURN(out.q_norm, HeadNorm(params, attn, "q", head_dim));
    SM_ASSIGN_OR_RETURN(out.k_norm, HeadNorm(params, attn, "k", head_dim));
  }
  out.moe = features.moe_layers[l];
  if (!out.moe) {
    SM_ASSIGN_OR_RETURN(out.mlp, FoldSwiGlu(params, p + "mlp."));
    return out;
  }
  const std::string moe = p + "moe.";
  SM_ASSIGN_OR_RETURN(out.router, Project(params, moe + "router.weight"));
  if (std::optional<Tensor> bias = params.Take(moe + "router.expert_bias")) out.expert_bias = *bias;
  for (int e = 0; e < features.routed_experts; ++e) {
    SM_ASSIGN_OR_RETURN(SwiGlu expert, FoldSwiGlu(params, absl::StrCat(moe, "experts.", e, ".")));
    out.experts.push_back(std::move(expert));
  }
  std::vector<SwiGlu> shared;
  for (int s = 0; s < features.shared_experts; ++s) {
    SM_ASSIGN_OR_RETURN(SwiGlu expert,
                        FoldSwiGlu(params, absl::StrCat(moe, "shared_experts.", s, ".")));
    shared.push_back(std::move(expert));
  }
  if (!shared.empty()) out.shared = Concatenate(shared);
  return out;
}

}  // namespace

StatusOr<FoldedModel> FoldModel(std::map<std::string, Tensor> tensors, const config::RunConfig& cfg,
                                const ModelFeatures& features,
                                const std::vector<ParamSpec>& specs) {
  if (features.head_v_norm || features.sandwich_norm) {
    return absl::InvalidArgumentError(
        "export: a per-head v norm or sandwich norms cannot be folded into any weight");
  }
  Params params(std::move(tensors), specs, cfg.scale_vectors().reparam());
  FoldedModel out;
  for (int l = 0; l < cfg.model().num_layers(); ++l) {
    SM_ASSIGN_OR_RETURN(FoldedLayer layer, FoldLayer(params, cfg, features, l));
    out.layers.push_back(std::move(layer));
  }
  SM_ASSIGN_OR_RETURN(out.embedding, params.Require("embedding.weight"));
  if (std::optional<Tensor> head = params.Take("lm_head.weight")) out.head = *head;
  // The final γ feeds the head, which is written as it is (it may be tied).
  SM_ASSIGN_OR_RETURN(const std::optional<Tensor> final_gamma, params.Gamma("final_norm.scale"));
  out.final_norm = final_gamma ? *final_gamma : Ones(out.embedding.dim(1));
  if (std::vector<std::string> unused = params.Unused(); !unused.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "export: no Hugging Face tensor for model tensor '", unused.front(), "' (and ",
        unused.size() - 1, " more); extend checkpoint/folded_model.cc"));
  }
  return out;
}

}  // namespace scalemoe::checkpoint
