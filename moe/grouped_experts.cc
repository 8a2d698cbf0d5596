#include "moe/grouped_experts.h"

#include <algorithm>

#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {

using Sv = config::ScaleVectorConfig;

GroupedExperts::GroupedExperts(ParamRegistry& registry, const ScaleOptions& so,
                               ExpertGroupOptions options)
    : options_(std::move(options)) {
  const int64_t c = options_.hidden, f = options_.ffn;
  const Sv::Projection kinds[kNumProj] = {Sv::GATE, Sv::UP, Sv::DOWN};
  const char* names[kNumProj] = {"gate", "up", "down"};
  const bool routed = options_.routed;
  const int etp = routed ? registry.coords().etp_size : 1;
  // Invariant: ValidateMoeConfig (moe/moe_config.h) reports this.
  SM_CHECK_MSG(f % etp == 0, options_.prefix, ": moe.expert_ffn_hidden_size=", f,
               " does not split over parallel.etp=", etp,
               "; pick an expert FFN size divisible by etp");
  SM_CHECK_MSG(options_.ffn_split_group == nullptr || options_.ffn_split_group->size() == etp,
               options_.prefix, ": the ETP group has ", options_.ffn_split_group->size(),
               " ranks but the parameter registry was built for etp_size=", etp);
  local_ffn_ = f / etp;
  experts_.resize(options_.num_experts);
  for (int e = 0; e < options_.num_experts; ++e) {
    const int global = options_.first_expert + e;
    const std::string base = options_.prefix + "." + std::to_string(global);
    ParamLayout layout;
    layout.layer = options_.layer;
    layout.expert = routed ? global : -1;
    if (routed) {
      layout.tp_group = TpGroup::kExpert;
    } else {
      layout.tp_partial_grad = true;  // replicated, run on this TP rank's rows only
    }
    // The three weights first, then their maps (which may register u's):
    // each expert's w_gate and w_up lie side by side in the flat buffers,
    // so one GEMM over both can write their gradients (gate_up_packed_).
    Param* weights[kNumProj];
    for (int p = 0; p < kNumProj; ++p) {
      ParamSpec spec;
      spec.name = base + ".w_" + names[p];
      spec.shape = p == kDown ? Shape{c, f} : Shape{f, c};
      spec.role = ParamRole::kExpertLinear;
      spec.init = InitSpec::Normal(p == kDown ? options_.down_init_std : options_.init_std);
      spec.layout = layout;
      if (routed) spec.layout.tp_split_dim = p == kDown ? 1 : 0;  // F
      weights[p] = registry.Create(spec);
    }
    for (int p = 0; p < kNumProj; ++p) {
      using Source = ExpertGroupOptions::GammaSource;
      auto gamma_of = [&](const std::vector<Source>& sources) {
        return sources.empty() ? Source{} : sources.at(e);
      };
      const Source gamma = p == kGate ? gamma_of(options_.gate_gamma)
                           : p == kUp ? gamma_of(options_.up_gamma)
                                      : Source{};
      const ScaledLinearOptions linear{
          .path = so.path(),
          .u_name = so.OutputVector(kinds[p]) ? base + ".u_" + names[p] : std::string(),
          .reparam = so.reparam(),
          .split_group = routed ? options_.ffn_split_group : nullptr,
          .bf16_operands = options_.bf16_operands};
      experts_[e].proj[p] =
          std::make_unique<ScaledLinear>(registry, weights[p], gamma.scales, gamma.branch, linear);
    }
  }
  for (int p = 0; p < kNumProj; ++p) {
    std::vector<ScaledLinear*> maps;
    for (Expert& ex : experts_) maps.push_back(ex.proj[p].get());
    folds_.emplace_back(std::move(maps));
  }
}

GroupedExperts::~GroupedExperts() = default;

Status GroupedExperts::PrepareStep(const ExecContext& ctx, DType dtype) {
  gate_up_packed_ = false;  // until UpdateGroups finds them side by side
  if (Grouped() && options_.fuse_gate_up) ProvideGateUpStorage(ctx);
  for (ScaledLinearGroup& fold : folds_) SM_RETURN_IF_ERROR(fold.PrepareStep(ctx, dtype));
  // The step's weights are formed: the grouped GEMMs' tables follow them
  // here, once per step, not per micro-batch.
  if (Grouped()) UpdateGroups(ctx);
  return absl::OkStatus();
}

