// Which Hugging Face architecture represents an exported model exactly.
//
// A model is described by the features that change the function it computes
// (ModelFeatures, read from a checkpoint by checkpoint/model_features.h);
// every candidate architecture by what its transformers implementation
// computes, in one table (HfArchitectures(), hf_architecture.cc). The export
// takes the first architecture of the table that computes exactly the
// model's function, or refuses with a message that names, for every
// architecture of the model's kind (dense or MoE), each feature it cannot
// represent. A near match is never taken: it would load without an
// error and compute a different loss.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace scalemoe::checkpoint {

enum class RouterScore { kSoftmax, kSigmoid };

struct ModelFeatures {
  // Attention (every layer alike).
  bool head_qk_norm = false;   // per-head RMSNorm with weight on q and k, before RoPE
  bool head_v_norm = false;    // the same on v (DNP with dnp_normalize_v)
  bool sandwich_norm = false;  // RMSNorm on each sublayer's output before the residual add
  // FFN of each layer: true = MoE, false = dense SwiGLU.
  std::vector<bool> moe_layers;
  // The MoE layers' router and experts (meaningful when moe()).
  int routed_experts = 0;
  RouterScore score = RouterScore::kSoftmax;
  bool normalize_topk = true;  // top-k weights renormalised to sum 1
  bool expert_bias = false;    // a per-expert bias added to the scores for selection only
  bool capacity_drops = false; // moe.capacity_factor > 0: assignments over capacity dropped
  int shared_experts = 0;      // S always-on experts ...
  int64_t shared_hidden = 0;   // ... of S·F_s hidden units together
  int64_t routed_hidden = 0;   // F of one routed expert

  bool moe() const;
  // Layers [0, n) are dense, the rest MoE: n; another pattern: -1.
  int LeadingDenseLayers() const;
};

// Whether an architecture's layers have a part: never, always, or per config.
enum class Presence { kNever, kAlways, kOptional };

// Which layers may be MoE: all, all after the first k, or any set.
enum class MoeLayers { kAll, kAfterLeadingDense, kAny };

struct HfArchitecture {
  const char* class_name;  // config.json "architectures"
  const char* model_type;  // config.json "model_type"
  bool moe;                // an MoE architecture (else dense)
  Presence head_qk_norm;
  Presence head_v_norm;
  Presence sandwich_norm;
  // MoE architectures only.
  RouterScore score;
  Presence topk_renormalization;
  Presence expert_bias;
  Presence shared_experts;
  // The shared MLP's hidden size is moe_intermediate_size · n_shared_experts.
  bool shared_hidden_multiple_of_routed;
  int min_routed_experts;
  MoeLayers moe_layers;
  bool capacity_drops;
};

// Every candidate, in order of preference.
const std::vector<HfArchitecture>& HfArchitectures();

// Why `arch` cannot represent `features` exactly (every feature it lacks,
// "; "-separated, each naming its config field); "" when it can.
std::string Mismatch(const HfArchitecture& arch, const ModelFeatures& features);

// The first architecture that represents `features` exactly, or
// FailedPrecondition naming every architecture considered and why not.
StatusOr<const HfArchitecture*> SelectHfArchitecture(const ModelFeatures& features);

}  // namespace scalemoe::checkpoint
