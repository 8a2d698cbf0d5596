#include "norm/scaled_rms_norm.h"

#include "core/head_rows.h"
#include "core/ops.h"
#include "norm/scaled_linear.h"

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
  dtype_ = dtype;
  if (!scale_) return absl::OkStatus();
  if (!gamma_.defined() || gamma_.dtype() != dtype) {
    gamma_ = ctx.Empty({dim_}, dtype);
    d_gamma_ = ctx.Empty({dim_}, dtype);
  }
  SM_RETURN_IF_ERROR(scale_->Compute(ctx, gamma_));
  ops::Zero(ctx, d_gamma_);
  return absl::OkStatus();
}

bool ScaledRmsNorm::Fused(const Tensor& x, DType io) const {
  return TakesHeadRows(x.dtype(), io) && HeadRowsOf(x).has_value();
}

bool ScaledRmsNorm::TakesHeadRows(DType x_dtype, DType io) const {
  return scale_ != nullptr && dim_ <= ops::kScaledRmsNormalizeMaxDim && IoFits(x_dtype, io);
}

bool ScaledRmsNorm::IoFits(DType x_dtype, DType io) const {
  constexpr DType kBF16 = DType::kBF16;
  if (dtype_ == DType::kF32 && x_dtype == kBF16) return io == kBF16;  // computed in f32 inside
  return x_dtype == dtype_ && (io == dtype_ || (io == kBF16 && dtype_ == DType::kF32));
}

Tensor ScaledRmsNorm::HeadsView(const Tensor& t) const {
  const int64_t rows = t.numel() / dim_;
  const Shape shape = {rope_.batch, rope_.seq, rows / (rope_.batch * rope_.seq), dim_};
  if (t.is_contiguous()) return t.View(shape);
  SM_CHECK_MSG(t.shape() == shape, name_, ": token-strided ", t.DebugString(), " is not [",
               rope_.batch, ", ", rope_.seq, ", H, ", dim_, "]");
  return t;  // already the [B, T, H, dim] slice of a wider matrix
}

bool ScaledRmsNorm::TableFits() const {
  return rope_.table.defined() && rope_.table.dtype() == dtype_ &&
         rope_.table.dim(1) >= rope_.seq && rope_.table.dim(2) == dim_ / 2;
}

Tensor ScaledRmsNorm::RopeTableFor(const Tensor& t) const {
  return TableFits() && rope_.table.dtype() == StatDType(t.dtype()) ? rope_.table : Tensor();
}

void ScaledRmsNorm::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y,
                            const Rope* rope) {
  SM_CHECK_MSG(x.numel() % dim_ == 0 && y.numel() == x.numel(), name_, ": x ", x.DebugString(),
               " y ", y.DebugString(), " for dim ", dim_);
  const int64_t rows = x.numel() / dim_;
  rope_ = rope ? *rope : Rope{};
  if (rope) {
    SM_CHECK_MSG(
        rope->batch > 0 && rope->seq > 0 && rows % (rope->batch * rope->seq) == 0 && dim_ % 2 == 0,
        name_, ": RoPE over ", rope->batch, " x ", rope->seq, " tokens for ", x.DebugString(),
        " of head dim ", dim_);
  }
  rstd_ = ctx.Empty({rows}, dtype_);
  SM_CHECK_MSG(x.is_contiguous() || Fused(x, y.dtype()), name_, ": x ", x.DebugString(),
               " is token-strided, which only the one-op path takes (TakesHeadRows)");
  if (Fused(x, y.dtype())) {  // one pass; the backward recomputes n from x
    // A token-strided x (the q|k|v projection's slice) is kept as it is.
    x_ = x.is_contiguous() ? x.View({rows, dim_}) : x;
    n_ = Tensor();
    if (rope && TableFits()) {
      ops::ScaledRmsNormalizeRope(ctx, HeadsView(x), gamma_, eps_, rope_.table, HeadsView(y),
                                  rstd_);
      return;
    }
    ops::ScaledRmsNormalize(ctx, x_, gamma_, eps_, y.View({rows, dim_}), rstd_);
  } else {
    x_ = Tensor();
    // In the master's dtype (bf16 activations are converted in and out).
    const Tensor x2 = InDType(ctx, x.View({rows, dim_}), dtype_);
    n_ = ctx.Empty({rows, dim_}, dtype_);
    ops::RmsNormalize(ctx, x2, eps_, n_, rstd_);
    if (!scale_) {
      ops::Copy(ctx, n_, y);
    } else {
      const Tensor out =
          y.dtype() == dtype_ ? y.View({rows, dim_}) : ctx.Empty({rows, dim_}, dtype_);
      ops::ScaleRowsCols(ctx, n_, Tensor(), gamma_.View({dim_}), out);
      if (!out.SharesDataWith(y)) ops::Copy(ctx, out, y);
    }
  }
  if (rope) ops::Rope(ctx, HeadsView(y), rope_.theta, HeadsView(y), RopeTableFor(y));
}

