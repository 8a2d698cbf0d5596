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
  fuse_qkv_ = m.fuse_qkv();
  fp32_head_norm_input_ = cfg.train().fp32_head_norm_input();
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
  if (fuse_qkv_) ProvideQkvStorage(ctx);
  SM_RETURN_IF_ERROR(projections_->PrepareStep(ctx, dtype));
  JoinQkv();
  for (ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n) SM_RETURN_IF_ERROR(n->PrepareStep(ctx, dtype));
  }
  return absl::OkStatus();
}

void Attention::ProvideQkvStorage(const ExecContext& ctx) {
  if (qkv_storage_.defined()) return;
  int64_t rows = 0;
  for (const ScaledLinear* p : {q_proj_.get(), k_proj_.get(), v_proj_.get()}) {
    // Maps that GEMM on W itself find it side by side already (the flat buffers).
    if (!p->forms_gemm_weight()) return;
    rows += p->out_features();
  }
  const DType gemm =
      attention_options_.bf16_operands ? DType::kBF16 : q_proj_->weight()->value.dtype();
  qkv_storage_ = ctx.Empty({rows, q_proj_->in_features()}, gemm);
  int64_t first = 0;
  for (ScaledLinear* p : {q_proj_.get(), k_proj_.get(), v_proj_.get()}) {
    p->set_gemm_weight_storage(qkv_storage_.Narrow(0, first, p->out_features()));
    first += p->out_features();
  }
}

void Attention::JoinQkv() {
  qkv_weight_ = qkv_grad_ = Tensor();
  if (!fuse_qkv_) return;
  const ScaledLinear &q = *q_proj_, &k = *k_proj_, &v = *v_proj_;
  for (const ScaledLinear* p : {&q, &k, &v}) {
    if (!p->external_gemm_ok() || p->gemm_dtype() != q.gemm_dtype()) return;
  }
  auto join = [](const Tensor& a, const Tensor& b, const Tensor& c) {
    const Tensor ab = a.JoinRows(b);
    return ab.defined() ? ab.JoinRows(c) : ab;
  };
  const Tensor w = join(q.effective_weight(), k.effective_weight(), v.effective_weight());
  const Tensor g = join(q.gemm_weight_grad(), k.gemm_weight_grad(), v.gemm_weight_grad());
  if (!w.defined() || !g.defined()) return;  // not side by side: three GEMMs
  qkv_weight_ = w;
  qkv_grad_ = g;
}

std::optional<Attention::QkvPlan> Attention::FusedQkvPlan(DType activations) const {
  if (!qkv_weight_.defined()) return std::nullopt;
  // q, k, v and their gradients in the GEMMs' dtype (no per-token u: the
  // branches' gradients enter the GEMMs as they are).
  const DType inner = ActivationDType(activations), gemm = q_proj_->gemm_dtype();
  if (inner != gemm) return std::nullopt;
  const DType norm_in = HeadNormInputDType(inner);
  for (const ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n && (!n->TakesHeadRows(norm_in, inner) || !n->TakesHeadRows(norm_in, gemm))) {
      return std::nullopt;
    }
  }
  auto lin = [&](const ScaledRmsNorm* norm) { return norm ? HeadNormInputDType(inner) : inner; };
  if (lin(q_norm_.get()) != lin(k_norm_.get())) return std::nullopt;
  return QkvPlan{lin(q_norm_.get()), lin(v_norm_.get())};
}

DType Attention::HeadNormInputDType(DType inner) const {
  return fp32_head_norm_input_ ? dtype_ : inner;
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
  qkv_input_ = Tensor();
  if (const std::optional<QkvPlan> plan = FusedQkvPlan(n.dtype())) {
    ForwardFused(ctx, n_in, *plan, inner);
    return AttendAndProject(ctx, out, tokens, dt, inner);
  }
  // Projection, then (optional) per-head norm, then RoPE (in place).
  auto project = [&](ScaledLinear& proj, ScaledRmsNorm* norm, int64_t heads, bool rope) {
    Tensor lin = ctx.Empty({tokens, heads * head_dim_}, norm ? HeadNormInputDType(inner) : inner);
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
    if (rope) RotateInPlace(ctx, y, seq, true);
    return y;
  };
  q_ = project(*q_proj_, q_norm_.get(), heads_, true);
  k_ = project(*k_proj_, k_norm_.get(), kv_heads_, true);
  v_ = project(*v_proj_, v_norm_.get(), kv_heads_, false);
  return AttendAndProject(ctx, out, tokens, dt, inner);
}

