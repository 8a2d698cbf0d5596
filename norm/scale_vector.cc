#include "norm/scale_vector.h"

#include "core/ops.h"

namespace scalemoe {
namespace {

ParamSpec VectorSpec(std::string name, Shape shape, ParamRole role, ParamLayout layout,
                     const std::string& vector, VectorPart part) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.role = role;
  s.init = InitSpec::Ones();
  s.layout = layout;
  s.scale_vector.vector = vector;
  s.scale_vector.part = part;
  return s;
}

}  // namespace

ScaleVector::ScaleVector(ParamRegistry& registry, std::string name, int64_t dim, ParamRole role,
                         Reparam reparam, ParamLayout layout, Communicator* split_group)
    : name_(std::move(name)), dim_(dim), role_(role), reparam_(reparam) {
  SM_CHECK_MSG(IsScaleVector(role), name_, ": a scale vector needs a norm-scale role");
  if (reparam == config::ScaleVectorConfig::PLAIN) {
    plain_ = registry.Create(VectorSpec(name_, {dim}, role, layout, name_, VectorPart::kPlain));
  } else {
    // β is a scalar: never split over TP, whatever the vector's layout; of a
    // split vector each rank computes only its slice's share of dβ.
    ParamLayout scalar_layout = layout;
    scalar_layout.tp_split_dim = -1;
    if (layout.tp_split_dim >= 0) scalar_layout.tp_partial_grad = true;
    beta_ = registry.Create(
        VectorSpec(name_ + ".beta", {1}, role, scalar_layout, name_, VectorPart::kBeta));
    alpha_ = registry.Create(
        VectorSpec(name_ + ".alpha", {dim}, role, layout, name_, VectorPart::kAlpha));
  }
  local_dim_ = (plain_ != nullptr ? plain_ : alpha_)->local_numel();
  if (local_dim_ != dim_ && reparam == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
    SM_CHECK_MSG(split_group != nullptr && split_group->size() * local_dim_ == dim_, name_,
                 ": a normalized magnitude-direction vector split over tensor parallel ranks "
                 "needs the communicator of the group it is split over");
    split_group_ = split_group;
  }
}

void ScaleVector::AddFoldTarget(const std::string& weight, FoldSide side) const {
  for (Param* p : {plain_, alpha_, beta_}) {
    if (p != nullptr) p->spec.scale_vector.folds_into.push_back({weight, side});
  }
}

Status ScaleVector::Compute(const ExecContext& ctx, const Tensor& gamma) const {
  SM_CHECK_MSG(gamma.numel() == local_dim_ && gamma.is_contiguous(), name_, ": gamma ",
               gamma.DebugString());
  if (plain_ != nullptr) {
    ops::Copy(ctx, plain_->value, gamma);
    return absl::OkStatus();
  }
  Tensor norm_sq;  // ‖α‖² of the whole vector (normalized form only)
  if (reparam_ == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
    norm_sq = ctx.Empty({1}, DType::kF64);
    ops::Dot(ctx, alpha_->value, alpha_->value, norm_sq);
    if (split_group_ != nullptr) {
      SM_RETURN_IF_ERROR(WithContext(split_group_->AllReduce(ctx, norm_sq), name_));
    }
  }
  ops::MagnitudeDirection(ctx, alpha_->value, beta_->value, norm_sq, dim_, gamma);
  return absl::OkStatus();
}

Status ScaleVector::Backward(const ExecContext& ctx, const Tensor& d_gamma) const {
  SM_CHECK_MSG(d_gamma.numel() == local_dim_ && d_gamma.is_contiguous(), name_, ": d_gamma ",
               d_gamma.DebugString());
  if (plain_ != nullptr) {
    ops::Axpy(ctx, 1.0, d_gamma, plain_->grad);
    return absl::OkStatus();
  }
  // {‖α‖², <α,dγ> whole, <α,dγ> this slice}: split over TP, dβ gets this
  // slice's share only (β is tp_partial_grad); the normalized form needs the
  // first two over the whole vector.
  Tensor dots = ctx.Empty({3}, DType::kF64);
  ops::Dot(ctx, alpha_->value, d_gamma, dots.Narrow(0, 2, 1));
  const bool normalized = reparam_ == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED;
  if (normalized) {
    ops::Dot(ctx, alpha_->value, alpha_->value, dots.Narrow(0, 0, 1));
    ops::Copy(ctx, dots.Narrow(0, 2, 1), dots.Narrow(0, 1, 1));
    if (split_group_ != nullptr) {
      SM_RETURN_IF_ERROR(WithContext(split_group_->AllReduce(ctx, dots.Narrow(0, 0, 2)), name_));
    }
  }
  ops::MagnitudeDirectionBackward(ctx, alpha_->value, beta_->value, dots, normalized ? dim_ : 0,
                                  d_gamma, alpha_->grad, beta_->grad);
  return absl::OkStatus();
}

}  // namespace scalemoe
