#include "norm/folded_linear.h"

#include "core/ops.h"

namespace scalemoe {

FoldedLinear::FoldedLinear(Param* weight, bool fold_into_weights)
    : weight_(weight), fold_(fold_into_weights) {
  SM_CHECK_MSG(weight_ != nullptr && weight_->spec.shape.size() == 2,
               "FoldedLinear needs a 2-D weight");
}

void FoldedLinear::PrepareStep(const ExecContext& ctx, const Tensor& gamma,
                               const Tensor& d_gamma, const Tensor& u, const Tensor& d_u) {
  gamma_ = gamma;
  d_gamma_ = d_gamma;
  u_ = u;
  d_u_ = d_u;
  if (!folded()) return;
  const Tensor& w = weight_->value;
  if (!w_eff_.defined() || w_eff_.dtype() != w.dtype()) {
    w_eff_ = ctx.Empty(w.shape(), w.dtype());
    d_w_eff_ = ctx.Empty(w.shape(), w.dtype());
  }
  ops::ScaleRowsCols(ctx, w, u_, gamma_, w_eff_);
  ops::Zero(ctx, d_w_eff_);
}

void FoldedLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y,
                           Cache* cache) const {
  const Tensor& w = folded() ? w_eff_ : weight_->value;
  cache->input = x;
  if (per_token_gamma()) {
    cache->input = ctx.Empty(x.shape(), x.dtype());
    ops::ScaleRowsCols(ctx, x, Tensor(), gamma_, cache->input);
  }
  const ops::GemmOptions xwt{.trans_b = ops::Trans::kYes};
  if (!per_token_u()) {
    ops::Gemm(ctx, cache->input, w, y, xwt);
    return;
  }
  cache->raw = ctx.Empty(y.shape(), y.dtype());
  ops::Gemm(ctx, cache->input, w, cache->raw, xwt);
  ops::ScaleRowsCols(ctx, cache->raw, Tensor(), u_, y);
}

void FoldedLinear::Backward(const ExecContext& ctx, const Tensor& x, const Cache& cache,
                            const Tensor& d_y, const Tensor& d_x, GradMode mode) const {
  const bool accumulate = mode == GradMode::kAccumulate;
  const Tensor& w = folded() ? w_eff_ : weight_->value;
  const Tensor& d_w = folded() ? d_w_eff_ : weight_->grad;
  Tensor d_raw = d_y;
  if (per_token_u()) {
    d_raw = ctx.Empty(d_y.shape(), d_y.dtype());
    ops::ScaleRowsColsBackward(ctx, cache.raw, Tensor(), u_, d_y, d_raw, Tensor(), d_u_);
  }
  ops::Gemm(ctx, d_raw, cache.input, d_w, {.trans_a = ops::Trans::kYes, .beta = 1.0});
  if (!per_token_gamma()) {
    ops::Gemm(ctx, d_raw, w, d_x, {.beta = accumulate ? 1.0 : 0.0});
    return;
  }
  Tensor d_in = ctx.Empty(x.shape(), x.dtype());
  ops::Gemm(ctx, d_raw, w, d_in);
  if (!accumulate) {
    ops::ScaleRowsColsBackward(ctx, x, Tensor(), gamma_, d_in, d_x, Tensor(), d_gamma_);
    return;
  }
  Tensor d_part = ctx.Empty(x.shape(), x.dtype());
  ops::ScaleRowsColsBackward(ctx, x, Tensor(), gamma_, d_in, d_part, Tensor(), d_gamma_);
  ops::Axpy(ctx, 1.0, d_part, d_x);
}

void FoldedLinear::FinishBackward(const ExecContext& ctx) {
  if (!folded()) return;
  // dW_eff = dY'ᵀX with W_eff = diag(u)·W·diag(γ): ScaleRowsColsBackward
  // gives dW and the row/column vector gradients in one pass.
  Tensor d_w = ctx.Empty(w_eff_.shape(), w_eff_.dtype());
  ops::ScaleRowsColsBackward(ctx, weight_->value, u_, gamma_, d_w_eff_, d_w, d_u_, d_gamma_);
  ops::Axpy(ctx, 1.0, d_w, weight_->grad);
  ops::Zero(ctx, d_w_eff_);
}

}  // namespace scalemoe
