// ScaleVector: one learnable scale vector γ of length d under a
// reparameterisation (SCALE_VECTORS.md, "OR"):
//   PLAIN                          γ = g               params: <name> [d]
//   MAGNITUDE_DIRECTION            γ = β·α             params: <name>.beta [1], <name>.alpha [d]
//   MAGNITUDE_DIRECTION_NORMALIZED γ = β·α·√d/‖α‖      same params
// Every parameter starts at 1, so γ = 1 at init (function-preserving), and
// β and α inherit the role (Input-/Output-Norm) of the γ they form.
//
// Use: Compute() once per forward step into a caller-owned [d] tensor;
// Backward() turns dL/dγ into parameter gradients (accumulated, +=).
//
// Split over tensor parallel ranks (layout.tp_split_dim = 0: an output-side
// u split with the rows it scales), each rank holds α's slice and the whole
// scalar β. β's gradient <α, dγ> is then a per-rank share (layout
// tp_partial_grad, summed by the model with the other shares); the
// normalized form also needs ‖α‖² and <α, dγ> over the whole vector, so it
// all-reduces those two scalars over `split_group` (a collective: every rank
// of the group calls Compute/Backward in the same order).
#pragma once

#include <string>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/params.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace scalemoe {

using Reparam = config::ScaleVectorConfig::Reparam;

class ScaleVector {
 public:
  // Registers the parameters in `registry` (role kInputNormScale or
  // kOutputNormScale; `layout` says which rank owns/splits them).
  // `split_group` (not owned) is the (E)TP communicator a split vector is
  // split over; needed only for a split MAGNITUDE_DIRECTION_NORMALIZED one.
  ScaleVector(ParamRegistry& registry, std::string name, int64_t dim, ParamRole role,
              Reparam reparam, ParamLayout layout = {}, Communicator* split_group = nullptr);

  // gamma[dim()] = effective scale vector (same dtype/device as the
  // parameters). Under TP a split vector holds only its slice: dim() is the
  // length held on this rank, global_dim() the whole vector's.
  // Fails only when the split normalized form's all-reduce fails.
  Status Compute(const ExecContext& ctx, const Tensor& gamma) const;
  // Accumulates the underlying parameters' gradients from d_gamma[d].
  Status Backward(const ExecContext& ctx, const Tensor& d_gamma) const;

  const std::string& name() const { return name_; }
  // Records that this vector folds into `weight` (ParamSpec::scale_vector of
  // its parameters; read by the export).
  void AddFoldTarget(const std::string& weight, FoldSide side) const;
  int64_t dim() const { return local_dim_; }
  int64_t global_dim() const { return dim_; }
  ParamRole role() const { return role_; }
  Reparam reparam() const { return reparam_; }

 private:
  // Runs the plain β·α form of many vectors at once (norm/scale_vector_group.h).
  friend class ScaleVectorGroup;

  std::string name_;
  int64_t dim_;        // global length
  int64_t local_dim_;  // length held on this rank (dim_ unless split over TP)
  ParamRole role_;
  Reparam reparam_;
  Param* plain_ = nullptr;   // PLAIN
  Param* alpha_ = nullptr;   // MAGNITUDE_DIRECTION*
  Param* beta_ = nullptr;    // MAGNITUDE_DIRECTION*
  Communicator* split_group_ = nullptr;  // set when split and normalized
};

}  // namespace scalemoe
