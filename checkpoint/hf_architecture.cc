#include "checkpoint/hf_architecture.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace scalemoe::checkpoint {
namespace {

constexpr Presence kNever = Presence::kNever;
constexpr Presence kAlways = Presence::kAlways;
constexpr Presence kOptional = Presence::kOptional;
constexpr RouterScore kSoftmax = RouterScore::kSoftmax;
constexpr RouterScore kSigmoid = RouterScore::kSigmoid;

// What transformers' implementation of each architecture computes (read from
// its modeling_*.py; scripts/export_check.py re-implements each in numpy):
// - All: pre-norm blocks, RMSNorm x·rsqrt(mean(x²)+eps)·w, rotate-half RoPE
//   over the whole head (GLM-4-MoE: partial_rotary_factor exported as 1),
//   GQA, SwiGLU MLPs, no biases (attention_bias exported false).
// - Mixtral: softmax router, top-k, always renormalised; every layer MoE.
// - Qwen3 / Qwen3-MoE: per-head q_norm/k_norm (head_dim) before RoPE, always;
//   Qwen3-MoE: softmax, top-k, renormalised iff norm_topk_prob; dense layers
//   anywhere (mlp_only_layers).
// - GLM-4-MoE: sigmoid scores, selection by scores + e_score_correction_bias
//   (n_group = topk_group = 1: no group restriction; its group score takes a
//   top-2, hence >= 2 experts), weights = scores (renormalised iff
//   norm_topk_prob) · routed_scaling_factor (1); ONE shared SwiGLU of
//   moe_intermediate_size · n_shared_experts added unweighted; the first
//   first_k_dense_replace layers dense; q/k norms iff use_qk_norm.
// None has a norm on v, sandwich norms or capacity dropping.
// clang-format off
constexpr MoeLayers kAll = MoeLayers::kAll, kLeading = MoeLayers::kAfterLeadingDense,
                    kAny = MoeLayers::kAny;
const std::vector<HfArchitecture> kArchitectures = {
// class                  type         moe    q/k norm   v norm  sandwich score     renorm     bias       shared   S·F_s%F min E layers    capacity
  {"LlamaForCausalLM",    "llama",     false, kNever,    kNever, kNever,  kSoftmax, kNever,    kNever,    kNever,  false,  0,    kAny,     false},
  {"Qwen3ForCausalLM",    "qwen3",     false, kAlways,   kNever, kNever,  kSoftmax, kNever,    kNever,    kNever,  false,  0,    kAny,     false},
  {"MixtralForCausalLM",  "mixtral",   true,  kNever,    kNever, kNever,  kSoftmax, kAlways,   kNever,    kNever,  false,  1,    kAll,     false},
  {"Qwen3MoeForCausalLM", "qwen3_moe", true,  kAlways,   kNever, kNever,  kSoftmax, kOptional, kNever,    kNever,  false,  1,    kAny,     false},
  {"Glm4MoeForCausalLM",  "glm4_moe",  true,  kOptional, kNever, kNever,  kSigmoid, kOptional, kOptional, kAlways, true,   2,    kLeading, false},
};
// clang-format on

// "" if `has` fits `presence`, else why not (`what` names the part, `field`
// the config field that turns it on or off).
std::string PresenceMismatch(Presence presence, bool has, const char* what, const char* field) {
  if (presence == kNever && has) return absl::StrCat("has no ", what, " (", field, ")");
  if (presence == kAlways && !has) return absl::StrCat("always has ", what, " (", field, ")");
  return "";
}

const char* ScoreName(RouterScore s) { return s == kSoftmax ? "softmax" : "sigmoid"; }

}  // namespace

bool ModelFeatures::moe() const {
  return std::any_of(moe_layers.begin(), moe_layers.end(), [](bool m) { return m; });
}

int ModelFeatures::LeadingDenseLayers() const {
  const auto first_moe = std::find(moe_layers.begin(), moe_layers.end(), true);
  if (std::find(first_moe, moe_layers.end(), false) != moe_layers.end()) return -1;
  return static_cast<int>(first_moe - moe_layers.begin());
}

const std::vector<HfArchitecture>& HfArchitectures() { return kArchitectures; }

std::string Mismatch(const HfArchitecture& a, const ModelFeatures& f) {
  std::vector<std::string> why = {
      PresenceMismatch(a.head_qk_norm, f.head_qk_norm, "per-head q/k norms",
                       "scale_vectors.placement=DUAL_NORMALIZED or model.qk_norm"),
      PresenceMismatch(a.head_v_norm, f.head_v_norm, "per-head v norm", "scale_vectors.dnp_normalize_v"),
      PresenceMismatch(a.sandwich_norm, f.sandwich_norm, "sandwich norms", "model.sandwich_norm"),
  };
  if (f.moe()) {
    if (f.routed_experts < a.min_routed_experts) {
      why.push_back(absl::StrCat("needs at least ", a.min_routed_experts,
                                 " routed experts (moe.num_experts=", f.routed_experts, ")"));
    }
    if (a.score != f.score) {
      why.push_back(absl::StrCat("routes by ", ScoreName(a.score), ", the model by ",
                                 ScoreName(f.score), " (moe.score_function)"));
    }
    why.push_back(PresenceMismatch(a.topk_renormalization, f.normalize_topk, "top-k renormalisation",
                                   "moe.normalize_topk"));
    why.push_back(PresenceMismatch(a.expert_bias, f.expert_bias, "expert bias", "moe.expert_bias"));
    why.push_back(PresenceMismatch(a.shared_experts, f.shared_experts > 0, "shared experts",
                                   "moe.num_shared_experts"));
    if (a.shared_hidden_multiple_of_routed && f.shared_experts > 0 &&
        (f.routed_hidden <= 0 || f.shared_hidden % f.routed_hidden != 0)) {
      why.push_back(absl::StrCat(
          "sizes its shared MLP as a multiple of the routed expert's ", f.routed_hidden,
          " hidden units, the model's shared experts have ", f.shared_hidden,
          " together (moe.shared_expert_ffn_hidden_size x moe.num_shared_experts)"));
    }
    const int leading_dense = f.LeadingDenseLayers();
    if (a.moe_layers == MoeLayers::kAll && leading_dense != 0) {
      why.push_back("makes every layer MoE, the model has dense layers (moe.first_dense_layers, "
                    "moe.moe_layer_frequency)");
    }
    if (a.moe_layers == MoeLayers::kAfterLeadingDense && leading_dense < 0) {
      why.push_back("has dense layers only before the first MoE layer (first_k_dense_replace), "
                    "the model mixes them (moe.moe_layer_frequency)");
    }
    if (!a.capacity_drops && f.capacity_drops) {
      why.push_back("drops no tokens (moe.capacity_factor > 0 drops assignments over capacity)");
    }
  }
  std::string joined;
  for (const std::string& w : why) {
    if (!w.empty()) absl::StrAppend(&joined, joined.empty() ? "" : "; ", w);
  }
  return joined;
}

StatusOr<const HfArchitecture*> SelectHfArchitecture(const ModelFeatures& f) {
  std::string considered;
  for (const HfArchitecture& a : kArchitectures) {
    if (a.moe != f.moe()) continue;
    const std::string why = Mismatch(a, f);
    if (why.empty()) return &a;
    absl::StrAppend(&considered, "\n  ", a.class_name, ": ", why);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "export: no Hugging Face architecture computes this ", f.moe() ? "MoE" : "dense",
      " model exactly, so it is not exported (a near match would load and compute a different "
      "loss). Considered:",
      considered));
}

}  // namespace scalemoe::checkpoint