void ScaledRmsNorm::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x) {
  const int64_t rows = rstd_.numel();
  SM_CHECK_MSG(d_y.numel() == rows * dim_ && d_x.numel() == rows * dim_, name_,
               ": gradient shapes ", d_y.DebugString(), " ", d_x.DebugString(), " for ", rows,
               " rows of ", dim_);
  const bool rope = rope_.batch > 0;
  SM_CHECK_MSG(d_x.is_contiguous() || (x_.defined() && IoFits(x_.dtype(), d_x.dtype())), name_,
               ": d_x ", d_x.DebugString(), " is token-strided, which only the one-op path takes");
  if (x_.defined()) {
    // The fused op takes d_y and d_x in one dtype: d_x's where it may (a
    // token-strided d_x, a slice of the q|k|v GEMMs' input, as it is), else
    // x's (which always fits).
    const DType io = IoFits(x_.dtype(), d_x.dtype()) ? d_x.dtype() : x_.dtype();
    const Tensor d_x2 = d_x.dtype() != io     ? ctx.Empty({rows, dim_}, io)
                        : d_x.is_contiguous() ? d_x.View({rows, dim_})
                                              : d_x;
    if (rope && TableFits() && d_y.dtype() == io) {
      ops::ScaledRmsNormalizeRopeBackward(ctx, HeadsView(x_), rstd_, gamma_, rope_.table,
                                          HeadsView(d_y), d_x2, d_gamma_);
    } else {
      if (rope) {
        ops::RopeBackward(ctx, HeadsView(d_y), rope_.theta, HeadsView(d_y), RopeTableFor(d_y));
      }
      const Tensor d_y2 = InDType(ctx, d_y.View({rows, dim_}), io);
      ops::ScaledRmsNormalizeBackward(ctx, x_, rstd_, gamma_, d_y2, d_x2, d_gamma_);
    }
    if (!d_x2.SharesDataWith(d_x)) ops::Copy(ctx, d_x2, d_x);
    return;
  }
  if (rope) ops::RopeBackward(ctx, HeadsView(d_y), rope_.theta, HeadsView(d_y), RopeTableFor(d_y));
  Tensor d_n = InDType(ctx, d_y.View({rows, dim_}), dtype_);
  if (scale_) {
    Tensor d_y2 = d_n;
    d_n = ctx.Empty({rows, dim_}, dtype_);
    ops::ScaleRowsColsBackward(ctx, n_, Tensor(), gamma_, d_y2, d_n, Tensor(), d_gamma_);
  }
  const Tensor d_x2 =
      d_x.dtype() == dtype_ ? d_x.View({rows, dim_}) : ctx.Empty({rows, dim_}, dtype_);
  ops::RmsNormalizeBackward(ctx, n_, rstd_, d_n, d_x2);
  if (!d_x2.SharesDataWith(d_x)) ops::Copy(ctx, d_x2, d_x);
}

Status ScaledRmsNorm::FinishBackward(const ExecContext& ctx) {
  return scale_ ? scale_->Backward(ctx, d_gamma_) : absl::OkStatus();
}

void ScaledRmsNorm::VisitForwardCache(ForwardCacheStash& stash) {
  stash.Visit(x_);
  stash.Visit(n_);
  stash.Visit(rstd_);
  stash.Visit(rope_.table);
  stash.Visit(rope_.batch);
  stash.Visit(rope_.seq);
}

}  // namespace scalemoe
