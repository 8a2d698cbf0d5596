#include "checkpoint/training_tensors.h"

#include <string>
#include <utility>

namespace scalemoe::checkpoint {

std::vector<NamedTensor> TrainingTensors(const ParamRegistry& registry,
                                         const std::vector<StateSlice>& state,
                                         const GridCoords& coords, bool for_save) {
  // The last pipeline stage's copy of a tied embedding (model/model.h).
  auto tied_copy = [](const ParamSpec& spec) {
    return spec.role == ParamRole::kEmbedding && spec.layout.pipeline_stage > 0;
  };
  // Whether this (E)TP rank saves its copy.
  auto tp_writes = [&](const ParamSpec& spec) {
    return spec.layout.tp_split_dim >= 0 ||
           (spec.layout.is_expert() ? coords.etp : coords.tp) == 0;
  };
  // Whether this rank saves a tensor replicated over its dp/edp group.
  auto writes = [&](const ParamSpec& spec) {
    return !for_save ||
           (!tied_copy(spec) && tp_writes(spec) &&
            (spec.layout.is_expert() ? coords.edp : coords.dp) == 0);
  };
  const ShardCoords& shard = registry.coords();
  std::vector<NamedTensor> out;
  for (const auto& p : registry.params()) {
    if (!writes(p->spec)) continue;
    Shape start(p->spec.shape.size(), 0);
    if (p->spec.layout.tp_split_dim >= 0) start[p->spec.layout.tp_split_dim] = p->SplitStart(shard);
    out.push_back({p->spec.name, p->value, p->spec.shape, std::move(start), TensorRole::kModel});
  }
  for (const StateSlice& s : state) {
    const ParamSpec& spec = s.param->spec;
    if (s.replicated && !writes(spec)) continue;
    if (for_save && (tied_copy(spec) || !tp_writes(spec))) continue;
    for (StateBox& box : StateBoxes(s, shard)) {
      out.push_back({s.name, std::move(box.data), spec.shape, std::move(box.slice_start),
                     TensorRole::kState});
    }
  }
  return out;
}

}  // namespace scalemoe::checkpoint
