#include "model/attention.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "model/weight_spec.h"
#include "norm/scale_options.h"

namespace scalemoe {
namespace {

constexpr int kQ = 0, kK = 1, kV = 2;  // branch indices in the BranchScales

}  // namespace

Attention::Attention(ParamRegistry& registry, const config::RunConfig& cfg, int layer,
                     const TpRegion& tp)
    : tp_(tp) {
  const config::ModelConfig& m = cfg.model();
  const ScaleOptions so(cfg.scale_vectors());
  const int64_t c = m.hidden_size();
  const int64_t heads = m.num_heads();
  const int64_t kv_heads = m.num_kv_heads() > 0 ? m.num_kv_heads() : heads;
  // Invariant: ValidateModelConfig (model/model_config.h) reports this.
  SM_CHECK_MSG(heads % tp.size() == 0 && kv_heads % tp.size() == 0, "layer ", layer, ": ",
               heads, " heads and ", kv_heads, " KV heads do not split over parallel.tp=",
               tp.size());
  heads_ = heads / tp.size();
  kv_heads_ = kv_heads / tp.size();
  head_dim_ = c / heads;
  rope_theta_ = m.rope_theta();
  max_seq_ = m.seq_length();
  attention_options_.bf16_operands = Bf16Operands(cfg);
  const std::string p = absl::StrCat("layers.", layer, ".attn");
  // The γ's and head-norm scales see only this rank's heads.
  ParamLayout layout = LayerLayout(layer);
  layout.tp_partial_grad = true;

  std::vector<BranchSpec> branches = {{p + ".gamma_q", layout},
                                      {p + ".gamma_k", layout},
                                      {p + ".gamma_v", layout}};
  scales_ = std::make_unique<BranchScales>(
      registry, so, absl::StrCat("layers.", layer, ".attn_norm.scale"), layout, c,
      std::move(branches), so.OwnVectors(BranchGroup::kAttention));

  // Global shapes; q, k, v column-parallel by heads, o row-parallel.
  const double init_std = m.init_std();
  constexpr TpSplit kCol = TpSplit::kColumn, kRow = TpSplit::kRow;
  Param* w_q = CreateTpLinear(registry, p, "w_q", {heads * head_dim_, c}, init_std, layer, kCol);
  Param* w_k = CreateTpLinear(registry, p, "w_k", {kv_heads * head_dim_, c}, init_std, layer, kCol);
  Param* w_v = CreateTpLinear(registry, p, "w_v", {kv_heads * head_dim_, c}, init_std, layer, kCol);
  Param* w_o = CreateTpLinear(registry, p, "w_o", {c, heads * head_dim_}, OutputProjectionStd(m),
                              layer, kRow);
  auto u_name = [&](Projection proj, const char* suffix) {
    return so.OutputVector(proj) ? absl::StrCat(p, ".u_", suffix) : std::string();
  };
  auto linear = [&](Param* w, int branch, Projection proj, const char* suffix) {
    const ScaledLinearOptions options{.path = so.path(),
                                      .u_name = u_name(proj, suffix),
                                      .reparam = so.reparam(),
                                      .split_group = tp.comm(),
                                      .bf16_operands = Bf16Operands(cfg)};
    return std::make_unique<ScaledLinear>(registry, w, branch < 0 ? nullptr : scales_.get(),
                                          std::max(branch, 0), options);
  };
  q_proj_ = linear(w_q, kQ, config::ScaleVectorConfig::Q, "q");
  k_proj_ = linear(w_k, kK, config::ScaleVectorConfig::K, "k");
  v_proj_ = linear(w_v, kV, config::ScaleVectorConfig::V, "v");
  o_proj_ = linear(w_o, -1, config::ScaleVectorConfig::O, "o");
  projections_ = std::make_unique<ScaledLinearGroup>(
      std::vector<ScaledLinear*>{q_proj_.get(), k_proj_.get(), v_proj_.get(), o_proj_.get()});

  auto head_norm = [&](Projection proj, const char* dnp_name, const char* qk_name,
                       bool qk_norm) -> std::unique_ptr<ScaledRmsNorm> {
    std::string name;
    if (so.NormalizedOutput(proj)) {
      name = absl::StrCat(p, ".", dnp_name);
    } else if (qk_norm) {
      name = absl::StrCat(p, ".", qk_name);
    } else {
      return nullptr;
    }
    return std::make_unique<ScaledRmsNorm>(registry, so, name, head_dim_,
                                           m.norm_eps(), layout);
  };
  q_norm_ = head_norm(config::ScaleVectorConfig::Q, "dnp_q", "q_norm", m.qk_norm());
  k_norm_ = head_norm(config::ScaleVectorConfig::K, "dnp_k", "k_norm", m.qk_norm());
  v_norm_ = head_norm(config::ScaleVectorConfig::V, "dnp_v", "", false);
}

Status Attention::PrepareStep(const ExecContext& ctx, DType dtype) {
  dtype_ = dtype;
  SM_RETURN_IF_ERROR(scales_->Forward(ctx, dtype));
  SM_RETURN_IF_ERROR(projections_->PrepareStep(ctx, dtype));
  for (ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n) SM_RETURN_IF_ERROR(n->PrepareStep(ctx, dtype));
  }
  return absl::OkStatus();
}

