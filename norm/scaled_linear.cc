#include "norm/scaled_linear.h"

#include "core/ops.h"

namespace scalemoe {

ScaledLinear::ScaledLinear(ParamRegistry& registry, Param* weight, const BranchScales* scales,
                           int branch, const ScaledLinearOptions& options)
    : weight_(weight),
      scales_(scales),
      branch_(branch),
      fold_(options.path != ScalePath::kPerToken),
      just_in_time_(options.path == ScalePath::kFoldJustInTime),
      shared_weight_grad_(options.shared_weight_grad),
      bf16_operands_(options.bf16_operands),
      bf16_parts_(options.bf16_parts) {
  SM_CHECK_MSG(weight_ != nullptr && weight_->spec.shape.size() == 2,
               "ScaledLinear needs a 2-D weight");
  if (scales_ != nullptr) scales_->AddFoldTarget(branch_, weight_->spec.name);
  if (!options.u_name.empty()) {
    const ParamLayout& w = weight->spec.layout;
    ParamLayout layout = w;
    // u runs along W's rows: split with them if W is row-split, else
    // replicated (a share of its gradient per rank if W's columns are split,
    // or if W itself only sees this rank's tokens).
    layout.tp_split_dim = w.tp_split_dim == 0 ? 0 : -1;
    layout.tp_partial_grad = w.tp_partial_grad || w.tp_split_dim == 1;
    u_ = std::make_unique<ScaleVector>(registry, options.u_name, weight->spec.shape[0],
                                       ParamRole::kOutputNormScale, options.reparam, layout,
                                       options.split_group);
    u_->AddFoldTarget(weight_->spec.name, FoldSide::kRows);
  }
}

bool Bf16Operands(const config::RunConfig& cfg) {
  return cfg.train().precision() == config::TrainConfig::BF16;
}

DType ResidualDType(const config::RunConfig& cfg, DType master) {
  return Bf16Operands(cfg) && !cfg.train().fp32_residual_connection() ? DType::kBF16 : master;
}

Tensor InDType(const ExecContext& ctx, const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = ctx.Empty(x.shape(), dtype);
  ops::Copy(ctx, x, out);
  return out;
}

void AddInto(const ExecContext& ctx, const Tensor& x, const Tensor& y, bool accumulate) {
  if (!accumulate) {
    ops::Copy(ctx, x, y);
    return;
  }
  ops::Axpy(ctx, 1.0, InDType(ctx, x, y.dtype()), y);
}

Tensor SharedGemmInput(const ExecContext& ctx, const Tensor& x,
                       std::initializer_list<const ScaledLinear*> linears) {
  const DType dtype = (*linears.begin())->gemm_dtype();
  for (const ScaledLinear* l : linears) {
    if (!l->gemm_reads_x() || l->gemm_dtype() != dtype) return x;
  }
  return InDType(ctx, x, dtype);
}

const Tensor& ScaledLinear::Gamma() const {
  return scales_ ? scales_->gamma(branch_) : undefined_;
}
const Tensor& ScaledLinear::DGamma() const {
  return scales_ ? scales_->d_gamma(branch_) : undefined_;
}

const Tensor& ScaledLinear::GemmWeightGrad() const {
  if (!folded()) return weight_->grad;
  return shared_weight_grad_ ? d_w_eff_ : weight_->grad;
}

Status ScaledLinear::PrepareStep(const ExecContext& ctx, DType dtype) {
  SM_RETURN_IF_ERROR(PrepareBuffers(ctx, dtype));
  FormGemmWeight(ctx);
  return absl::OkStatus();
}

Status ScaledLinear::PrepareBuffers(const ExecContext& ctx, DType dtype) {
  if (u_) {
    if (!u_value_.defined() || u_value_.dtype() != dtype) {
      u_value_ = ctx.Empty({out_features()}, dtype);
      d_u_ = ctx.Empty({out_features()}, dtype);
    }
    SM_RETURN_IF_ERROR(u_->Compute(ctx, u_value_));
    ops::Zero(ctx, d_u_);
  }
  const Tensor& w = weight_->value;
  gemm_dtype_ = bf16_operands_ ? DType::kBF16 : w.dtype();
  if (UsesParts() && !w_parts_.defined()) {
    w_parts_ = ctx.Empty({3 * out_features(), in_features()}, DType::kBF16);
    w_parts_rep_ = ctx.Empty({9 * out_features(), in_features()}, DType::kBF16);
  }
  if (!folded()) {
    if (gemm_dtype_ != w.dtype()) {
      if (!w_copy_.defined()) w_copy_ = OwnGemmWeight(ctx);
    }
    return absl::OkStatus();
  }
  if (shared_weight_grad_) {
    if (!d_w_eff_.defined()) d_w_eff_ = ctx.Empty(w.shape(), w.dtype());
    ops::Zero(ctx, d_w_eff_);
  }
  if (just_in_time_) return absl::OkStatus();
  if (!w_eff_.defined() || w_eff_.dtype() != gemm_dtype_) {
    w_eff_ = OwnGemmWeight(ctx);
  }
  return absl::OkStatus();
}

Tensor ScaledLinear::OwnGemmWeight(const ExecContext& ctx) const {
  const Tensor& w = weight_->value;
  if (weight_storage_.defined() && weight_storage_.dtype() == gemm_dtype_ &&
      weight_storage_.shape() == w.shape()) {
    return weight_storage_;
  }
  return ctx.Empty(w.shape(), gemm_dtype_);
}

void ScaledLinear::FormGemmWeight(const ExecContext& ctx) const {
  if (FoldsOncePerStep()) {
    FormWeight(ctx, w_eff_);
  } else if (CopiesWeight()) {
    ops::Copy(ctx, weight_->value, w_copy_);
  }
  if (UsesParts()) FormWeightParts(ctx);
}

void ScaledLinear::FormWeightParts(const ExecContext& ctx) const {
  const Tensor& w = effective_weight();
  const int64_t n = w.numel(), rows = 3 * out_features();
  ops::SplitBf16(ctx, w.View({1, n}), 1, w_parts_.View({1, 3 * n}));
  for (int64_t i = 0; i < 3; ++i) ops::Copy(ctx, w_parts_, w_parts_rep_.Narrow(0, i * rows, rows));
}

void ScaledLinear::FormWeight(const ExecContext& ctx, const Tensor& out) const {
  const Tensor& w = weight_->value;
  if (out.dtype() == w.dtype()) {
    ops::ScaleRowsCols(ctx, w, u_value_, Gamma(), out);
    return;
  }
  // Folded in the master's precision, rounded once.
  Tensor folded = ctx.Empty(w.shape(), w.dtype());
  ops::ScaleRowsCols(ctx, w, u_value_, Gamma(), folded);
  ops::Copy(ctx, folded, out);
}

Tensor ScaledLinear::GemmWeight(const ExecContext& ctx) const {
  if (!folded() || !just_in_time_) return effective_weight();
  Tensor w_eff = ctx.Empty(weight_->value.shape(), gemm_dtype_);
  FormWeight(ctx, w_eff);
  return w_eff;
}

void ScaledLinear::Forward(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  x_ = x;
  input_ = x;
  if (UsesParts() && x.dtype() == DType::kBF16) {
    ForwardParts(ctx, x, y);
    return;
  }
  // The per-token scalings run in the vectors' (the master's) dtype, on a
  // copy of bf16 activations: γ ⊙ x is rounded once, as in the fold.
  const DType scale_dtype = weight_->value.dtype();
  if (per_token_gamma()) {
    input_ = ctx.Empty(x.shape(), scale_dtype);
    ops::ScaleRowsCols(ctx, InDType(ctx, x, scale_dtype), Tensor(), Gamma(), input_);
  }
  input_ = InDType(ctx, input_, gemm_dtype_);
  const Tensor w = GemmWeight(ctx);
  const ops::GemmOptions xwt{.trans_b = ops::Trans::kYes};
  if (!per_token_u()) {
    ops::Gemm(ctx, input_, w, y, xwt);
    return;
  }
  raw_ = ctx.Empty(y.shape(), scale_dtype);
  ops::Gemm(ctx, input_, w, raw_, xwt);
  if (y.dtype() == scale_dtype) {
    ops::ScaleRowsCols(ctx, raw_, Tensor(), u_value_, y);
    return;
  }
  Tensor scaled = ctx.Empty(y.shape(), scale_dtype);
  ops::ScaleRowsCols(ctx, raw_, Tensor(), u_value_, scaled);
  ops::Copy(ctx, scaled, y);
}

void ScaledLinear::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                            GradMode mode, double grad_scale) {
  const bool accumulate = mode == GradMode::kAccumulate;
  if (UsesParts() && input_.dtype() == DType::kBF16) {
    BackwardParts(ctx, d_y, d_x, accumulate, grad_scale);
    return;
  }
  const DType scale_dtype = weight_->value.dtype();
  Tensor d_raw = d_y;
  double alpha = grad_scale;  // on the GEMMs below
  if (per_token_u()) {
    // d_u sums d_y itself: scaled first.
    if (grad_scale != 1.0) ops::Scale(ctx, grad_scale, d_y);
    alpha = 1.0;
    d_raw = ctx.Empty(d_y.shape(), scale_dtype);
    ops::ScaleRowsColsBackward(ctx, raw_, Tensor(), u_value_, InDType(ctx, d_y, scale_dtype), d_raw,
                               Tensor(), d_u_);
  }
  const Tensor d_gemm = InDType(ctx, d_raw, gemm_dtype_);
  // The weight's (or the folded weight's) gradient, accumulated over the step.
  ops::Gemm(ctx, d_gemm, input_, GemmWeightGrad(),
            {.trans_a = ops::Trans::kYes, .alpha = alpha, .beta = 1.0});
  const Tensor w = GemmWeight(ctx);
  if (!per_token_gamma()) {
    ops::Gemm(ctx, d_gemm, w, d_x, {.alpha = alpha, .beta = accumulate ? 1.0 : 0.0});
    return;
  }
  Tensor d_in = ctx.Empty(x_.shape(), scale_dtype);
  ops::Gemm(ctx, d_gemm, w, d_in, {.alpha = alpha});
  const Tensor x = InDType(ctx, x_, scale_dtype);
  if (!accumulate && d_x.dtype() == scale_dtype) {
    ops::ScaleRowsColsBackward(ctx, x, Tensor(), Gamma(), d_in, d_x, Tensor(), DGamma());
    return;
  }
  // d_in becomes the part (ScaleRowsColsBackward's d_x may alias its d_out).
  ops::ScaleRowsColsBackward(ctx, x, Tensor(), Gamma(), d_in, d_in, Tensor(), DGamma());
  AddInto(ctx, d_in, d_x, accumulate);
}