namespace {
// Rows [rows, M) of t set to zero (rows past every expert's).
void ZeroTail(const ExecContext& ctx, const Tensor& t, int64_t rows) {
  if (rows < t.dim(0)) ops::Zero(ctx, t.Narrow(0, rows, t.dim(0) - rows));
}
}  // namespace

bool GroupedExperts::Grouped() const {
  for (const Expert& ex : experts_) {
    for (const auto& proj : ex.proj) {
      if (!proj->external_gemm_ok()) return false;
    }
  }
  return !experts_.empty();
}

void GroupedExperts::ProvideGateUpStorage(const ExecContext& ctx) {
  if (gate_up_storage_.defined()) return;
  for (const Expert& ex : experts_) {
    // Maps that GEMM on W itself find it side by side already (the flat buffers).
    if (!ex.proj[kGate]->forms_gemm_weight() || !ex.proj[kUp]->forms_gemm_weight()) return;
  }
  const ScaledLinear& gate = *experts_[0].proj[kGate];
  const int64_t f = gate.out_features(), c = gate.in_features();
  const DType gemm = options_.bf16_operands ? DType::kBF16 : gate.weight()->value.dtype();
  gate_up_storage_ = ctx.Empty({options_.num_experts, 2 * f, c}, gemm);
  for (int e = 0; e < options_.num_experts; ++e) {
    const Tensor both = gate_up_storage_.Narrow(0, e, 1).View({2 * f, c});
    experts_[e].proj[kGate]->set_gemm_weight_storage(both.Narrow(0, 0, f));
    experts_[e].proj[kUp]->set_gemm_weight_storage(both.Narrow(0, f, f));
  }
}

void GroupedExperts::UpdateGroups(const ExecContext& ctx) {
  for (int p = 0; p < kNumProj; ++p) {
    std::vector<Tensor> w, g;
    for (const Expert& ex : experts_) {
      w.push_back(ex.proj[p]->effective_weight());
      g.push_back(ex.proj[p]->gemm_weight_grad());
    }
    ops::UpdateMatrixGroup(ctx, std::move(w), weights_[p]);
    ops::UpdateMatrixGroup(ctx, std::move(g), grads_[p]);
  }
  if (!options_.fuse_gate_up) return;
  std::vector<Tensor> w, g;
  for (const Expert& ex : experts_) {
    const ScaledLinear &gate = *ex.proj[kGate], &up = *ex.proj[kUp];
    w.push_back(gate.effective_weight().JoinRows(up.effective_weight()));
    g.push_back(gate.gemm_weight_grad().JoinRows(up.gemm_weight_grad()));
    if (!w.back().defined() || !g.back().defined()) return;  // not side by side
  }
  gate_up_packed_ = true;
  ops::UpdateMatrixGroup(ctx, std::move(w), gate_up_weights_);
  ops::UpdateMatrixGroup(ctx, std::move(g), gate_up_grads_);
}

void GroupedExperts::Forward(const ExecContext& ctx, const Tensor& x,
                             const std::vector<int64_t>& counts, const Tensor& y) {
  SM_CHECK(static_cast<int>(counts.size()) == options_.num_experts);
  int64_t rows = 0;
  for (int64_t t : counts) rows += t;
  SM_CHECK_MSG(rows <= x.dim(0), options_.prefix, ": ", rows, " expert rows in an input of ",
               x.dim(0));
  StartForward(ctx, x, x.dim(0), rows);
  counts_ = counts;
  if (Grouped()) {
    // The experts' row offsets, read by the kernels on the device; uploaded
    // again only when the counts change (the shared experts' never do: an
    // upload waits for the stream, and a CUDA graph cannot replay one).
    if (!uploaded_offsets_.defined() || counts_ != uploaded_counts_) {
      std::vector<int64_t> off{0};
      for (int64_t t : counts_) off.push_back(off.back() + t);
      uploaded_offsets_ = TableToDevice(ctx, {options_.num_experts + 1}, off);
      uploaded_counts_ = counts_;
    }
    offsets_ = uploaded_offsets_;
    ForwardGrouped(ctx, x, y);
    return;
  }
  ops::Zero(ctx, y);
  int64_t start = 0;
  for (int e = 0; e < options_.num_experts; ++e) {
    const int64_t t = counts[e];
    if (t == 0) continue;  // an expert without tokens does no work (and gets zero grads)
    Expert& ex = experts_[e];
    const Tensor xe = x.Narrow(0, start, t);
    const Tensor ge = gate_.Narrow(0, start, t), ue = up_.Narrow(0, start, t);
    const Tensor he = h_.Narrow(0, start, t);
    ex.proj[kGate]->Forward(ctx, xe, ge);
    ex.proj[kUp]->Forward(ctx, xe, ue);
    ops::SwiGlu(ctx, ge, ue, he);
    ex.proj[kDown]->Forward(ctx, he, y.Narrow(0, start, t));
    start += t;
  }
}

