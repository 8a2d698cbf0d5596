// ScaleVectorGroup: Compute and Backward of several ScaleVectors at once (a
// MoE layer's per-expert γ's). The plain magnitude–direction vectors
// (MAGNITUDE_DIRECTION, γ = β·α) of one length form γ = β·α and turn dγ into
// dα, dβ in one launch each for all of them (ops::MagnitudeDirectionGroup /
// MagnitudeDirectionBackwardGroup) instead of one or two per vector; every
// other vector (PLAIN, the normalized form, another length, or a lone plain
// β·α one) runs its own Compute and Backward. ScaleVector keeps the
// semantics (norm/scale_vector.h): the results are each vector's own (on the
// GPU dβ's dot is summed in another fixed order than ops::Dot's).
//
// The vectors are not owned and must outlive the group; the caller's γ and
// dγ tensors (one per vector, in the group's order) stay the same from step
// to step or the address tables are rebuilt.
#pragma once

#include <vector>

#include "core/ops.h"
#include "norm/scale_vector.h"

namespace scalemoe {

class ScaleVectorGroup {
 public:
  explicit ScaleVectorGroup(std::vector<const ScaleVector*> vectors);

  // gammas[i] = vector i's γ (its Compute).
  Status Compute(const ExecContext& ctx, const std::vector<Tensor>& gammas);
  // Vector i's Backward from d_gammas[i].
  Status Backward(const ExecContext& ctx, const std::vector<Tensor>& d_gammas);
  // How many vectors run together (0 or >= 2).
  int grouped() const { return static_cast<int>(together_.size()); }

 private:
  // The α and β tables (rebuilt only when a tensor moved).
  void UpdateValues(const ExecContext& ctx);

  std::vector<const ScaleVector*> vectors_;
  std::vector<size_t> together_;  // the plain β·α vectors run as one group
  std::vector<size_t> alone_;     // the rest
  ops::MatrixGroup alpha_, beta_, gamma_, d_gamma_, d_alpha_, d_beta_;  // [1, d] / [1, 1]
};

}  // namespace scalemoe