namespace {

// Token chunks of the parts' weight gradient: one [3R, C] product per chunk
// of at least 512 tokens (a batched GEMM), then the chunks added in order.
// One product over all tokens is a handful of output tiles, too few to fill
// a GPU. A function of the token count only: the same bits on every device.
int64_t TokenChunks(int64_t tokens) {
  int64_t chunks = 1;
  while (chunks < 64 && tokens % (2 * chunks) == 0 && tokens / (2 * chunks) >= 512) chunks *= 2;
  return chunks;
}

}  // namespace

void ScaledLinear::ForwardParts(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  SM_CHECK_MSG(x.ndim() == 2 && y.dtype() == DType::kF32, "ScaledLinear (bf16 parts): x ",
               x.DebugString(), " y ", y.DebugString(), " (want [T, C] into f32 [T, R])");
  // y = x·(hi + mid + lo)ᵀ: one bf16 GEMM into the parts' column blocks, then their sum.
  Tensor y_parts = ctx.Empty({x.dim(0), 3 * out_features()}, DType::kF32);
  ops::Gemm(ctx, x, w_parts_, y_parts, {.trans_b = ops::Trans::kYes});
  ops::AddParts(ctx, y_parts, 0.0, y);
}

void ScaledLinear::BackwardParts(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                                 bool accumulate, double alpha) {
  const int64_t tokens = d_y.dim(0), r = out_features(), c = in_features();
  SM_CHECK_MSG(d_y.dtype() == DType::kF32 && d_y.ndim() == 2 && d_y.dim(1) == r,
               "ScaledLinear (bf16 parts): d_y ", d_y.DebugString(), " (want f32 [T, ", r, "])");
  // dW (or dW_eff) += α·d_yᵀ·x over d_y's parts, a product per token chunk.
  Tensor d_parts = ctx.Empty({tokens, 3 * r}, DType::kBF16);
  ops::SplitBf16(ctx, d_y, 1, d_parts);
  const int64_t chunks = TokenChunks(tokens), rows = tokens / chunks;
  Tensor partial = ctx.Empty({chunks, 3 * r, c}, DType::kF32);
  ops::Gemm(ctx, d_parts.View({chunks, rows, 3 * r}), input_.View({chunks, rows, c}), partial,
            {.trans_a = ops::Trans::kYes, .alpha = alpha});
  ops::AddParts(ctx, partial.View({1, chunks * 3 * r * c}), 1.0, GemmWeightGrad().View({1, r * c}));
  // d_x = α·Σ_{p,q} d_p·W_q: d_y's parts, each repeated thrice, against
  // W's three parts three times over (block b pairs d_{b/3} with W_{b%3}).
  Tensor d_rep = ctx.Empty({tokens, 9 * r}, DType::kBF16);
  ops::SplitBf16(ctx, d_y, 3, d_rep);
  ops::Gemm(ctx, d_rep, w_parts_rep_, d_x, {.alpha = alpha, .beta = accumulate ? 1.0 : 0.0});
}

