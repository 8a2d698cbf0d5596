#include "norm/scale_vector_group.h"

namespace scalemoe {
namespace {

// `t` [n] as the [1, n] matrix a vector group holds.
Tensor AsRow(const Tensor& t) { return t.View({1, t.numel()}); }

}  // namespace

ScaleVectorGroup::ScaleVectorGroup(std::vector<const ScaleVector*> vectors)
    : vectors_(std::move(vectors)) {
  for (size_t i = 0; i < vectors_.size(); ++i) {
    const ScaleVector& v = *vectors_[i];
    const bool plain_md = v.reparam() == config::ScaleVectorConfig::MAGNITUDE_DIRECTION &&
                          (together_.empty() || v.dim() == vectors_[together_[0]]->dim());
    (plain_md ? together_ : alone_).push_back(i);
  }
  if (together_.size() < 2) {  // nothing to gain
    alone_.insert(alone_.end(), together_.begin(), together_.end());
    together_.clear();
  }
}

void ScaleVectorGroup::UpdateValues(const ExecContext& ctx) {
  std::vector<Tensor> alpha, beta;
  for (size_t i : together_) {
    alpha.push_back(AsRow(vectors_[i]->alpha_->value));
    beta.push_back(AsRow(vectors_[i]->beta_->value));
  }
  ops::UpdateMatrixGroup(ctx, std::move(alpha), alpha_);
  ops::UpdateMatrixGroup(ctx, std::move(beta), beta_);
}

Status ScaleVectorGroup::Compute(const ExecContext& ctx, const std::vector<Tensor>& gammas) {
  SM_CHECK(gammas.size() == vectors_.size());
  for (size_t i : alone_) SM_RETURN_IF_ERROR(vectors_[i]->Compute(ctx, gammas[i]));
  if (together_.empty()) return absl::OkStatus();
  UpdateValues(ctx);
  std::vector<Tensor> gamma;
  for (size_t i : together_) {
    SM_CHECK(gammas[i].numel() == vectors_[i]->dim() && gammas[i].is_contiguous());
    gamma.push_back(AsRow(gammas[i]));
  }
  ops::UpdateMatrixGroup(ctx, std::move(gamma), gamma_);
  ops::MagnitudeDirectionGroup(ctx, alpha_, beta_, gamma_);
  return absl::OkStatus();
}

Status ScaleVectorGroup::Backward(const ExecContext& ctx, const std::vector<Tensor>& d_gammas) {
  SM_CHECK(d_gammas.size() == vectors_.size());
  for (size_t i : alone_) SM_RETURN_IF_ERROR(vectors_[i]->Backward(ctx, d_gammas[i]));
  if (together_.empty()) return absl::OkStatus();
  UpdateValues(ctx);
  std::vector<Tensor> d_gamma, d_alpha, d_beta;
  for (size_t i : together_) {
    SM_CHECK(d_gammas[i].numel() == vectors_[i]->dim() && d_gammas[i].is_contiguous());
    d_gamma.push_back(AsRow(d_gammas[i]));
    d_alpha.push_back(AsRow(vectors_[i]->alpha_->grad));
    d_beta.push_back(AsRow(vectors_[i]->beta_->grad));
  }
  ops::UpdateMatrixGroup(ctx, std::move(d_gamma), d_gamma_);
  ops::UpdateMatrixGroup(ctx, std::move(d_alpha), d_alpha_);
  ops::UpdateMatrixGroup(ctx, std::move(d_beta), d_beta_);
  // The plain form: dα += β·dγ, dβ += <α, dγ> (a split α's slice share, as
  // ScaleVector::Backward's dots[2]).
  ops::MagnitudeDirectionBackwardGroup(ctx, alpha_, beta_, d_gamma_, d_alpha_, d_beta_);
  return absl::OkStatus();
}

}  // namespace scalemoe
