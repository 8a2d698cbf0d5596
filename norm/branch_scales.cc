#include "norm/branch_scales.h"

#include "core/ops.h"

namespace scalemoe {

BranchScales::BranchScales(ParamRegistry& registry, const ScaleOptions& options,
                           std::string shared_name, ParamLayout shared_layout, int64_t dim,
                           std::vector<BranchSpec> branches, bool own_vectors) {
  const int n = static_cast<int>(branches.size());
  branch_to_vector_.assign(n, 0);
  if (options.none()) {
    branch_to_vector_.assign(n, -1);
    return;
  }
  if (!own_vectors) {
    vectors_.push_back(std::make_unique<ScaleVector>(registry, std::move(shared_name), dim,
                                                     ParamRole::kInputNormScale, options.reparam(),
                                                     shared_layout));
    return;
  }
  for (int b = 0; b < n; ++b) {
    branch_to_vector_[b] = b;
    vectors_.push_back(std::make_unique<ScaleVector>(registry, branches[b].param_name, dim,
                                                     ParamRole::kInputNormScale, options.reparam(),
                                                     branches[b].layout));
  }
}

Status BranchScales::Forward(const ExecContext& ctx, DType dtype) {
  if (vectors_.empty()) return absl::OkStatus();
  if (gammas_.empty()) {
    int64_t total = 0;
    for (const auto& v : vectors_) total += v->dim();
    d_gamma_all_ = ctx.Empty({total}, dtype);
    int64_t start = 0;
    std::vector<const ScaleVector*> vectors;
    for (const auto& v : vectors_) {
      gammas_.push_back(ctx.Empty({v->dim()}, dtype));
      d_gammas_.push_back(d_gamma_all_.Narrow(0, start, v->dim()));
      start += v->dim();
      vectors.push_back(v.get());
    }
    // A MoE layer's per-expert γ's: formed (and their gradients pushed) in
    // one launch for all where they are plain β·α.
    group_ = std::make_unique<ScaleVectorGroup>(std::move(vectors));
  }
  SM_RETURN_IF_ERROR(group_->Compute(ctx, gammas_));
  ops::Zero(ctx, d_gamma_all_);
  return absl::OkStatus();
}

const Tensor& BranchScales::gamma(int branch) const {
  const int v = branch_to_vector_.at(branch);
  return v < 0 ? undefined_ : gammas_.at(v);
}

void BranchScales::AddFoldTarget(int branch, const std::string& weight) const {
  const int v = branch_to_vector_.at(branch);
  if (v >= 0) vectors_[v]->AddFoldTarget(weight, FoldSide::kColumns);
}

const Tensor& BranchScales::d_gamma(int branch) const {
  const int v = branch_to_vector_.at(branch);
  return v < 0 ? undefined_ : d_gammas_.at(v);
}

Status BranchScales::Backward(const ExecContext& ctx) {
  return group_ ? group_->Backward(ctx, d_gammas_) : absl::OkStatus();
}

}  // namespace scalemoe
