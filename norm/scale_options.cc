#include "norm/scale_options.h"

#include <algorithm>
#include <set>

namespace scalemoe {

using Sv = config::ScaleVectorConfig;

bool ScaleOptions::OwnVectors(BranchGroup group) const {
  if (cfg_.mode() != Sv::PER_BRANCH) return false;
  switch (group) {
    case BranchGroup::kAttention: return cfg_.hg_attention();
    case BranchGroup::kFfn: return cfg_.hg_ffn();
    case BranchGroup::kRouter: return cfg_.hg_router();
    case BranchGroup::kExperts: return cfg_.hg_experts();
    case BranchGroup::kSharedExperts: return cfg_.hg_shared_experts();
  }
  return false;
}

bool ScaleOptions::NormalizedOutput(Projection p) const {
  if (cfg_.placement() != Sv::DUAL_NORMALIZED) return false;
  if (p == Sv::Q || p == Sv::K) return true;
  return p == Sv::V && cfg_.dnp_normalize_v();
}

std::vector<Projection> ScaleOptions::DualProjections() const {
  if (cfg_.dual_projections_size() == 0) return {Sv::Q, Sv::K, Sv::V};
  std::vector<Projection> out;
  for (int p : cfg_.dual_projections()) out.push_back(static_cast<Projection>(p));
  return out;
}

bool ScaleOptions::OutputVector(Projection p) const {
  if (none() || cfg_.placement() == Sv::INPUT_ONLY || NormalizedOutput(p)) return false;
  const std::vector<Projection> dual = DualProjections();
  return std::find(dual.begin(), dual.end(), p) != dual.end();
}

void ValidateScaleVectorConfig(const config::RunConfig& cfg, ConfigProblems& problems) {
  const Sv& sv = cfg.scale_vectors();
  std::set<int> seen;
  for (int p : sv.dual_projections()) {
    problems.Check(seen.insert(p).second, "scale_vectors.dual_projections lists ",
                   Sv::Projection_Name(static_cast<Projection>(p)),
                   " twice: list each projection once");
  }
  problems.Check(sv.dual_projections_size() == 0 || sv.placement() != Sv::INPUT_ONLY,
                 "scale_vectors.dual_projections is set but scale_vectors.placement=INPUT_ONLY "
                 "puts no output-side vectors anywhere: set placement: DUAL (or "
                 "DUAL_NORMALIZED), or clear dual_projections");
}

}  // namespace scalemoe
