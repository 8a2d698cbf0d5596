// ParamSpec helpers for the model's weight matrices (init normal(std)).
#pragma once

#include <cmath>
#include <string>

#include "configs/scalemoe.pb.h"
#include "core/params.h"

namespace scalemoe {

inline ParamSpec WeightSpec(std::string name, Shape shape, ParamRole role, double init_std,
                            int layer) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.role = role;
  s.init = InitSpec::Normal(init_std);
  s.layout.layer = layer;
  return s;
}

// Megatron's two halves of a tensor-parallel pair.
enum class TpSplit : int { kColumn = 0, kRow = 1 };  // the split dim of W [out, in]

// Registers the dense linear weight "<prefix>.<name>" (global [rows, cols])
// split over TP as a column- or row-parallel map.
inline Param* CreateTpLinear(ParamRegistry& registry, const std::string& prefix,
                             const std::string& name, Shape shape, double init_std, int layer,
                             TpSplit split) {
  ParamSpec spec = WeightSpec(prefix + "." + name, std::move(shape), ParamRole::kLinear, init_std,
                              layer);
  spec.layout.tp_split_dim = static_cast<int>(split);
  return registry.Create(std::move(spec));
}

// Output projections (w_o, w_down) start smaller so the residual stream's
// variance does not grow with depth (GPT-2 / Megatron convention).
inline double OutputProjectionStd(const config::ModelConfig& m) {
  return m.init_std() / std::sqrt(2.0 * m.num_layers());
}

inline ParamLayout LayerLayout(int layer) {
  ParamLayout l;
  l.layer = layer;
  return l;
}

}  // namespace scalemoe