Status ScaledLinear::FinishBackward(const ExecContext& ctx) {
  if (folded()) Unfold(ctx);
  return FinishVectors(ctx);
}

void ScaledLinear::Unfold(const ExecContext& ctx) {
  // The GEMMs accumulated dW_eff with W_eff = diag(u)·W·diag(γ):
  // ScaleRowsColsBackward gives dW = dW_eff ⊙ u γᵀ and the vectors'
  // gradients in one pass — in place in W's gradient (its sums read dW_eff
  // before overwriting it), or from the separate buffer of a shared one.
  if (shared_weight_grad_) {
    Tensor d_w = ctx.Empty(d_w_eff_.shape(), d_w_eff_.dtype());
    ops::ScaleRowsColsBackward(ctx, weight_->value, u_value_, Gamma(), d_w_eff_, d_w, d_u_,
                               DGamma());
    ops::Axpy(ctx, 1.0, d_w, weight_->grad);
  } else {
    ops::ScaleRowsColsBackward(ctx, weight_->value, u_value_, Gamma(), weight_->grad, weight_->grad,
                               d_u_, DGamma());
  }
}

Status ScaledLinear::FinishVectors(const ExecContext& ctx) {
  return u_ ? u_->Backward(ctx, d_u_) : absl::OkStatus();
}

void ScaledLinear::VisitForwardCache(ForwardCacheStash& stash) {
  stash.Visit(x_);
  stash.Visit(input_);
  stash.Visit(raw_);
}

}  // namespace scalemoe
