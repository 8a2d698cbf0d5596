#include "optim/param_groups.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace scalemoe {

bool Decays(ParamRole role, int ndim, DecayPolicy policy) {
  if (!IsTrainable(role)) return false;
  switch (policy) {
    case config::ScaleVectorConfig::IWD:
      return role != ParamRole::kOutputNormScale && role != ParamRole::kBias;
    case config::ScaleVectorConfig::NONE_1D:
      return ndim >= 2;
    case config::ScaleVectorConfig::ALL:
      return true;
    case config::ScaleVectorConfig::OUTPUT_ONLY:
      return ndim >= 2 || role == ParamRole::kOutputNormScale;
  }
  return false;
}

const char* UpdateRuleName(UpdateRule rule) {
  switch (rule) {
    case UpdateRule::kAdamW: return "adamw";
    case UpdateRule::kMuon: return "muon";
    case UpdateRule::kNone: return "none";
  }
  return "?";
}

namespace {

constexpr int kNumRoles = static_cast<int>(ParamRole::kExpertBias) + 1;

struct Multipliers {
  double lr = 1.0;
  double wd = 1.0;
};

// The trainable role called `name`, or -1.
int TrainableRole(const std::string& name) {
  for (int r = 0; r < kNumRoles; ++r) {
    const auto role = static_cast<ParamRole>(r);
    if (IsTrainable(role) && name == ParamRoleName(role)) return r;
  }
  return -1;
}

// Role multipliers indexed by ParamRole, after ValidateRoleMultipliers.
StatusOr<std::vector<Multipliers>> ReadMultipliers(const config::OptimizerConfig& optimizer) {
  ConfigProblems problems;
  ValidateRoleMultipliers(optimizer, problems);
  SM_RETURN_IF_ERROR(problems.ToStatus("optimizer.role_multipliers"));
  std::vector<Multipliers> out(kNumRoles);
  for (const config::RoleMultiplier& m : optimizer.role_multipliers()) {
    out[TrainableRole(m.role())] = {m.lr_mult(), m.wd_mult()};
  }
  return out;
}

UpdateRule RuleFor(const Param& p, const config::OptimizerConfig& optimizer) {
  const ParamRole role = p.spec.role;
  if (!IsTrainable(role)) return UpdateRule::kNone;
  const bool hidden_matrix = (role == ParamRole::kLinear || role == ParamRole::kExpertLinear) &&
                             p.local_shape.size() == 2;
  if (optimizer.type() == config::OptimizerConfig::MUON && hidden_matrix) return UpdateRule::kMuon;
  return UpdateRule::kAdamW;
}

}  // namespace

void ValidateRoleMultipliers(const config::OptimizerConfig& optimizer, ConfigProblems& p) {
  std::vector<std::string> valid;
  for (int r = 0; r < kNumRoles; ++r) {
    const auto role = static_cast<ParamRole>(r);
    if (IsTrainable(role)) valid.push_back(ParamRoleName(role));
  }
  std::vector<bool> seen(kNumRoles, false);
  for (const config::RoleMultiplier& m : optimizer.role_multipliers()) {
    const int role = TrainableRole(m.role());
    p.Check(role >= 0, "optimizer.role_multipliers.role='", m.role(),
            "' is not a parameter role the optimizer trains: use one of ",
            absl::StrJoin(valid, ", "));
    if (role >= 0) {
      p.Check(!seen[role], "optimizer.role_multipliers.role='", m.role(),
              "' appears twice: keep one entry per role");
      seen[role] = true;
    }
    p.NonNegative("optimizer.role_multipliers.lr_mult", m.lr_mult());
    p.NonNegative("optimizer.role_multipliers.wd_mult", m.wd_mult());
  }
}

StatusOr<ParamGroups> ParamGroups::Create(const ParamRegistry& registry,
                                          const config::OptimizerConfig& optimizer,
                                          DecayPolicy policy) {
  SM_ASSIGN_OR_RETURN(std::vector<Multipliers> mults, ReadMultipliers(optimizer));
  ParamGroups out;
  out.policy_ = policy;
  std::map<std::tuple<int, int, bool>, int> index;  // (role, rule, decays) -> group
  for (const auto& owned : registry.params()) {
    const Param& p = *owned;
    const ParamRole role = p.spec.role;
    const UpdateRule rule = RuleFor(p, optimizer);
    const bool decays = Decays(role, static_cast<int>(p.local_shape.size()), policy);
    const auto key = std::make_tuple(static_cast<int>(role), static_cast<int>(rule), decays);
    auto it = index.find(key);
    if (it == index.end()) {
      ParamGroup g;
      g.role = role;
      g.rule = rule;
      g.decays = decays;
      g.lr_mult = mults[static_cast<int>(role)].lr;
      g.wd_mult = mults[static_cast<int>(role)].wd;
      it = index.emplace(key, static_cast<int>(out.groups_.size())).first;
      out.groups_.push_back(g);
    }
    const int gi = it->second;
    out.groups_[gi].num_params += 1;
    out.groups_[gi].num_elements += p.local_numel();
    out.entries_.push_back({&p, gi});
    if (p.local_numel() == 0) continue;
    // Parameters lie in registration order, a matrix after zero padding
    // (core/params.h): the padding belongs to no segment.
    SM_CHECK_MSG(p.flat_offset >= out.total_ && p.flat_offset - out.total_ < kParamAlignment,
                 p.spec.name, " at flat offset ", p.flat_offset, ", expected ", out.total_,
                 " (or the next multiple of ", kParamAlignment, ")");
    if (!out.segments_.empty() && out.segments_.back().group == gi &&
        out.segments_.back().end == p.flat_offset) {
      out.segments_.back().end += p.local_numel();
    } else {
      out.segments_.push_back({p.flat_offset, p.flat_offset + p.local_numel(), gi});
    }
    out.total_ = p.flat_offset + p.local_numel();
  }
  out.total_ = registry.total_local_numel();
  return out;
}

std::vector<FlatSegment> ParamGroups::SegmentsIn(int64_t begin, int64_t end) const {
  SM_CHECK_MSG(0 <= begin && begin <= end && end <= total_, "SegmentsIn [", begin, ", ", end,
               ") outside [0, ", total_, ")");
  std::vector<FlatSegment> out;
  if (begin == end) return out;
  // First segment whose end is past `begin`.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), begin,
                             [](int64_t v, const FlatSegment& s) { return v < s.end; });
  for (; it != segments_.end() && it->begin < end; ++it) {
    out.push_back({std::max(it->begin, begin), std::min(it->end, end), it->group});
  }
  return out;
}

std::string ParamGroups::DescribeGroups() const {
  std::string out = absl::StrFormat("%-3s %-18s %-6s %8s %12s %8s %8s %-5s\n", "#", "role", "rule",
                                    "params", "elements", "lr_mult", "wd_mult", "decay");
  for (size_t i = 0; i < groups_.size(); ++i) {
    const ParamGroup& g = groups_[i];
    absl::StrAppend(&out, absl::StrFormat("%-3d %-18s %-6s %8d %12d %8g %8g %-5s\n",
                                          static_cast<int>(i), ParamRoleName(g.role),
                                          UpdateRuleName(g.rule), g.num_params, g.num_elements,
                                          g.lr_mult, g.wd_mult, g.decays ? "yes" : "no"));
  }
  return out;
}

}  // namespace scalemoe
