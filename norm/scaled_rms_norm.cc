#include "norm/scaled_rms_norm.h"

#include "core/ops.h"

namespace scalemoe {

ScaledRmsNorm::ScaledRmsNorm(ParamRegistry& registry, const ScaleOptions& options,
                             std::string name, int64_t dim, double eps, ParamLayout layout)
    : name_(std::move(name)), dim_(dim), eps_(eps) {
  if (!options.none()) {
    scale_ = std::make_unique<ScaleVector>(registry, name_ + ".scale", dim,
                                           ParamRole::kOutputNormScale, options.reparam(), layout);
  }
}

Status ScaledRmsNorm::PrepareStep(const ExecContext& ctx, DType dtype) {
  if (!scale_) return absl::OkStatus();
  if (!gamma_.defined() || gamma_.dtype() != dtype) {
    gamma_ = ctx.Empty({dim_}, dtype);
    d_gamma_ = ctx.Empty({dim_}, dtype);
  }
  SM_RETURN_IF_ERROR(scale_->Compute(ctx, gamma_));
  ops::Zero(ctx, d_gamma_);
  return absl::OkStatus();
}

void ScaledRmsNorm::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  SM_CHECK_MSG(x.numel() % dim_ == 0 && y.numel() == x.numel(), name_, ": x ", x.DebugString(),
               " y ", y.DebugString(), " for dim ", dim_);
  const int64_t rows = x.numel() / dim_;
  const Tensor x2 = x.View({rows, dim_});
  n_ = ctx.Empty({rows, dim_}, x.dtype());
  rstd_ = ctx.Empty({rows}, x.dtype());
  ops::RmsNormalize(ctx, x2, eps_, n_, rstd_);
  if (scale_) {
    ops::ScaleRowsCols(ctx, n_, Tensor(), gamma_.View({dim_}), y.View({rows, dim_}));
  } else {
    ops::Copy(ctx, n_, y);
  }
}

void ScaledRmsNorm::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x) {
  const int64_t rows = n_.dim(0);
  SM_CHECK_MSG(d_y.numel() == n_.numel() && d_x.numel() == n_.numel(), name_,
               ": gradient shapes ", d_y.DebugString(), " ", d_x.DebugString());
  Tensor d_n = d_y.View({rows, dim_});
  if (scale_) {
    d_n = ctx.Empty({rows, dim_}, d_y.dtype());
    ops::ScaleRowsColsBackward(ctx, n_, Tensor(), gamma_, d_y.View({rows, dim_}), d_n, Tensor(),
                               d_gamma_);
  }
  ops::RmsNormalizeBackward(ctx, n_, rstd_, d_n, d_x.View({rows, dim_}));
}

Status ScaledRmsNorm::FinishBackward(const ExecContext& ctx) {
  return scale_ ? scale_->Backward(ctx, d_gamma_) : absl::OkStatus();
}

void ScaledRmsNorm::VisitForwardCache(ForwardCacheStash& stash) {
  stash.Visit(n_);
  stash.Visit(rstd_);
}

}  // namespace scalemoe
