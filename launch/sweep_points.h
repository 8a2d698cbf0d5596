// A sweep's points: every combination of the spec's axes (zipped axes move
// together), each with a deterministic name, the `--set` overrides of its
// train command (the spec's, its axis values', then those the hold-fixed
// rule and tokens_per_point derive) and its config, validated for the
// launcher's world size.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "configs/sweep.pb.h"
#include "core/status.h"

namespace scalemoe {

struct SweepPoint {
  // "<axis>-<label>" per axis in spec order, joined by '_', e.g.
  // "num_experts-8_strategy-unified": the point's directory name.
  std::string name;
  // (axis name, value label) per axis, in spec order.
  std::vector<std::pair<std::string, std::string>> values;
  // The --set list of its train command, in order: spec.set, the axes',
  // then `derived`.
  std::vector<std::string> overrides;
  std::vector<std::string> derived;  // what the rules set (also in overrides)
  config::RunConfig config;          // base_config + overrides, validated
  int64_t tokens_per_step = 0;       // global batch × seq_length
};

// The expert sizes the hold-fixed rule gives one point (configs/sweep.proto,
// SweepSpec.HoldFixed).
struct ExpertSizes {
  int64_t top_k = 0;
  int64_t expert_ffn_hidden_size = 0;
};

// `base` is the MoE section after spec.set; the point has `num_experts`
// experts and granularity `granularity`; `point_top_k` > 0 when the point
// sets moe.top_k itself. InvalidArgument (naming the sizes and the fix) when
// a size is not a whole number or the point is dense.
StatusOr<ExpertSizes> HoldFixedSizes(config::SweepSpec::HoldFixed rule,
                                     const config::MoEConfig& base, int64_t num_experts,
                                     int64_t granularity, int64_t point_top_k);

// Expands a spec that passed ValidateSweepSpec. Errors name the point and
// the field; all points' problems are reported at once.
StatusOr<std::vector<SweepPoint>> ExpandSweep(const config::SweepSpec& spec);

}  // namespace scalemoe