DType Attention::ActivationDType(DType activations) const {
  const DType dt = q_proj_->output_dtype(activations);
  for (const ScaledLinear* p : {k_proj_.get(), v_proj_.get()}) {
    if (p->output_dtype(activations) != dt) return activations;
  }
  return dt;
}

Status Attention::Forward(const ExecContext& ctx, const Tensor& n_rows, int64_t batch,
                          int64_t seq, const Tensor& out) {
  batch_ = batch;
  seq_ = seq;
  const int64_t tokens = batch * seq;
  // Every token: the projections are column-parallel.
  SM_ASSIGN_OR_RETURN(const Tensor n, tp_.ToFull(ctx, n_rows));
  // dt: the master's dtype, of the per-head norms and the partial sums over
  // TP ranks; n may be bf16 (the residual stream's dtype).
  const DType dt = dtype_, inner = ActivationDType(n.dtype());
  const Tensor n_in = SharedGemmInput(ctx, n, {q_proj_.get(), k_proj_.get(), v_proj_.get()});
  // Projection, then (optional) per-head norm, then RoPE (in place).
  auto project = [&](ScaledLinear& proj, ScaledRmsNorm* norm, int64_t heads, bool rope) {
    // A per-head norm reads the projection in the activations' dtype (its
    // γ's), and only its output is rounded: a bf16 input would turn the
    // exact zero gradient of the β that the norm removes (DNP under OR)
    // into bf16 rounding noise.
    Tensor lin = ctx.Empty({tokens, heads * head_dim_}, norm ? dt : inner);
    proj.Forward(ctx, n_in, lin);
    Tensor y = lin;
    if (norm) {  // rounded to the attention's operand dtype on the norm's store
      y = ctx.Empty(lin.shape(), inner);
      // The norm applies RoPE too: in its own pass where it can.
      ScaledRmsNorm::Rope args;
      if (rope) args = {rope_theta_, RopeTable(ctx, dt, seq), batch, seq};
      norm->Forward(ctx, lin, y, rope ? &args : nullptr);
      rope = false;
    }
    y = y.View({batch, seq, heads, head_dim_});
    if (rope) ops::Rope(ctx, y, rope_theta_, y);
    return y;
  };
  q_ = project(*q_proj_, q_norm_.get(), heads_, true);
  k_ = project(*k_proj_, k_norm_.get(), kv_heads_, true);
  v_ = project(*v_proj_, v_norm_.get(), kv_heads_, false);
  lse_ = ctx.Empty({batch, heads_, seq}, inner == DType::kF64 ? DType::kF64 : DType::kF32);
  attn_ = ctx.Empty({batch, seq, heads_, head_dim_}, inner);
  ops::CausalAttention(ctx, q_, k_, v_, attn_, lse_, attention_options_);
  // Row-parallel: this rank's heads give a partial sum of the output.
  const Tensor partial = tp_.PartialFor(ctx, out, tokens, dt);
  o_proj_->Forward(ctx, attn_.View({tokens, heads_ * head_dim_}), partial);
  return tp_.ReduceToRows(ctx, partial, out);
}

