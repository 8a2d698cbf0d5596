// BranchScales: the Input-Norm scale vectors that one normalization feeds.
//
// A pre-norm computes n = x / rms(x) once (no γ). Each consumer branch b
// (q, k, v; gate, up; router; every expert's gate and up) then sees γ_b ⊙ n,
// where per SCALE_VECTORS.md:
//   options.none()   no vector: γ_b ≡ 1 (gamma(b) is an undefined Tensor)
//   own_vectors      every branch its own vector, named by its BranchSpec
//                    (the caller asks ScaleOptions::OwnVectors of its group)
//   otherwise        one vector "<shared_name>" shared by all branches
// HG never recomputes the normalization: branches share n and differ only in
// γ_b, which layers fold into their weights (ops::ScaleRowsCols).
//
// Per step: Forward() computes every effective γ_b; layers read gamma(b) and
// accumulate dL/dγ_b into d_gamma(b) (zeroed by Forward); Backward() pushes
// those into the parameters' gradients (a shared vector receives the sum).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "norm/scale_options.h"
#include "norm/scale_vector.h"
#include "norm/scale_vector_group.h"

namespace scalemoe {

struct BranchSpec {
  std::string param_name;  // name of the branch's own vector under PER_BRANCH
  ParamLayout layout;      // e.g. layout.expert for an expert's vectors
};

class BranchScales {
 public:
  BranchScales(ParamRegistry& registry, const ScaleOptions& options, std::string shared_name,
               ParamLayout shared_layout, int64_t dim, std::vector<BranchSpec> branches,
               bool own_vectors);

  int num_branches() const { return static_cast<int>(branch_to_vector_.size()); }
  bool enabled() const { return !vectors_.empty(); }  // false under mode NONE

  Status Forward(const ExecContext& ctx, DType dtype);
  const Tensor& gamma(int branch) const;  // undefined when !enabled()
  const Tensor& d_gamma(int branch) const;
  // Branch `branch` feeds `weight` (its γ folds into the weight's columns);
  // a no-op under mode NONE.
  void AddFoldTarget(int branch, const std::string& weight) const;
  Status Backward(const ExecContext& ctx);

 private:
  std::vector<std::unique_ptr<ScaleVector>> vectors_;
  std::unique_ptr<ScaleVectorGroup> group_;  // Compute/Backward of all vectors_
  std::vector<int> branch_to_vector_;        // branch -> index into vectors_
  std::vector<Tensor> gammas_;               // per vector, [dim]
  std::vector<Tensor> d_gammas_;             // per vector, [dim]: rows of d_gamma_all_
  Tensor d_gamma_all_;                       // every vector's dγ back to back (one Zero)
  Tensor undefined_;
};

}  // namespace scalemoe
