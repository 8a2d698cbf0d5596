// How the scale-vector config (SCALE_VECTORS.md) applies to one dense
// sublayer: which projections carry an output-side vector u, which get a
// normalized output side (DNP), and which path applies the vectors. One
// place reads the config; attention and MLP ask it by projection.
#pragma once

#include "configs/scalemoe.pb.h"
#include "model/scaled_linear.h"

namespace scalemoe {

using Projection = config::ScaleVectorConfig::Projection;

class ScaleOptions {
 public:
  explicit ScaleOptions(const config::ScaleVectorConfig& cfg) : cfg_(cfg) {}

  bool none() const { return cfg_.mode() == config::ScaleVectorConfig::NONE; }
  ScalePath path() const {
    return cfg_.fold_into_weights() ? ScalePath::kFold : ScalePath::kPerToken;
  }
  // DNP replaces the output side of q and k (and v with dnp_normalize_v) by
  // a per-head RMSNorm with scale. Under mode NONE the norm stays, unscaled.
  bool NormalizedOutput(Projection p) const {
    if (cfg_.placement() != config::ScaleVectorConfig::DUAL_NORMALIZED) return false;
    if (p == config::ScaleVectorConfig::Q || p == config::ScaleVectorConfig::K) return true;
    return p == config::ScaleVectorConfig::V && cfg_.dnp_normalize_v();
  }
  // An output-side vector u on projection p (DUAL, or DNP where p has no
  // normalized output side); never under mode NONE.
  bool OutputVector(Projection p) const {
    if (none() || cfg_.placement() == config::ScaleVectorConfig::INPUT_ONLY) return false;
    if (NormalizedOutput(p)) return false;
    if (cfg_.dual_projections_size() == 0) {
      return p == config::ScaleVectorConfig::Q || p == config::ScaleVectorConfig::K ||
             p == config::ScaleVectorConfig::V;
    }
    for (int q : cfg_.dual_projections()) {
      if (q == p) return true;
    }
    return false;
  }
  Reparam reparam() const { return cfg_.reparam(); }
  const config::ScaleVectorConfig& cfg() const { return cfg_; }

 private:
  const config::ScaleVectorConfig& cfg_;
};

}  // namespace scalemoe
