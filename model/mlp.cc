#include "model/mlp.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"
#include "model/scale_options.h"
#include "model/weight_spec.h"

namespace scalemoe {
namespace {

constexpr int kGate = 0, kUp = 1;  // branch indices in the BranchScales

}  // namespace

Mlp::Mlp(ParamRegistry& registry, const config::RunConfig& cfg, int layer) {
  const config::ModelConfig& m = cfg.model();
  const ScaleOptions so(cfg.scale_vectors());
  const int64_t c = m.hidden_size(), f = m.ffn_hidden_size();
  const std::string p = absl::StrCat("layers.", layer, ".mlp");
  const ParamLayout layout = LayerLayout(layer);
  std::vector<BranchSpec> branches = {{p + ".gamma_gate", layout}, {p + ".gamma_up", layout}};
  scales_ = std::make_unique<BranchScales>(
      registry, cfg.scale_vectors(), absl::StrCat("layers.", layer, ".ffn_norm.scale"), layout,
      c, std::move(branches), cfg.scale_vectors().hg_ffn());
  auto weight = [&](const char* name, int64_t rows, int64_t cols, double init_std) {
    return registry.Create(WeightSpec(absl::StrCat(p, ".", name), {rows, cols},
                                      ParamRole::kLinear, init_std, layer));
  };
  Param* w_gate = weight("w_gate", f, c, m.init_std());
  Param* w_up = weight("w_up", f, c, m.init_std());
  Param* w_down = weight("w_down", c, f, OutputProjectionStd(m));
  auto u_name = [&](Projection proj, const char* suffix) {
    return so.OutputVector(proj) ? absl::StrCat(p, ".u_", suffix) : std::string();
  };
  gate_ = std::make_unique<ScaledLinear>(registry, w_gate, scales_.get(), kGate,
                                         u_name(config::ScaleVectorConfig::GATE, "gate"),
                                         so.reparam(), so.path());
  up_ = std::make_unique<ScaledLinear>(registry, w_up, scales_.get(), kUp,
                                       u_name(config::ScaleVectorConfig::UP, "up"), so.reparam(),
                                       so.path());
  down_ = std::make_unique<ScaledLinear>(registry, w_down, nullptr, 0,
                                         u_name(config::ScaleVectorConfig::DOWN, "down"),
                                         so.reparam(), so.path());
}

void Mlp::PrepareStep(const ExecContext& ctx, DType dtype) {
  scales_->Forward(ctx, dtype);
  for (ScaledLinear* l : {gate_.get(), up_.get(), down_.get()}) l->PrepareStep(ctx, dtype);
}

void Mlp::Forward(const ExecContext& ctx, const Tensor& n, const Tensor& out) {
  const int64_t tokens = n.dim(0), f = gate_->out_features();
  gate_out_ = Tensor::Empty({tokens, f}, n.dtype(), n.device());
  up_out_ = Tensor::Empty({tokens, f}, n.dtype(), n.device());
  gate_->Forward(ctx, n, gate_out_);
  up_->Forward(ctx, n, up_out_);
  Tensor h = Tensor::Empty({tokens, f}, n.dtype(), n.device());
  ops::SwiGlu(ctx, gate_out_, up_out_, h);
  down_->Forward(ctx, h, out);
}

void Mlp::Backward(const ExecContext& ctx, const Tensor& d_out, const Tensor& d_n) {
  const Shape shape = gate_out_.shape();
  Tensor d_h = Tensor::Empty(shape, d_out.dtype(), d_out.device());
  down_->Backward(ctx, d_out, d_h, GradMode::kOverwrite);
  Tensor d_gate = Tensor::Empty(shape, d_out.dtype(), d_out.device());
  Tensor d_up = Tensor::Empty(shape, d_out.dtype(), d_out.device());
  ops::SwiGluBackward(ctx, gate_out_, up_out_, d_h, d_gate, d_up);
  gate_->Backward(ctx, d_gate, d_n, GradMode::kOverwrite);
  up_->Backward(ctx, d_up, d_n, GradMode::kAccumulate);
}

void Mlp::FinishBackward(const ExecContext& ctx) {
  for (ScaledLinear* l : {gate_.get(), up_.get(), down_.get()}) l->FinishBackward(ctx);
  scales_->Backward(ctx);
}

}  // namespace scalemoe
