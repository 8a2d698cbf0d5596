#include "model/block.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "model/weight_spec.h"
#include "norm/scale_options.h"
#include "norm/scaled_linear.h"

namespace scalemoe {

bool IsMoeLayer(const config::RunConfig& cfg, int layer) {
  const config::MoEConfig& moe = cfg.moe();
  if (moe.num_experts() <= 0 || layer < moe.first_dense_layers()) return false;
  const int every = std::max(1, moe.moe_layer_frequency());
  return (layer - moe.first_dense_layers()) % every == 0;
}

Block::Block(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
             const ProcessGroups* groups, const TpRegion& tp)
    : layer_(layer), eps_(cfg.model().norm_eps()), tp_(tp) {
  const std::string p = absl::StrCat("layers.", layer);
  const int64_t c = cfg.model().hidden_size();
  const ScaleOptions so(cfg.scale_vectors());
  // From the config, not the region, so that a model built without process
  // groups (scalemoe inspect) records the same layout as the training ranks'.
  ParamLayout sandwich = LayerLayout(layer);
  sandwich.tp_partial_grad = cfg.parallel().sequence_parallel() && cfg.parallel().tp() > 1;
  attention_ = std::make_unique<Attention>(registry, cfg, layer, tp);
  if (cfg.model().sandwich_norm()) {
    post_attn_norm_ = std::make_unique<ScaledRmsNorm>(registry, so, p + ".post_attn_norm", c,
                                                      eps_, sandwich);
  }
  if (IsMoeLayer(cfg, layer)) {
    moe_ = std::make_unique<MoeLayer>(registry, cfg, layer, p + ".moe", p + ".ffn_norm",
                                      groups);
  } else {
    mlp_ = std::make_unique<Mlp>(registry, cfg, layer, tp);
  }
  if (cfg.model().sandwich_norm()) {
    post_ffn_norm_ = std::make_unique<ScaledRmsNorm>(registry, so, p + ".post_ffn_norm", c,
                                                     eps_, sandwich);
  }
}

Status Block::MoeForward(const ExecContext& ctx, const Tensor& n, const Tensor& out) {
  if (!tp_.SplitsTokens()) {  // the rows are this rank's tokens: no staging copy
    return moe_->Forward(ctx, n, out);
  }
  const Tensor chunk = tp_.ToChunk(n);
  Tensor chunk_out = ctx.Empty(chunk.shape(), chunk.dtype());
  SM_RETURN_IF_ERROR(moe_->Forward(ctx, chunk, chunk_out));
  return tp_.ChunkToRows(ctx, chunk_out, out);
}

Status Block::MoeBackward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n,
                          double loss_grad_scale) {
  if (!tp_.SplitsTokens()) return moe_->Backward(ctx, d_out, d_n, loss_grad_scale);
  const Tensor d_chunk = tp_.ToChunk(d_out);
  Tensor d_n_chunk = ctx.Empty(d_chunk.shape(), d_chunk.dtype());
  SM_RETURN_IF_ERROR(moe_->Backward(ctx, d_chunk, d_n_chunk, loss_grad_scale));
  return tp_.ChunkToRows(ctx, d_n_chunk, d_n);
}

Status Block::PrepareStep(const ExecContext& ctx, DType dtype) {
  SM_RETURN_IF_ERROR_CTX(attention_->PrepareStep(ctx, dtype), "attention");
  if (mlp_) SM_RETURN_IF_ERROR_CTX(mlp_->PrepareStep(ctx, dtype), "mlp");
  if (moe_) SM_RETURN_IF_ERROR_CTX(moe_->PrepareStep(ctx, dtype), "moe");
  if (post_attn_norm_) SM_RETURN_IF_ERROR(post_attn_norm_->PrepareStep(ctx, dtype));
  if (post_ffn_norm_) SM_RETURN_IF_ERROR(post_ffn_norm_->PrepareStep(ctx, dtype));
  return absl::OkStatus();
}

