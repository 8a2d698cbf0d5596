#include "model/scaled_linear.h"

#include "core/ops.h"

namespace scalemoe {

ScaledLinear::ScaledLinear(ParamRegistry& registry, Param* weight, const BranchScales* scales,
                           int branch, const std::string& u_name, Reparam reparam,
                           ScalePath path, Communicator* tp)
    : weight_(weight), scales_(scales), branch_(branch), path_(path) {
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

void ScaledLinear::PrepareStep(const ExecContext& ctx, DType dtype) {
  if (u_) {
    if (!u_value_.defined() || u_value_.dtype() != dtype) {
      u_value_ = Tensor::Empty({out_features()}, dtype, ctx.device);
      d_u_ = Tensor::Empty({out_features()}, dtype, ctx.device);
    }
    u_->Compute(ctx, u_value_);
    ops::Zero(ctx, d_u_);
  }
  if (!folded()) return;
  if (!w_eff_.defined() || w_eff_.dtype() != dtype) {
    w_eff_ = Tensor::Empty(weight_->local_shape, dtype, ctx.device);
    d_w_eff_ = Tensor::Empty(weight_->local_shape, dtype, ctx.device);
  }
  ops::ScaleRowsCols(ctx, weight_->value, u_value_, Gamma(), w_eff_);
  ops::Zero(ctx, d_w_eff_);
}

void ScaledLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  const ops::GemmOptions xwt{.trans_b = ops::Trans::kYes};
  x_ = x;
  if (path_ == ScalePath::kFold) {
    ops::Gemm(ctx, x, folded() ? w_eff_ : weight_->value, y, xwt);
    return;
  }
  x_scaled_ = x;
  if (Gamma().defined()) {
    x_scaled_ = Tensor::Empty(x.shape(), x.dtype(), x.device());
    ops::ScaleRowsCols(ctx, x, Tensor(), Gamma(), x_scaled_);
  }
  if (!u_) {
    ops::Gemm(ctx, x_scaled_, weight_->value, y, xwt);
    return;
  }
  y_raw_ = Tensor::Empty(y.shape(), y.dtype(), y.device());
  ops::Gemm(ctx, x_scaled_, weight_->value, y_raw_, xwt);
  // Row scaling of a [N, out] matrix by u [out] is its column scaling.
  ops::ScaleRowsCols(ctx, y_raw_, Tensor(), u_value_, y);
}

void ScaledLinear::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                            GradMode mode) {
  const double beta = mode == GradMode::kAccumulate ? 1.0 : 0.0;
  if (path_ == ScalePath::kFold) {
    const bool f = folded();
    ops::Gemm(ctx, d_y, x_, f ? d_w_eff_ : weight_->grad,
              {.trans_a = ops::Trans::kYes, .beta = 1.0});
    ops::Gemm(ctx, d_y, f ? w_eff_ : weight_->value, d_x, {.beta = beta});
    return;
  }
  Tensor d_raw = d_y;
  if (u_) {
    d_raw = Tensor::Empty(d_y.shape(), d_y.dtype(), d_y.device());
    ops::ScaleRowsColsBackward(ctx, y_raw_, Tensor(), u_value_, d_y, d_raw, Tensor(), d_u_);
  }
  ops::Gemm(ctx, d_raw, x_scaled_, weight_->grad, {.trans_a = ops::Trans::kYes, .beta = 1.0});
  if (!Gamma().defined()) {
    ops::Gemm(ctx, d_raw, weight_->value, d_x, {.beta = beta});
    return;
  }
  Tensor d_scaled = Tensor::Empty(x_.shape(), x_.dtype(), x_.device());
  ops::Gemm(ctx, d_raw, weight_->value, d_scaled);
  if (mode == GradMode::kOverwrite) {
    ops::ScaleRowsColsBackward(ctx, x_, Tensor(), Gamma(), d_scaled, d_x, Tensor(), DGamma());
    return;
  }
  Tensor d_part = Tensor::Empty(x_.shape(), x_.dtype(), x_.device());
  ops::ScaleRowsColsBackward(ctx, x_, Tensor(), Gamma(), d_scaled, d_part, Tensor(), DGamma());
  ops::Axpy(ctx, 1.0, d_part, d_x);
}

void ScaledLinear::FinishBackward(const ExecContext& ctx) {
  if (folded()) {
    Tensor d_w = Tensor::Empty(weight_->local_shape, d_w_eff_.dtype(), d_w_eff_.device());
    ops::ScaleRowsColsBackward(ctx, weight_->value, u_value_, Gamma(), d_w_eff_, d_w,
                               u_ ? d_u_ : Tensor(), DGamma());
    ops::Axpy(ctx, 1.0, d_w, weight_->grad);
  }
  if (u_) u_->Backward(ctx, d_u_);
}

}  // namespace scalemoe
