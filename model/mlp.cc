#include "model/mlp.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "model/weight_spec.h"
#include "norm/scale_options.h"

namespace scalemoe {
namespace {

constexpr int kGate = 0, kUp = 1;  // branch indices in the BranchScales

}  // namespace

Mlp::Mlp(ParamRegistry& registry, const config::RunConfig& cfg, int layer, const TpRegion& tp)
    : tp_(tp) {
  const config::ModelConfig& m = cfg.model();
  const ScaleOptions so(cfg.scale_vectors());
  const int64_t c = m.hidden_size(), f = m.ffn_hidden_size();
  // Invariant: ValidateModelConfig (model/model_config.h) reports this.
  SM_CHECK_MSG(f % tp.size() == 0, "layer ", layer, ": model.ffn_hidden_size=", f,
               " does not split over parallel.tp=", tp.size());
  const std::string p = absl::StrCat("layers.", layer, ".mlp");
  ParamLayout layout = LayerLayout(layer);
  layout.tp_partial_grad = true;  // the γ's see only this rank's F columns
  std::vector<BranchSpec> branches = {{p + ".gamma_gate", layout}, {p + ".gamma_up", layout}};
  scales_ = std::make_unique<BranchScales>(
      registry, so, absl::StrCat("layers.", layer, ".ffn_norm.scale"), layout, c,
      std::move(branches), so.OwnVectors(BranchGroup::kFfn));
  // Global shapes; gate and up column-parallel, down row-parallel.
  Param* w_gate = CreateTpLinear(registry, p, "w_gate", {f, c}, m.init_std(), layer,
                                 TpSplit::kColumn);
  Param* w_up = CreateTpLinear(registry, p, "w_up", {f, c}, m.init_std(), layer, TpSplit::kColumn);
  Param* w_down = CreateTpLinear(registry, p, "w_down", {c, f}, OutputProjectionStd(m), layer,
                                 TpSplit::kRow);
  auto u_name = [&](Projection proj, const char* suffix) {
    return so.OutputVector(proj) ? absl::StrCat(p, ".u_", suffix) : std::string();
  };
  auto linear = [&](Param* w, const BranchScales* scales, int branch, Projection proj,
                    const char* suffix) {
    const ScaledLinearOptions options{.path = so.path(),
                                      .u_name = u_name(proj, suffix),
                                      .reparam = so.reparam(),
                                      .split_group = tp.comm(),
                                      .bf16_operands = Bf16Operands(cfg)};
    return std::make_unique<ScaledLinear>(registry, w, scales, branch, options);
  };
  gate_ = linear(w_gate, scales_.get(), kGate, config::ScaleVectorConfig::GATE, "gate");
  up_ = linear(w_up, scales_.get(), kUp, config::ScaleVectorConfig::UP, "up");
  down_ = linear(w_down, nullptr, 0, config::ScaleVectorConfig::DOWN, "down");
  projections_ = std::make_unique<ScaledLinearGroup>(
      std::vector<ScaledLinear*>{gate_.get(), up_.get(), down_.get()});
}

Status Mlp::PrepareStep(const ExecContext& ctx, DType dtype) {
  dtype_ = dtype;
  SM_RETURN_IF_ERROR(scales_->Forward(ctx, dtype));
  SM_RETURN_IF_ERROR(projections_->PrepareStep(ctx, dtype));
  return absl::OkStatus();
}

DType Mlp::InnerDType(DType activations) const {
  const DType dt = gate_->output_dtype(activations);
  return up_->output_dtype(activations) == dt ? dt : activations;
}

Status Mlp::Forward(const ExecContext& ctx, const Tensor& n_rows, const Tensor& out) {
  SM_ASSIGN_OR_RETURN(const Tensor n, tp_.ToFull(ctx, n_rows));
  const int64_t tokens = n.dim(0), f = gate_->out_features();
  const DType inner = InnerDType(n.dtype());
  gate_out_ = ctx.Empty({tokens, f}, inner);
  up_out_ = ctx.Empty({tokens, f}, inner);
  const Tensor n_in = SharedGemmInput(ctx, n, {gate_.get(), up_.get()});
  gate_->Forward(ctx, n_in, gate_out_);
  up_->Forward(ctx, n_in, up_out_);
  Tensor h = ctx.Empty({tokens, f}, inner);
  ops::SwiGlu(ctx, gate_out_, up_out_, h);
  // Partial sums over the TP ranks in the master's dtype (TpRegion).
  const Tensor partial = tp_.PartialFor(ctx, out, tokens, dtype_);
  down_->Forward(ctx, h, partial);
  return tp_.ReduceToRows(ctx, partial, out);
}

Status Mlp::Backward(const ExecContext& ctx, const Tensor& d_out_rows, const Tensor& d_n_rows) {
  SM_ASSIGN_OR_RETURN(const Tensor d_out, tp_.ToFull(ctx, d_out_rows));
  const Shape shape = gate_out_.shape();
  const Tensor d_n = tp_.PartialFor(ctx, d_n_rows, shape[0], dtype_);
  const DType inner = gate_out_.dtype();
  Tensor d_h = ctx.Empty(shape, inner);
  down_->Backward(ctx, d_out, d_h, GradMode::kOverwrite);
  Tensor d_gate = ctx.Empty(shape, inner);
  Tensor d_up = ctx.Empty(shape, inner);
  ops::SwiGluBackward(ctx, gate_out_, up_out_, d_h, d_gate, d_up);
  gate_->Backward(ctx, d_gate, d_n, GradMode::kOverwrite);
  up_->Backward(ctx, d_up, d_n, GradMode::kAccumulate);
  return tp_.ReduceToRows(ctx, d_n, d_n_rows);
}

Status Mlp::FinishBackward(const ExecContext& ctx) {
  SM_RETURN_IF_ERROR(projections_->FinishBackward(ctx));
  return scales_->Backward(ctx);
}

void Mlp::VisitForwardCache(ForwardCacheStash& stash) {
  stash.Visit(gate_out_);
  stash.Visit(up_out_);
  for (ScaledLinear* l : {gate_.get(), up_.get(), down_.get()}) l->VisitForwardCache(stash);
}

}  // namespace scalemoe
