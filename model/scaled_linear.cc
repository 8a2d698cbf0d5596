#include "model/scaled_linear.h"

#include "core/ops.h"

namespace scalemoe {

ScaledLinear::ScaledLinear(ParamRegistry& registry, Param* weight, const BranchScales* scales,
                           int branch, const std::string& u_name, Reparam reparam,
                           ScalePath path, Communicator* tp)
    : weight_(weight),
      scales_(scales),
      branch_(branch),
      linear_(weight, path == ScalePath::kFold) {
  if (!u_name.empty()) {
    ParamLayout layout = weight->spec.layout;
    // u runs along W's rows: split with them if W is row-split, else
    // replicated (a share of its gradient per rank if W's columns are split).
    layout.tp_split_dim = weight->spec.layout.tp_split_dim == 0 ? 0 : -1;
    layout.tp_partial_grad = weight->spec.layout.tp_split_dim == 1;
    u_ = std::make_unique<ScaleVector>(registry, u_name, weight->spec.shape[0],
                                       ParamRole::kOutputNormScale, reparam, layout, tp);
  }
}

const Tensor& ScaledLinear::Gamma() const {
  return scales_ ? scales_->gamma(branch_) : undefined_;
}
const Tensor& ScaledLinear::DGamma() const {
  return scales_ ? scales_->d_gamma(branch_) : undefined_;
}

Status ScaledLinear::PrepareStep(const ExecContext& ctx, DType dtype) {
  if (u_) {
    if (!u_value_.defined() || u_value_.dtype() != dtype) {
      u_value_ = ctx.Empty({out_features()}, dtype);
      d_u_ = ctx.Empty({out_features()}, dtype);
    }
    SM_RETURN_IF_ERROR(u_->Compute(ctx, u_value_));
    ops::Zero(ctx, d_u_);
  }
  linear_.PrepareStep(ctx, Gamma(), DGamma(), u_value_, d_u_);
  return absl::OkStatus();
}

void ScaledLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  x_ = x;
  linear_.Forward(ctx, x, y, &cache_);
}

void ScaledLinear::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                            GradMode mode) {
  linear_.Backward(ctx, x_, cache_, d_y, d_x, mode);
}

Status ScaledLinear::FinishBackward(const ExecContext& ctx) {
  linear_.FinishBackward(ctx);
  return u_ ? u_->Backward(ctx, d_u_) : absl::OkStatus();
}

}  // namespace scalemoe
