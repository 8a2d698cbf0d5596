#include "checkpoint/model_features.h"

#include "absl/strings/str_cat.h"

namespace scalemoe::checkpoint {
namespace {

using Shapes = std::map<std::string, Shape>;

// A scale vector stored plain or as OR's β·α (norm/scale_vector.h).
bool HasVector(const Shapes& shapes, const std::string& name) {
  return shapes.count(name) > 0 || shapes.count(name + ".alpha") > 0;
}

const Shape* Find(const Shapes& shapes, const std::string& name) {
  const auto it = shapes.find(name);
  return it == shapes.end() ? nullptr : &it->second;
}

// Rows of the SwiGLU gate weights "<prefix>.<i>.w_gate" for i = 0, 1, ...
// while they exist.
std::vector<int64_t> GateRows(const Shapes& shapes, const std::string& prefix) {
  std::vector<int64_t> rows;
  while (const Shape* s = Find(shapes, absl::StrCat(prefix, ".", rows.size(), ".w_gate"))) {
    rows.push_back((*s)[0]);
  }
  return rows;
}

}  // namespace

StatusOr<ModelFeatures> ModelFeaturesOf(const config::RunConfig& cfg, const Shapes& shapes) {
  const config::ModelConfig& m = cfg.model();
  const config::ScaleVectorConfig& sv = cfg.scale_vectors();
  const config::MoEConfig& moe = cfg.moe();
  ModelFeatures f;
  // The norms are present in every layer or in none: layer 0 tells. Under
  // mode NONE they hold no tensor, so the config tells too.
  const bool dnp = sv.placement() == config::ScaleVectorConfig::DUAL_NORMALIZED;
  f.head_qk_norm = dnp || m.qk_norm() || HasVector(shapes, "layers.0.attn.dnp_q.scale") ||
                   HasVector(shapes, "layers.0.attn.q_norm.scale");
  f.head_v_norm = (dnp && sv.dnp_normalize_v()) || HasVector(shapes, "layers.0.attn.dnp_v.scale");
  f.sandwich_norm = m.sandwich_norm() || HasVector(shapes, "layers.0.post_attn_norm.scale");

  for (int l = 0; l < m.num_layers(); ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    const Shape* router = Find(shapes, p + "moe.router.weight");
    if (router == nullptr && Find(shapes, p + "mlp.w_gate") == nullptr) {
      return absl::DataLossError(absl::StrCat("export: the checkpoint holds neither ", p,
                                              "mlp.w_gate nor ", p, "moe.router.weight"));
    }
    f.moe_layers.push_back(router != nullptr);
    if (router == nullptr) continue;
    const std::vector<int64_t> routed = GateRows(shapes, p + "moe.experts");
    if (static_cast<int64_t>(routed.size()) != (*router)[0]) {
      return absl::DataLossError(absl::StrCat("export: ", p, "moe.router.weight has ", (*router)[0],
                                              " rows but the checkpoint holds ", routed.size(),
                                              " experts of layer ", l));
    }
    for (int64_t rows : routed) {
      if (rows != routed[0] || (f.routed_hidden != 0 && rows != f.routed_hidden)) {
        return absl::DataLossError(
            absl::StrCat("export: routed experts of different sizes (", rows, " and ", routed[0],
                         " in layer ", l, "); every routed expert must have the same F"));
      }
    }
    f.routed_experts = static_cast<int>(routed.size());
    f.routed_hidden = routed.empty() ? 0 : routed[0];
    const std::vector<int64_t> shared = GateRows(shapes, p + "moe.shared_experts");
    f.shared_experts = static_cast<int>(shared.size());
    f.shared_hidden = 0;
    for (int64_t rows : shared) f.shared_hidden += rows;
    f.expert_bias = f.expert_bias || Find(shapes, p + "moe.router.expert_bias") != nullptr;
  }
  f.score = moe.score_function() == config::MoEConfig::SIGMOID ? RouterScore::kSigmoid
                                                                : RouterScore::kSoftmax;
  f.normalize_topk = moe.normalize_topk();
  f.expert_bias = f.expert_bias || (f.moe() && moe.expert_bias());
  f.capacity_drops = moe.capacity_factor() > 0;
  return f;
}

}  // namespace scalemoe::checkpoint
