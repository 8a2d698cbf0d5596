// Expanding a sweep spec into its points (launch/sweep_points.h).
#include "launch/sweep_points.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "launch/config.h"
#include "launch/sweep_spec.h"

namespace scalemoe {
namespace {

using HoldFixed = config::SweepSpec::HoldFixed;

// One group of axes that move together (an axis and those zipped with it),
// in spec order.
struct AxisGroup {
  std::vector<int> axes;
  int size = 0;  // values per axis
};

int ValueCount(const config::SweepAxis& axis) {
  return axis.bundles_size() > 0 ? axis.bundles_size() : axis.values_size();
}

// Groups in the order of their first axis; a validated spec has no cycles.
std::vector<AxisGroup> GroupAxes(const config::SweepSpec& spec) {
  std::map<std::string, int> by_name;
  for (int i = 0; i < spec.axes_size(); ++i) by_name.emplace(AxisName(spec.axes(i)), i);
  std::map<int, int> group_of_root;
  std::vector<AxisGroup> groups;
  for (int i = 0; i < spec.axes_size(); ++i) {
    int root = i;
    while (!spec.axes(root).zip_with().empty()) root = by_name.at(spec.axes(root).zip_with());
    auto [it, added] = group_of_root.emplace(root, static_cast<int>(groups.size()));
    if (added) groups.push_back({{}, ValueCount(spec.axes(i))});
    groups[it->second].axes.push_back(i);
  }
  return groups;
}

// A point whose axes and the rules' results are known; its config is built
// and checked by FinishPoint.
struct PointDraft {
  SweepPoint point;
  std::vector<std::string> axis_overrides;  // the axes' own, after spec.set
  int64_t granularity = 1;
};

bool SetsField(const std::vector<std::string>& overrides, const std::string& path) {
  return std::any_of(overrides.begin(), overrides.end(),
                     [&](const std::string& o) { return OverridePath(o) == path; });
}

// The overrides the hold-fixed rule and tokens_per_point add to `draft`
// (whose config holds the base and its axis overrides), applied to its
// config. Problems name the point.
Status DeriveAndCheck(const config::SweepSpec& spec, const config::RunConfig& base,
                      PointDraft& draft) {
  SweepPoint& p = draft.point;
  config::RunConfig& cfg = p.config;
  const HoldFixed rule = spec.hold_fixed();
  const bool sets_ffn = SetsField(draft.axis_overrides, "moe.expert_ffn_hidden_size");
  if (sets_ffn && (rule != config::SweepSpec::NONE || draft.granularity != 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the point sets moe.expert_ffn_hidden_size (an axis or bundle), which ",
        rule != config::SweepSpec::NONE
            ? absl::StrCat("hold_fixed ", config::SweepSpec::HoldFixed_Name(rule))
            : std::string("granularity"),
        " derives; remove it from the axes or set hold_fixed: NONE without granularity"));
  }
  // Without a rule or granularity the axes' sizes stand as given.
  if (rule != config::SweepSpec::NONE || draft.granularity != 1) {
    const int64_t point_top_k =
        SetsField(draft.axis_overrides, "moe.top_k") ? cfg.moe().top_k() : 0;
    SM_ASSIGN_OR_RETURN(
        const ExpertSizes sizes,
        HoldFixedSizes(rule, base.moe(), cfg.moe().num_experts(), draft.granularity, point_top_k));
    const int64_t ffn = cfg.moe().expert_ffn_hidden_size();
    if (sizes.top_k != cfg.moe().top_k()) {
      p.derived.push_back(absl::StrCat("moe.top_k=", sizes.top_k));
    }
    if (sizes.expert_ffn_hidden_size != ffn) {
      p.derived.push_back(
          absl::StrCat("moe.expert_ffn_hidden_size=", sizes.expert_ffn_hidden_size));
      // A shared expert sized "as a routed one" keeps the base's size.
      if (cfg.moe().num_shared_experts() > 0 && cfg.moe().shared_expert_ffn_hidden_size() == 0) {
        p.derived.push_back(absl::StrCat("moe.shared_expert_ffn_hidden_size=", ffn));
      }
    }
  }
  SM_ASSIGN_OR_RETURN(const ParallelLayout layout, ResolveLayout(cfg, spec.launcher().ranks()));
  const auto& train = cfg.train();
  const int64_t global_batch = train.global_batch_size() > 0
                                   ? train.global_batch_size()
                                   : int64_t{train.micro_batch_size()} * layout.dp;
  p.tokens_per_step = global_batch * cfg.model().seq_length();
  if (spec.tokens_per_point() > 0) {
    if (SetsField(draft.axis_overrides, "train.train_steps")) {
      return absl::InvalidArgumentError(
          "the point sets train.train_steps (an axis or bundle), which tokens_per_point "
          "derives; remove it from the axes or set tokens_per_point: 0");
    }
    if (p.tokens_per_step <= 0 || spec.tokens_per_point() % p.tokens_per_step != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens_per_point=", spec.tokens_per_point(), " is not a multiple of the ",
                       p.tokens_per_step, " tokens of one step (global batch ", global_batch,
                       " x model.seq_length ", cfg.model().seq_length(), "); choose a multiple of ",
                       p.tokens_per_step));
    }
    const int64_t steps = spec.tokens_per_point() / p.tokens_per_step;
    if (steps != train.train_steps()) {
      p.derived.push_back(absl::StrCat("train.train_steps=", steps));
    }
  }
  for (const std::string& o : p.derived) SM_RETURN_IF_ERROR(ApplyOverride(o, &cfg));
  p.overrides.insert(p.overrides.end(), p.derived.begin(), p.derived.end());
  return ValidateConfig(cfg, spec.launcher().ranks());
}

}  // namespace