void Attention::ForwardFused(const ExecContext& ctx, const Tensor& n_in, const QkvPlan& plan,
                             DType inner) {
  const int64_t tokens = batch_ * seq_, qk_heads = heads_ + kv_heads_;
  const ops::GemmOptions xwt{.trans_b = ops::Trans::kYes};
  // One GEMM for the three, or for q and k with v's own after it (DNP
  // under fp32_head_norm_input: q and k in the master's dtype for their
  // norms, v in the attention's).
  const int64_t heads = plan.v_apart() ? qk_heads : qk_heads + kv_heads_;
  Tensor qkv = ctx.Empty({tokens, heads * head_dim_}, plan.qk);
  ops::Gemm(ctx, n_in, qkv_weight_.Narrow(0, 0, heads * head_dim_), qkv, xwt);
  qkv_input_ = n_in;
  const Tensor by_head = qkv.View({batch_, seq_, heads, head_dim_});
  // Each branch's slice x: through its norm (RoPE in the same pass) into a
  // tensor of its own; else rotated in place (q, k) or as it is (v), the
  // attention reading the slice where it lies (ops::CausalAttention takes
  // head rows). The three GEMMs' path runs the same ops on the same values.
  auto branch = [&](ScaledRmsNorm* norm, const Tensor& x, bool rope) {
    if (!norm) {
      if (rope) RotateInPlace(ctx, x, seq_, true);
      return x;
    }
    Tensor y = ctx.Empty(x.shape(), inner);
    ScaledRmsNorm::Rope args;
    if (rope) args = {rope_theta_, RopeTable(ctx, dtype_, seq_), batch_, seq_};
    norm->Forward(ctx, x, y, rope ? &args : nullptr);
    return y;
  };
  q_ = branch(q_norm_.get(), by_head.Narrow(2, 0, heads_), true);
  k_ = branch(k_norm_.get(), by_head.Narrow(2, heads_, kv_heads_), true);
  if (!plan.v_apart()) {
    v_ = branch(v_norm_.get(), by_head.Narrow(2, qk_heads, kv_heads_), false);
    return;
  }
  Tensor v = ctx.Empty({batch_, seq_, kv_heads_, head_dim_}, plan.v);
  ops::Gemm(ctx, n_in, qkv_weight_.Narrow(0, qk_heads * head_dim_, kv_heads_ * head_dim_),
            v.View({tokens, kv_heads_ * head_dim_}), xwt);
  v_ = branch(v_norm_.get(), v, false);
}