const Tensor& Attention::RopeTable(const ExecContext& ctx, DType dtype, int64_t seq) {
  // Kept across steps (a CUDA graph captured after the first micro-batch
  // reads it), so made once for the longest sequence the model takes.
  if (!rope_table_.defined() || rope_table_.dtype() != dtype || rope_table_.dim(1) < seq) {
    rope_table_ = ctx.Empty({2, std::max(seq, max_seq_), head_dim_ / 2}, dtype);
    ops::RopeTable(ctx, rope_theta_, rope_table_);
  }
  return rope_table_;
}

Status Attention::Backward(const ExecContext& ctx, const Tensor& d_out_rows,
                           const Tensor& d_n_rows) {
  const int64_t tokens = batch_ * seq_;
  SM_ASSIGN_OR_RETURN(const Tensor d_out, tp_.ToFull(ctx, d_out_rows));
  const DType dt = dtype_, inner = attn_.dtype();
  // The column-parallel projections give this rank's share of d_n.
  const Tensor d_n = tp_.PartialFor(ctx, d_n_rows, tokens, dt);
  Tensor d_attn = ctx.Empty({tokens, heads_ * head_dim_}, inner);
  o_proj_->Backward(ctx, d_out, d_attn, GradMode::kOverwrite);
  Tensor d_q = ctx.Empty(q_.shape(), inner);
  Tensor d_k = ctx.Empty(k_.shape(), inner);
  Tensor d_v = ctx.Empty(v_.shape(), inner);
  ops::CausalAttentionBackward(ctx, q_, k_, v_, attn_, lse_, d_attn.View(q_.shape()), d_q, d_k, d_v,
                               attention_options_);
  auto back = [&](ScaledLinear& proj, ScaledRmsNorm* norm, Tensor d_y, bool rope, GradMode mode) {
    if (rope && !norm) ops::RopeBackward(ctx, d_y, rope_theta_, d_y);  // else the norm's
    Tensor d_lin = d_y.View({tokens, d_y.numel() / tokens});
    if (norm) {  // computed in the activations' dtype, as its forward; d_lin
      // in the projection's GEMM dtype (ScaledLinear::output_dtype) unless a
      // per-token u reads it in the master's
      d_lin = ctx.Empty(d_lin.shape(), proj.output_dtype(dt));
      norm->Backward(ctx, d_y, d_lin);
    }
    proj.Backward(ctx, d_lin, d_n, mode);
  };
  back(*q_proj_, q_norm_.get(), d_q, true, GradMode::kOverwrite);
  back(*k_proj_, k_norm_.get(), d_k, true, GradMode::kAccumulate);
  back(*v_proj_, v_norm_.get(), d_v, false, GradMode::kAccumulate);
  return tp_.ReduceToRows(ctx, d_n, d_n_rows);
}

Status Attention::FinishBackward(const ExecContext& ctx) {
  SM_RETURN_IF_ERROR(projections_->FinishBackward(ctx));
  for (ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n) SM_RETURN_IF_ERROR(n->FinishBackward(ctx));
  }
  return scales_->Backward(ctx);
}

void Attention::VisitForwardCache(ForwardCacheStash& stash) {
  for (int64_t* size : {&batch_, &seq_}) stash.Visit(*size);
  for (Tensor* t : {&q_, &k_, &v_, &attn_, &lse_}) stash.Visit(*t);
  for (ScaledLinear* l : {q_proj_.get(), k_proj_.get(), v_proj_.get(), o_proj_.get()}) {
    l->VisitForwardCache(stash);
  }
  for (ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n) n->VisitForwardCache(stash);
  }
}

}  // namespace scalemoe