void GroupedExperts::ForwardAllRows(const ExecContext& ctx, const Tensor& x, const Tensor& offsets,
                                    const Tensor& y) {
  SM_CHECK_MSG(Grouped(), options_.prefix, ": ForwardAllRows needs the grouped path");
  SM_CHECK_MSG(offsets.numel() == options_.num_experts + 1 && offsets.dtype() == DType::kI64,
               options_.prefix, ": offsets ", offsets.DebugString(), " for ", options_.num_experts,
               " experts");
  StartForward(ctx, x, x.dim(0), x.dim(0));
  counts_.clear();
  offsets_ = offsets;
  ForwardGrouped(ctx, x, y);
}

void GroupedExperts::ForwardAllRowsGathered(const ExecContext& ctx, const Tensor& n,
                                            const Tensor& rows, int divisor, const Tensor& offsets,
                                            const Tensor& y) {
  SM_CHECK_MSG(Grouped(), options_.prefix, ": ForwardAllRowsGathered needs the grouped path");
  SM_CHECK_MSG(offsets.numel() == options_.num_experts + 1 && offsets.dtype() == DType::kI64,
               options_.prefix, ": offsets ", offsets.DebugString(), " for ", options_.num_experts,
               " experts");
  SM_CHECK_MSG(n.ndim() == 2 && y.ndim() == 2 && y.dim(1) == n.dim(1) &&
                   rows.dtype() == DType::kI32 && rows.numel() == y.dim(0) && divisor >= 1,
               options_.prefix, ": n ", n.DebugString(), " gathered by rows ", rows.DebugString(),
               " / ", divisor, " into y ", y.DebugString());
  const int64_t m = y.dim(0);
  StartForward(ctx, n, m, m);
  counts_.clear();
  offsets_ = offsets;
  gather_rows_ = rows;
  gather_divisor_ = divisor;
  ForwardGrouped(ctx, n, y);
}

void GroupedExperts::StartForward(const ExecContext& ctx, const Tensor& x, int64_t m,
                                  int64_t rows) {
  const int64_t f = local_ffn_;
  x_ = x;
  m_ = m;
  rows_ = rows;
  gather_rows_ = Tensor();
  // The grouped path's F-wide intermediates are in the GEMMs' dtype (bf16
  // under bf16 operands: written by the GEMMs, read by them without a copy).
  const bool grouped = Grouped();
  const DType inner = grouped ? experts_[0].proj[kGate]->gemm_dtype() : x.dtype();
  if (grouped && gate_up_packed_) {
    gate_up_ = ctx.Empty({m, 2 * f}, inner);
  } else {
    gate_ = ctx.Empty({m, f}, inner);
    up_ = ctx.Empty({m, f}, inner);
  }
  h_ = ctx.Empty({m, f}, inner);
}

void GroupedExperts::ExpertGemm(const ExecContext& ctx, const Tensor& a, const ops::MatrixGroup& w,
                                const Tensor& c, const ops::GroupedGemmOptions& options) const {
  if (!DenseGemms()) {
    ops::GroupedGemm(ctx, a, w, offsets_, c, options);
    return;
  }
  if (rows_ == 0) return;  // rows outside every group are untouched
  ops::Gemm(ctx, a.Narrow(0, 0, rows_), w.matrices[0], c.Narrow(0, 0, rows_),
            {.trans_b = options.trans_b, .beta = options.beta});
}