StatusOr<ExpertSizes> HoldFixedSizes(HoldFixed rule, const config::MoEConfig& base,
                                     int64_t num_experts, int64_t granularity,
                                     int64_t point_top_k) {
  const int64_t k0 = base.top_k(), f0 = base.expert_ffn_hidden_size(), e0 = base.num_experts();
  const std::string rule_name = config::SweepSpec::HoldFixed_Name(rule);
  if (rule != config::SweepSpec::NONE && e0 <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the base is dense (moe.num_experts=0 after base_config and set), so hold_fixed ",
        rule_name,
        " has no expert sizes to hold: give the base experts in set, or set "
        "hold_fixed: NONE"));
  }
  if (num_experts <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe.num_experts=0 is a dense model, but ",
        rule != config::SweepSpec::NONE ? absl::StrCat("hold_fixed ", rule_name)
                                        : std::string("granularity"),
        " sizes routed experts: give MoE points (moe.num_experts >= 1), or set hold_fixed: NONE "
        "without a granularity axis"));
  }
  ExpertSizes sizes;
  sizes.top_k = point_top_k > 0 ? point_top_k : k0 * granularity;
  // Holding parameters fixed: fewer experts than k0·g means fewer, wider ones.
  if (rule != config::SweepSpec::NONE && point_top_k == 0) {
    sizes.top_k = std::min(sizes.top_k, num_experts);
  }
  int64_t numerator = f0, denominator = granularity;
  std::string formula =
      absl::StrCat("moe.expert_ffn_hidden_size / granularity = ", f0, " / ", granularity);
  if (rule == config::SweepSpec::SAME_ACTIVE) {
    numerator = k0 * f0;
    denominator = sizes.top_k;
    formula = absl::StrCat("base top_k x expert_ffn_hidden_size / top_k = ", k0, " x ", f0, " / ",
                           sizes.top_k);
  } else if (rule == config::SweepSpec::SAME_TOTAL) {
    numerator = e0 * f0;
    denominator = num_experts;
    formula = absl::StrCat("base num_experts x expert_ffn_hidden_size / num_experts = ", e0, " x ",
                           f0, " / ", num_experts);
  }
  if (denominator <= 0 || numerator % denominator != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hold_fixed ", rule_name, " needs moe.expert_ffn_hidden_size = ", formula,
                     ", not a whole number; choose axis values that divide ", numerator,
                     " (or change the base's moe.expert_ffn_hidden_size)"));
  }
  sizes.expert_ffn_hidden_size = numerator / denominator;
  return sizes;
}

