#include "norm/scaled_linear_group.h"

#include <algorithm>

namespace scalemoe {
namespace {

// `t` [n] as the [1, n] matrix the vector groups hold.
Tensor AsRow(const Tensor& t) { return t.View({1, t.numel()}); }

// Whether `vectors` are all undefined, or all defined and none shares its
// data with another (pairwise: a MoE layer's experts are few).
bool AllOwnOrNone(const std::vector<const Tensor*>& vectors) {
  const size_t n = vectors.size();
  const size_t defined =
      std::count_if(vectors.begin(), vectors.end(), [](const Tensor* v) { return v->defined(); });
  if (defined == 0) return true;
  if (defined != n) return false;
  for (size_t a = 0; a < n; ++a) {
    for (size_t b = a + 1; b < n; ++b) {
      if (vectors[a]->SharesDataWith(*vectors[b])) return false;
    }
  }
  return true;
}

}  // namespace

ScaledLinearGroup::ScaledLinearGroup(std::vector<ScaledLinear*> maps) : maps_(std::move(maps)) {
  for (const ScaledLinear* m : maps_) SM_CHECK(m != nullptr);
}

bool ScaledLinearGroup::FormsTogether() const {
  if (maps_.empty()) return false;
  const ScaledLinear& first = *maps_.front();
  const DType w = first.weight_->value.dtype(), eff = first.gemm_dtype_;
  if (eff != w && !(w == DType::kF32 && eff == DType::kBF16)) return false;
  const bool fold = first.FoldsOncePerStep();
  if (!fold && !first.CopiesWeight()) return false;  // no weight to form
  for (const ScaledLinear* m : maps_) {
    if (m->FoldsOncePerStep() != fold || m->CopiesWeight() != first.CopiesWeight() ||
        m->weight_->local_shape != first.weight_->local_shape || m->weight_->value.dtype() != w ||
        m->gemm_dtype_ != eff ||
        // A copy reads no vector (per-token ones scale the activations).
        (fold && (m->u_value_.defined() != first.u_value_.defined() ||
                  m->Gamma().defined() != first.Gamma().defined()))) {
      return false;
    }
  }
  return true;
}

bool ScaledLinearGroup::UnfoldsTogether() const {
  if (!forms_together_ || !maps_.front()->folded()) return false;
  std::vector<const Tensor*> d_u, d_gamma;
  for (const ScaledLinear* m : maps_) {
    if (m->shared_weight_grad_) return false;
    d_u.push_back(&m->d_u_);
    d_gamma.push_back(&m->DGamma());
  }
  // du is each map's own; γ may be shared (mode SHARED), and then so is dγ.
  return AllOwnOrNone(d_u) && AllOwnOrNone(d_gamma);
}

void ScaledLinearGroup::UpdateTables(const ExecContext& ctx) {
  std::vector<Tensor> w, u, gamma, formed, grad, d_u, d_gamma;
  for (const ScaledLinear* m : maps_) {
    w.push_back(m->weight_->value);
    formed.push_back(m->effective_weight());
    grad.push_back(m->weight_->grad);
    if (!m->folded()) continue;  // a copy: no vectors
    if (m->u_value_.defined()) {
      u.push_back(AsRow(m->u_value_));
      d_u.push_back(AsRow(m->d_u_));
    }
    if (m->Gamma().defined()) {
      gamma.push_back(AsRow(m->Gamma()));
      d_gamma.push_back(AsRow(m->DGamma()));
    }
  }
  ops::UpdateMatrixGroup(ctx, std::move(w), weights_);
  ops::UpdateMatrixGroup(ctx, std::move(u), rows_);
  ops::UpdateMatrixGroup(ctx, std::move(gamma), cols_);
  ops::UpdateMatrixGroup(ctx, std::move(formed), formed_);
  ops::UpdateMatrixGroup(ctx, std::move(grad), grads_);
  ops::UpdateMatrixGroup(ctx, std::move(d_u), d_rows_);
  ops::UpdateMatrixGroup(ctx, std::move(d_gamma), d_cols_);
}

Status ScaledLinearGroup::PrepareStep(const ExecContext& ctx, DType dtype) {
  for (ScaledLinear* m : maps_) SM_RETURN_IF_ERROR(m->PrepareBuffers(ctx, dtype));
  forms_together_ = FormsTogether();
  unfolds_together_ = UnfoldsTogether();
  if (!forms_together_) {
    for (ScaledLinear* m : maps_) m->FormGemmWeight(ctx);
    return absl::OkStatus();
  }
  UpdateTables(ctx);
  // W_eff = diag(u)·W·diag(γ) for every map, a bf16 W_eff folded in f32 and
  // rounded once as FormWeight does; or, unfolded, the bf16 copy of W (no
  // vectors: W rounded once, as the Copy).
  ops::ScaleRowsColsGroup(ctx, weights_, rows_, cols_, formed_);
  return absl::OkStatus();
}

Status ScaledLinearGroup::FinishBackward(const ExecContext& ctx) {
  if (unfolds_together_) {
    // Every map's Unfold: in place in W's gradient.
    ops::ScaleRowsColsBackwardGroup(ctx, weights_, rows_, cols_, grads_, grads_, d_rows_, d_cols_);
  } else {
    for (ScaledLinear* m : maps_) {
      if (m->folded()) m->Unfold(ctx);
    }
  }
  for (ScaledLinear* m : maps_) SM_RETURN_IF_ERROR(m->FinishVectors(ctx));
  return absl::OkStatus();
}

}  // namespace scalemoe