void GroupedExperts::ExpertWeightGrad(const ExecContext& ctx, const Tensor& a, const Tensor& b,
                                      const ops::MatrixGroup& grads) const {
  if (!DenseGemms()) {
    ops::GroupedGemmWeightGrad(ctx, a, b, offsets_, grads, 1.0);
    return;
  }
  // K = 0 (no rows) leaves the gradient as it is (beta = 1).
  ops::Gemm(ctx, a.Narrow(0, 0, rows_), b.Narrow(0, 0, rows_), grads.matrices[0],
            {.trans_a = ops::Trans::kYes, .beta = 1.0});
}

void GroupedExperts::InputGemm(const ExecContext& ctx, const ops::MatrixGroup& w,
                               const Tensor& c) const {
  if (!gather_rows_.defined()) {
    ExpertGemm(ctx, x_gemm_, w, c, {.trans_b = ops::Trans::kYes});
    return;
  }
  // Gathered only on the device-offsets path: never DenseGemms().
  ops::GroupedGemmGathered(ctx, x_gemm_, gather_rows_, static_cast<int>(gather_divisor_), w,
                           offsets_, c, {.trans_b = ops::Trans::kYes});
}

Tensor GroupedExperts::InputRows(const ExecContext& ctx) const {
  if (!gather_rows_.defined()) return x_gemm_;
  Tensor rows = ctx.Empty({m_, x_gemm_.dim(1)}, x_gemm_.dtype());
  ops::GatherRows(ctx, x_gemm_, gather_rows_, static_cast<int>(gather_divisor_), rows);
  return rows;
}

void GroupedExperts::ForwardGrouped(const ExecContext& ctx, const Tensor& x, const Tensor& y) {
  SM_CHECK_MSG(weights_[kGate].size() == options_.num_experts, options_.prefix,
               ": Forward before PrepareStep (the step's weights are not formed)");
  const DType gemm = experts_[0].proj[kGate]->gemm_dtype();
  const ops::GroupedGemmOptions xwt{.trans_b = ops::Trans::kYes};
  x_gemm_ = InDType(ctx, x, gemm);
  const auto rows = [&](const Tensor& t) { return t.Narrow(0, 0, rows_); };
  if (FusedSwiGlu()) {
    // Every row in a group (ForwardAllRows*): one op, SwiGLU in its epilogue.
    ops::GroupedGemmSwiGlu(ctx, x_gemm_, gather_rows_, static_cast<int>(gather_divisor_),
                           gate_up_weights_, offsets_, gate_up_, h_);
  } else if (gate_up_packed_) {
    InputGemm(ctx, gate_up_weights_, gate_up_);
    ops::SwiGluPacked(ctx, rows(gate_up_), rows(h_));
  } else {
    InputGemm(ctx, weights_[kGate], gate_);
    InputGemm(ctx, weights_[kUp], up_);
    ops::SwiGlu(ctx, rows(gate_), rows(up_), rows(h_));
  }
  h_gemm_ = InDType(ctx, h_, gemm);
  ExpertGemm(ctx, h_gemm_, weights_[kDown], y, xwt);
  ZeroTail(ctx, y, rows_);
}

void GroupedExperts::Backward(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x) {
  const int64_t m = m_, f = local_ffn_;
  const Shape rows_shape{m_, x_.dim(1)};
  SM_CHECK_MSG(d_y.shape() == rows_shape && d_x.shape() == rows_shape, options_.prefix, ": d_y ",
               d_y.DebugString(), " and d_x ", d_x.DebugString(), " for ", ShapeString(rows_shape),
               " rows");
  if (Grouped()) {
    BackwardGrouped(ctx, d_y, d_x);
    return;
  }
  ops::Zero(ctx, d_x);
  Tensor d_h = ctx.Empty({m, f}, x_.dtype());
  Tensor d_gate = ctx.Empty({m, f}, x_.dtype());
  Tensor d_up = ctx.Empty({m, f}, x_.dtype());
  int64_t start = 0;
  for (int e = 0; e < options_.num_experts; ++e) {
    const int64_t t = counts_[e];
    if (t == 0) continue;
    Expert& ex = experts_[e];
    auto rows = [&](const Tensor& a) { return a.Narrow(0, start, t); };
    ex.proj[kDown]->Backward(ctx, rows(d_y), rows(d_h), GradMode::kOverwrite);
    ops::SwiGluBackward(ctx, rows(gate_), rows(up_), rows(d_h), rows(d_gate), rows(d_up));
    ex.proj[kGate]->Backward(ctx, rows(d_gate), rows(d_x), GradMode::kOverwrite);
    ex.proj[kUp]->Backward(ctx, rows(d_up), rows(d_x), GradMode::kAccumulate);
    start += t;
  }
}