StatusOr<std::vector<SweepPoint>> ExpandSweep(const config::SweepSpec& spec) {
  StatusOr<config::RunConfig> base = LoadConfig(
      spec.base_config(), std::vector<std::string>(spec.set().begin(), spec.set().end()));
  if (!base.ok()) {
    return Status(base.status().code(),
                  absl::StrCat("sweep base (base_config and set): ", base.status().message()));
  }
  const std::vector<AxisGroup> groups = GroupAxes(spec);
  int64_t total = 1;
  for (const AxisGroup& g : groups) total *= g.size;
  std::vector<SweepPoint> points;
  std::vector<std::string> problems;
  for (int64_t index = 0; index < total; ++index) {
    // Mixed radix, the first group most significant: its values vary slowest.
    std::vector<int> choice(spec.axes_size(), 0);
    int64_t rest = index;
    for (size_t gi = groups.size(); gi-- > 0;) {
      for (int a : groups[gi].axes) choice[a] = static_cast<int>(rest % groups[gi].size);
      rest /= groups[gi].size;
    }
    PointDraft draft;
    SweepPoint& p = draft.point;
    p.overrides.assign(spec.set().begin(), spec.set().end());
    std::vector<std::string> name_parts;
    for (int a = 0; a < spec.axes_size(); ++a) {
      const config::SweepAxis& axis = spec.axes(a);
      std::string label;
      if (axis.bundles_size() > 0) {
        const config::SweepBundle& bundle = axis.bundles(choice[a]);
        label = bundle.name();
        draft.axis_overrides.insert(draft.axis_overrides.end(), bundle.set().begin(),
                                    bundle.set().end());
      } else {
        const std::string& value = axis.values(choice[a]);
        label = ValueLabel(value);
        if (axis.field() == kGranularityField) {
          SM_CHECK(absl::SimpleAtoi(value, &draft.granularity));  // validated
        } else {
          draft.axis_overrides.push_back(axis.field() + "=" + value);
        }
      }
      p.values.emplace_back(AxisName(axis), label);
      name_parts.push_back(absl::StrCat(AxisName(axis), "-", label));
    }
    p.name = absl::StrJoin(name_parts, "_");
    p.overrides.insert(p.overrides.end(), draft.axis_overrides.begin(), draft.axis_overrides.end());
    p.config = *base;
    Status status;
    for (const std::string& o : draft.axis_overrides) {
      status.Update(ApplyOverride(o, &p.config));
    }
    if (status.ok()) status = DeriveAndCheck(spec, *base, draft);
    if (!status.ok()) {
      problems.push_back(absl::StrCat("point ", p.name, ": ", status.message()));
      continue;
    }
    points.push_back(std::move(p));
  }
  std::map<std::string, int> seen;
  for (const SweepPoint& p : points) {
    if (++seen[p.name] == 2) {
      problems.push_back(absl::StrCat("point ", p.name,
                                      " comes twice: zipped axes repeat a "
                                      "combination of values; make each combination distinct"));
    }
  }
  // Without tokens_per_point every point must see the same tokens.
  if (!points.empty() && spec.tokens_per_point() == 0) {
    auto tokens = [](const SweepPoint& p) {
      return p.tokens_per_step * p.config.train().train_steps();
    };
    for (const SweepPoint& p : points) {
      if (tokens(p) != tokens(points.front())) {
        problems.push_back(
            absl::StrCat("point ", p.name, " trains on ", tokens(p), " tokens but point ",
                         points.front().name, " on ", tokens(points.front()),
                         " (train_steps x global batch x seq_length): hold tokens fixed by setting "
                         "tokens_per_point, or vary no batch, sequence or step field"));
      }
    }
  }
  if (!problems.empty()) {
    constexpr size_t kShown = 12;
    const size_t more = problems.size() > kShown ? problems.size() - kShown : 0;
    problems.resize(std::min(problems.size(), kShown));
    if (more > 0) problems.push_back(absl::StrCat("... and ", more, " more"));
    return absl::InvalidArgumentError(
        absl::StrCat("invalid sweep points:\n  ", absl::StrJoin(problems, "\n  ")));
  }
  return points;
}

}  // namespace scalemoe
