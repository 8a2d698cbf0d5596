#include "parallel/stage_partition.h"

#include <numeric>

#include "absl/strings/str_join.h"

namespace scalemoe {

static std::vector<StageLayers> Layout(const std::vector<int>& counts) {
  std::vector<StageLayers> stages(counts.size());
  int first = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    stages[s].first_layer = first;
    stages[s].num_layers = counts[s];
    first += counts[s];
  }
  stages.front().has_embedding = true;
  stages.back().has_head = true;
  return stages;
}

StatusOr<StagePartition> StagePartition::Even(int num_layers, int pp) {
  if (pp < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pp = ", pp, ": the pipeline needs at least 1 stage"));
  }
  if (num_layers < pp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.num_layers = ", num_layers, " is fewer than parallel.pp = ", pp,
        " pipeline stages: every stage needs at least one layer; lower parallel.pp to <= ",
        num_layers, " or add layers"));
  }
  std::vector<int> counts(pp, num_layers / pp);
  for (int s = 0; s < num_layers % pp; ++s) ++counts[s];
  return StagePartition(num_layers, Layout(counts));
}

StatusOr<StagePartition> StagePartition::Explicit(int num_layers,
                                                  const std::vector<int>& layers_per_stage) {
  const int pp = static_cast<int>(layers_per_stage.size());
  if (pp < 1) {
    return absl::InvalidArgumentError(
        "the explicit layers-per-stage list is empty: give one count per pipeline stage "
        "(parallel.pp entries)");
  }
  const std::string list = absl::StrJoin(layers_per_stage, ", ");
  for (int s = 0; s < pp; ++s) {
    const bool end_stage = s == 0 || s == pp - 1;
    if (layers_per_stage[s] < 0 || (layers_per_stage[s] == 0 && !end_stage)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layers per stage [", list, "]: stage ", s, " gets ", layers_per_stage[s],
          " layers; counts must be >= 0 and a middle stage needs at least one layer"));
    }
  }
  const int sum = std::accumulate(layers_per_stage.begin(), layers_per_stage.end(), 0);
  if (sum != num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("layers per stage [", list, "] sum to ", sum,
                                                   " but model.num_layers = ", num_layers,
                                                   "; make the counts add up"));
  }
  return StagePartition(num_layers, Layout(layers_per_stage));
}

const StageLayers& StagePartition::stage(int stage) const {
  SM_CHECK_MSG(stage >= 0 && stage < num_stages(), "stage ", stage, " of ", num_stages());
  return stages_[stage];
}

int StagePartition::StageOfLayer(int layer) const {
  SM_CHECK_MSG(layer >= 0 && layer < num_layers_, "layer ", layer, " of ", num_layers_);
  for (int s = 0; s < num_stages(); ++s) {
    if (layer < stages_[s].first_layer + stages_[s].num_layers) return s;
  }
  SM_CHECK(false);
  return -1;
}

std::string StagePartition::Describe() const {
  std::vector<std::string> parts;
  for (int s = 0; s < num_stages(); ++s) {
    const StageLayers& st = stages_[s];
    std::string part = absl::StrCat("stage ", s, ": layers [", st.first_layer, ", ",
                                    st.first_layer + st.num_layers, ")");
    if (st.has_embedding) absl::StrAppend(&part, " + embedding");
    if (st.has_head) absl::StrAppend(&part, " + head");
    parts.push_back(part);
  }
  return absl::StrJoin(parts, "; ");
}

}  // namespace scalemoe