void GroupedExperts::BackwardGrouped(const ExecContext& ctx, const Tensor& d_y, const Tensor& d_x) {
  const int64_t m = m_, f = local_ffn_;
  const DType gemm = x_gemm_.dtype(), dt = h_.dtype();
  const auto rows = [&](const Tensor& t) { return t.Narrow(0, 0, rows_); };
  // Weight gradients accumulate over the step (beta = 1), in the GEMMs'
  // gradient buffers (the folded weight's, turned into dW, dγ, du at
  // FinishBackward).
  const Tensor d_y_gemm = InDType(ctx, d_y, gemm);
  ExpertWeightGrad(ctx, d_y_gemm, h_gemm_, grads_[kDown]);
  if (FusedSwiGlu()) {
    // d_h only inside the down projection's data gradient: its epilogue
    // forms d_gate_up (dt is the GEMMs' dtype on the grouped path).
    Tensor d_gate_up = ctx.Empty({m, 2 * f}, dt);
    ops::GroupedGemmSwiGluBackward(ctx, d_y_gemm, weights_[kDown], offsets_, gate_up_, d_gate_up);
    ExpertWeightGrad(ctx, d_gate_up, InputRows(ctx), gate_up_grads_);
    ExpertGemm(ctx, d_gate_up, gate_up_weights_, d_x, {.trans_b = ops::Trans::kNo});
    ZeroTail(ctx, d_x, rows_);
    return;
  }
  Tensor d_h = ctx.Empty({m, f}, dt);
  ExpertGemm(ctx, d_y_gemm, weights_[kDown], d_h, {.trans_b = ops::Trans::kNo});
  if (gate_up_packed_) {
    // dt is the GEMMs' dtype here (the grouped path's F-wide activations).
    Tensor d_gate_up = ctx.Empty({m, 2 * f}, dt);
    ops::SwiGluPackedBackward(ctx, rows(gate_up_), rows(d_h), rows(d_gate_up));
    ExpertWeightGrad(ctx, d_gate_up, InputRows(ctx), gate_up_grads_);
    ExpertGemm(ctx, d_gate_up, gate_up_weights_, d_x, {.trans_b = ops::Trans::kNo});
    ZeroTail(ctx, d_x, rows_);
    return;
  }
  Tensor d_gate = ctx.Empty({m, f}, dt);
  Tensor d_up = ctx.Empty({m, f}, dt);
  ops::SwiGluBackward(ctx, rows(gate_), rows(up_), rows(d_h), rows(d_gate), rows(d_up));
  const Tensor d_gate_gemm = InDType(ctx, d_gate, gemm), d_up_gemm = InDType(ctx, d_up, gemm);
  const Tensor x_rows = InputRows(ctx);
  ExpertWeightGrad(ctx, d_gate_gemm, x_rows, grads_[kGate]);
  ExpertWeightGrad(ctx, d_up_gemm, x_rows, grads_[kUp]);
  ExpertGemm(ctx, d_gate_gemm, weights_[kGate], d_x, {.trans_b = ops::Trans::kNo});
  ExpertGemm(ctx, d_up_gemm, weights_[kUp], d_x, {.trans_b = ops::Trans::kNo, .beta = 1.0});
  ZeroTail(ctx, d_x, rows_);
}

Status GroupedExperts::FinishBackward(const ExecContext& ctx) {
  for (ScaledLinearGroup& fold : folds_) SM_RETURN_IF_ERROR(fold.FinishBackward(ctx));
  return absl::OkStatus();
}

void GroupedExperts::VisitForwardCache(ForwardCacheStash& stash) {
  for (Tensor* t :
       {&x_, &gate_, &up_, &gate_up_, &h_, &offsets_, &x_gemm_, &h_gemm_, &gather_rows_}) {
    stash.Visit(*t);
  }
  stash.Visit(counts_);
  stash.Visit(m_);
  stash.Visit(rows_);
  stash.Visit(gather_divisor_);
  for (Expert& e : experts_) {
    for (auto& proj : e.proj) proj->VisitForwardCache(stash);
  }
}

}  // namespace scalemoe
