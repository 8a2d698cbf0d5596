// Parameter groups: which update rule, learning-rate multiplier and weight
// decay every element of the registry's flat buffers gets, read from
// ParamSpec roles only (never from names).
//
// Built once from a ParamRegistry (specs, shapes and flat offsets; values
// need not be materialised). Two views of the same assignment:
// - per parameter: entries(), each naming its group;
// - per element: segments(), maximal [begin, end) runs of the flat index
//   space with one group, covering [0, total_local_numel()) but for the
//   padding before aligned matrices (core/params.h). SegmentsIn(a, b)
//   clips them to any slice, so a ZeRO shard that cuts through a scale vector
//   still gives each element exactly the decay its role says.
//
// Decay policies (ScaleVectorConfig.DecayPolicy; SCALE_VECTORS.md):
//   IWD         the paper's rule: decay weight matrices (linear,
//               expert_linear, router, embedding, lm_head) and Input-Norm γ;
//               exempt Output-Norm γ and biases.
//   NONE_1D     the classic rule: decay every parameter with ndim >= 2, no
//               1-D (or scalar) parameter: no scale vector, no bias.
//   ALL         decay every trainable parameter.
//   OUTPUT_ONLY the paper's contrast (Megatron's QK-norm option): matrices
//               as usual (ndim >= 2), and among 1-D parameters only
//               Output-Norm γ; Input-Norm γ and biases are exempt.
// kExpertBias is never trained (IsTrainable): update rule kNone, no decay.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/config_problems.h"
#include "core/params.h"
#include "core/status.h"

namespace scalemoe {

using DecayPolicy = config::ScaleVectorConfig::DecayPolicy;

// The rules on optimizer.role_multipliers (a role the optimizer trains, at
// most once, finite multipliers >= 0), appended to `problems`. The
// optimizer's validator (optim/optimizer_config.h) calls it up front;
// ParamGroups::Create refuses a list that breaks one with the same messages.
void ValidateRoleMultipliers(const config::OptimizerConfig& optimizer, ConfigProblems& problems);

// Whether a trainable parameter of `role` and `ndim` dimensions is decayed.
bool Decays(ParamRole role, int ndim, DecayPolicy policy);

// Which update rule owns a parameter.
enum class UpdateRule : uint8_t {
  kAdamW = 0,
  kMuon,  // 2-D kLinear/kExpertLinear matrices when OptimizerConfig.type == MUON
  kNone,  // not trained by the optimizer (kExpertBias)
};
const char* UpdateRuleName(UpdateRule rule);

// One group: every parameter with the same (role, rule, decays).
struct ParamGroup {
  ParamRole role = ParamRole::kLinear;
  UpdateRule rule = UpdateRule::kAdamW;
  bool decays = false;
  double lr_mult = 1.0;
  double wd_mult = 1.0;
  int64_t num_params = 0;
  int64_t num_elements = 0;

  // Decoupled weight decay this group applies per unit learning rate.
  double EffectiveWeightDecay(double weight_decay) const {
    return decays ? weight_decay * wd_mult : 0.0;
  }
};

struct ParamGroupEntry {
  const Param* param = nullptr;
  int group = 0;  // index into groups()
};

// A run [begin, end) of flat elements that all belong to `group`.
struct FlatSegment {
  int64_t begin = 0;
  int64_t end = 0;
  int group = 0;
};

class ParamGroups {
 public:
  // Fails if a role multiplier names an unknown or untrainable role, names a
  // role twice, or has a negative multiplier.
  static StatusOr<ParamGroups> Create(const ParamRegistry& registry,
                                      const config::OptimizerConfig& optimizer,
                                      DecayPolicy policy);

  const std::vector<ParamGroup>& groups() const { return groups_; }
  const std::vector<ParamGroupEntry>& entries() const { return entries_; }
  const std::vector<FlatSegment>& segments() const { return segments_; }
  const ParamGroup& group(int index) const { return groups_[index]; }
  int64_t total_numel() const { return total_; }
  DecayPolicy policy() const { return policy_; }

  // The segments overlapping [begin, end), clipped to it (flat indices).
  std::vector<FlatSegment> SegmentsIn(int64_t begin, int64_t end) const;

  // Table for `scalemoe inspect`: group, #params, #elements, rule, lr_mult,
  // wd_mult, decay.
  std::string DescribeGroups() const;

 private:
  ParamGroups() = default;

  DecayPolicy policy_ = config::ScaleVectorConfig::IWD;
  std::vector<ParamGroup> groups_;
  std::vector<ParamGroupEntry> entries_;  // registry order
  std::vector<FlatSegment> segments_;     // ascending, coalesced
  int64_t total_ = 0;
};

}  // namespace scalemoe