Status Attention::AttendAndProject(const ExecContext& ctx, const Tensor& out, int64_t tokens,
                                   DType dt, DType inner) {
  lse_ = ctx.Empty({batch_, heads_, seq_}, inner == DType::kF64 ? DType::kF64 : DType::kF32);
  attn_ = ctx.Empty({batch_, seq_, heads_, head_dim_}, inner);
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

void Attention::RotateInPlace(const ExecContext& ctx, const Tensor& x, int64_t seq, bool forward) {
  const Tensor& table = RopeTable(ctx, StatDType(x.dtype()), seq);
  if (forward) {
    ops::Rope(ctx, x, rope_theta_, x, table);
  } else {
    ops::RopeBackward(ctx, x, rope_theta_, x, table);
  }
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
  // One GEMM's d_y for the three (model.fuse_qkv): a branch without a norm
  // gets its gradient straight into its slice of it.
  const int64_t all_heads = heads_ + 2 * kv_heads_;
  const Tensor d_qkv = qkv_input_.defined()
                           ? ctx.Empty({batch_, seq_, all_heads, head_dim_}, q_proj_->gemm_dtype())
                           : Tensor();
  auto grad_of = [&](const Tensor& x, ScaledRmsNorm* norm, int64_t first, int64_t heads) {
    if (d_qkv.defined() && !norm) return d_qkv.Narrow(2, first, heads);
    return ctx.Empty(x.shape(), inner);
  };
  const Tensor d_q = grad_of(q_, q_norm_.get(), 0, heads_);
  const Tensor d_k = grad_of(k_, k_norm_.get(), heads_, kv_heads_);
  const Tensor d_v = grad_of(v_, v_norm_.get(), heads_ + kv_heads_, kv_heads_);
  ops::CausalAttentionBackward(ctx, q_, k_, v_, attn_, lse_, d_attn.View(q_.shape()), d_q, d_k, d_v,
                               attention_options_);
  auto back = [&](ScaledLinear& proj, ScaledRmsNorm* norm, Tensor d_y, bool rope, GradMode mode) {
    if (rope && !norm) RotateInPlace(ctx, d_y, seq_, false);  // else the norm's
    Tensor d_lin = d_y.View({tokens, d_y.numel() / tokens});
    if (norm) {  // computed in the activations' dtype, as its forward; d_lin
      // in the projection's GEMM dtype (ScaledLinear::output_dtype) unless a
      // per-token u reads it in the master's
      d_lin = ctx.Empty(d_lin.shape(), proj.output_dtype(dt));
      norm->Backward(ctx, d_y, d_lin);
    }
    proj.Backward(ctx, d_lin, d_n, mode);
  };
  if (d_qkv.defined()) {
    BackwardFused(ctx, d_q, d_k, d_v, d_qkv, d_n);
  } else {
    back(*q_proj_, q_norm_.get(), d_q, true, GradMode::kOverwrite);
    back(*k_proj_, k_norm_.get(), d_k, true, GradMode::kAccumulate);
    back(*v_proj_, v_norm_.get(), d_v, false, GradMode::kAccumulate);
  }
  return tp_.ReduceToRows(ctx, d_n, d_n_rows);
}

void Attention::BackwardFused(const ExecContext& ctx, const Tensor& d_q, const Tensor& d_k,
                              const Tensor& d_v, const Tensor& d_qkv, const Tensor& d_n) {
  // Each branch's gradient into its slice of d_qkv: through its norm, else
  // (already there) the inverse rotation in place for q and k.
  auto branch = [&](ScaledRmsNorm* norm, const Tensor& d_y, int64_t first, int64_t heads,
                    bool rope) {
    const Tensor d_x = d_qkv.Narrow(2, first, heads);
    if (norm) {
      norm->Backward(ctx, d_y, d_x);
    } else if (rope) {
      RotateInPlace(ctx, d_x, seq_, false);
    }
  };
  branch(q_norm_.get(), d_q, 0, heads_, true);
  branch(k_norm_.get(), d_k, heads_, kv_heads_, true);
  branch(v_norm_.get(), d_v, heads_ + kv_heads_, kv_heads_, false);
  // The three maps' weight gradients and d_n, each one GEMM.
  const Tensor d_y = d_qkv.View({batch_ * seq_, d_qkv.numel() / (batch_ * seq_)});
  ops::Gemm(ctx, d_y, qkv_input_, qkv_grad_, {.trans_a = ops::Trans::kYes, .beta = 1.0});
  ops::Gemm(ctx, d_y, qkv_weight_, d_n);
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
  for (Tensor* t : {&q_, &k_, &v_, &attn_, &lse_, &qkv_input_}) stash.Visit(*t);
  for (ScaledLinear* l : {q_proj_.get(), k_proj_.get(), v_proj_.get(), o_proj_.get()}) {
    l->VisitForwardCache(stash);
  }
  for (ScaledRmsNorm* n : {q_norm_.get(), k_norm_.get(), v_norm_.get()}) {
    if (n) n->VisitForwardCache(stash);
  }
}

}  // namespace scalemoe