Status Block::Forward(const ExecContext& ctx, const Tensor& x, int64_t batch, int64_t seq,
                      const Tensor& y) {
  const Shape shape = x.shape();  // [N, C]
  const DType dt = x.dtype();
  // into = post(run()): the sublayer writes straight into `into` (through
  // the post-norm's input when sandwiched) and the caller adds the residual
  // there, so the residual stream is never copied.
  auto sublayer = [&](ScaledRmsNorm* post, auto&& run, const Tensor& into) -> Status {
    if (post) {
      Tensor raw = ctx.Empty(shape, dt);
      SM_RETURN_IF_ERROR(run(raw));
      post->Forward(ctx, raw, into);
      return absl::OkStatus();
    }
    return run(into);
  };
  n_attn_ = ctx.Empty(shape, dt);
  rstd_attn_ = ctx.Empty({shape[0]}, StatDType(dt));
  ops::RmsNormalize(ctx, x, eps_, n_attn_, rstd_attn_);
  const Tensor h = ctx.Empty(shape, dt);
  SM_RETURN_IF_ERROR_CTX(
      sublayer(
          post_attn_norm_.get(),
          [&](const Tensor& out) { return attention_->Forward(ctx, n_attn_, batch, seq, out); }, h),
      "attention");
  // h += x and the FFN's norm of it in one pass.
  n_ffn_ = ctx.Empty(shape, dt);
  rstd_ffn_ = ctx.Empty({shape[0]}, StatDType(dt));
  ops::AddRmsNormalize(ctx, x, h, eps_, n_ffn_, rstd_ffn_);
  SM_RETURN_IF_ERROR_CTX(sublayer(
                             post_ffn_norm_.get(),
                             [&](const Tensor& out) {
                               return mlp_ ? mlp_->Forward(ctx, n_ffn_, out)
                                           : MoeForward(ctx, n_ffn_, out);
                             },
                             y),
                         mlp_ ? "mlp" : "moe");
  ops::Axpy(ctx, 1.0, h, y);
  return absl::OkStatus();
}

Status Block::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x,
                       double loss_grad_scale) {
  const Shape shape = d_y.shape();
  const DType dt = d_y.dtype();
  // d_in = d_res + RmsNormalizeBackward(sublayer backward of post-norm
  // backward): the norm's backward and the residual's gradient in one op
  // (d_in may be d_res's buffer).
  auto sublayer_back = [&](ScaledRmsNorm* post, auto&& run, const Tensor& d_res,
                           const Tensor& n, const Tensor& rstd, const Tensor& d_in) -> Status {
    Tensor d_out = d_res;
    if (post) {
      d_out = ctx.Empty(shape, dt);
      post->Backward(ctx, d_res, d_out);
    }
    Tensor d_n = ctx.Empty(shape, dt);
    SM_RETURN_IF_ERROR(run(d_out, d_n));
    ops::RmsNormalizeBackwardAdd(ctx, n, rstd, d_n, d_res, d_in);
    return absl::OkStatus();
  };
  Tensor d_h = ctx.Empty(shape, dt);
  SM_RETURN_IF_ERROR_CTX(sublayer_back(
                             post_ffn_norm_.get(),
                             [&](const Tensor& d_out, const Tensor& d_n) {
                               return mlp_ ? mlp_->Backward(ctx, d_out, d_n)
                                           : MoeBackward(ctx, d_out, d_n, loss_grad_scale);
                             },
                             d_y, n_ffn_, rstd_ffn_, d_h),
                         mlp_ ? "mlp" : "moe");
  return WithContext(sublayer_back(
                         post_attn_norm_.get(),
                         [&](const Tensor& d_out, const Tensor& d_n) {
                           return attention_->Backward(ctx, d_out, d_n);
                         },
                         d_h, n_attn_, rstd_attn_, d_x),
                     "attention");
}

Status Block::FinishBackward(const ExecContext& ctx) {
  SM_RETURN_IF_ERROR_CTX(attention_->FinishBackward(ctx), "attention");
  if (mlp_) SM_RETURN_IF_ERROR_CTX(mlp_->FinishBackward(ctx), "mlp");
  if (moe_) SM_RETURN_IF_ERROR_CTX(moe_->FinishBackward(ctx), "moe");
  if (post_attn_norm_) SM_RETURN_IF_ERROR(post_attn_norm_->FinishBackward(ctx));
  if (post_ffn_norm_) SM_RETURN_IF_ERROR(post_ffn_norm_->FinishBackward(ctx));
  return absl::OkStatus();
}

void Block::VisitForwardCache(ForwardCacheStash& stash) {
  for (Tensor* t : {&n_attn_, &rstd_attn_, &n_ffn_, &rstd_ffn_}) stash.Visit(*t);
  attention_->VisitForwardCache(stash);
  if (mlp_) mlp_->VisitForwardCache(stash);
  if (moe_) moe_->VisitForwardCache(stash);
  for (ScaledRmsNorm* n : {post_attn_norm_.get(), post_ffn_norm_.get()}) {
    if (n) n->VisitForwardCache(stash);
  }
}

}  // namespace scalemoe
