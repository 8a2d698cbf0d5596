#include "parallel/tp_folded_weight.h"

#include "core/ops.h"

namespace scalemoe {
namespace {

Status CheckVector(const Tensor& value, const Tensor& grad, int64_t dim, DType dtype,
                   const std::string& what) {
  if (!value.defined()) return absl::OkStatus();
  for (const Tensor* t : {&value, &grad}) {
    if (!t->defined() || t->ndim() != 1 || t->dim(0) != dim || t->dtype() != dtype ||
        !t->is_contiguous()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the scale vector and its gradient must both be contiguous ",
                       DTypeName(dtype), "[", dim, "] (this rank's part), got ",
                       t->defined() ? t->DebugString() : std::string("undefined")));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Status FoldedWeight::Prepare(const ExecContext& ctx, const TpLinearScales& scales,
                             const std::string& layer) {
  const Tensor& w = weight_->value;
  SM_RETURN_IF_ERROR(
      CheckVector(scales.gamma, scales.d_gamma, w.dim(1), w.dtype(), layer + " gamma"));
  SM_RETURN_IF_ERROR(CheckVector(scales.u, scales.d_u, w.dim(0), w.dtype(), layer + " u"));
  scales_ = scales;
  if (!folded()) return absl::OkStatus();
  if (!w_eff_.defined() || w_eff_.dtype() != w.dtype()) {
    w_eff_ = Tensor::Empty(weight_->local_shape, w.dtype(), ctx.device);
    d_w_eff_ = Tensor::Empty(weight_->local_shape, w.dtype(), ctx.device);
  }
  ops::ScaleRowsCols(ctx, w, scales_.u, scales_.gamma, w_eff_);
  ops::Zero(ctx, d_w_eff_);
  return absl::OkStatus();
}

void FoldedWeight::Finish(const ExecContext& ctx, const Tensor& d_gamma, const Tensor& d_u) {
  if (!folded()) return;
  Tensor d_w = Tensor::Empty(weight_->local_shape, d_w_eff_.dtype(), d_w_eff_.device());
  ops::ScaleRowsColsBackward(ctx, weight_->value, scales_.u, scales_.gamma, d_w_eff_, d_w,
                             scales_.u.defined() ? d_u : Tensor(),
                             scales_.gamma.defined() ? d_gamma : Tensor());
  ops::Axpy(ctx, 1.0, d_w, weight_->grad);
}

}  // namespace scalemoe
