#include "optim/muon.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/ops.h"
#include "optim/clip.h"

namespace scalemoe {
namespace {

constexpr double kNsA = 3.4445;
constexpr double kNsB = -4.7750;
constexpr double kNsC = 2.0315;
constexpr double kNsEps = 1e-7;

}  // namespace

Muon::Muon(const MuonOptions& options, const ParamGroups& groups, DType dtype, Device device)
    : options_(options), groups_(groups.groups()) {
  SM_CHECK_MSG(dtype == DType::kF32 || dtype == DType::kF64, "Muon state dtype ",
               DTypeName(dtype), ": f32 or f64");
  SM_CHECK_MSG(device == Device::kCPU, "Muon: CUDA path not in this build");
  for (const ParamGroupEntry& e : groups.entries()) {
    if (groups_[e.group].rule == UpdateRule::kMuon) matrices_.push_back(e);
  }
  momentum_ = Tensor::Zeros({groups.total_numel()}, dtype, device);
}

void Muon::NewtonSchulz(const ExecContext& ctx, const Tensor& g, const Tensor& out, int steps) {
  SM_CHECK_MSG(g.ndim() == 2 && out.shape() == g.shape() && out.dtype() == g.dtype(),
               "NewtonSchulz ", g.DebugString(), " -> ", out.DebugString());
  const int64_t rows = g.dim(0), cols = g.dim(1);
  const bool tall = rows > cols;  // iterate on Xᵀ: Gram matrix on the small side
  const int64_t small = std::min(rows, cols);
  Tensor x = out;
  ops::Copy(ctx, g, x);
  ops::Scale(ctx, 1.0 / (std::sqrt(SumOfSquares(x)) + kNsEps), x);
  Tensor next = Tensor::Empty(g.shape(), g.dtype(), g.device());
  Tensor gram = Tensor::Empty({small, small}, g.dtype(), g.device());
  Tensor poly = Tensor::Empty({small, small}, g.dtype(), g.device());
  for (int i = 0; i < steps; ++i) {
    // gram = X·Xᵀ (wide) or Xᵀ·X (tall).
    ops::Gemm(ctx, x, x, gram,
              {.trans_a = tall ? ops::Trans::kYes : ops::Trans::kNo,
               .trans_b = tall ? ops::Trans::kNo : ops::Trans::kYes});
    // poly = b·gram + c·gram².
    ops::Copy(ctx, gram, poly);
    ops::Gemm(ctx, gram, gram, poly, {.alpha = kNsC, .beta = kNsB});
    // next = a·X + poly·X (wide) or a·X + X·poly (tall; poly is symmetric).
    ops::Copy(ctx, x, next);
    if (tall) {
      ops::Gemm(ctx, x, poly, next, {.beta = kNsA});
    } else {
      ops::Gemm(ctx, poly, x, next, {.beta = kNsA});
    }
    ops::Copy(ctx, next, x);
  }
}

void Muon::Step(const ExecContext& ctx, double lr) {
  for (const ParamGroupEntry& e : matrices_) {
    const Param& p = *e.param;
    const ParamGroup& g = groups_[e.group];
    const double lr_g = lr * g.lr_mult;
    const double wd_g = g.EffectiveWeightDecay(options_.weight_decay);
    SM_CHECK_MSG(p.value.dtype() == momentum_.dtype(), p.spec.name, " is ",
                 DTypeName(p.value.dtype()), ", Muon state ", DTypeName(momentum_.dtype()));
    Tensor buf = momentum_.Narrow(0, p.flat_offset, p.local_numel()).View(p.local_shape);
    ops::Scale(ctx, options_.momentum, buf);
    ops::Axpy(ctx, 1.0, p.grad, buf);
    Tensor update = Tensor::Empty(p.local_shape, p.value.dtype(), p.value.device());
    if (options_.nesterov) {
      ops::Copy(ctx, p.grad, update);
      ops::Axpy(ctx, options_.momentum, buf, update);
    } else {
      ops::Copy(ctx, buf, update);
    }
    Tensor ortho = Tensor::Empty(p.local_shape, p.value.dtype(), p.value.device());
    NewtonSchulz(ctx, update, ortho, options_.ns_steps);
    const double rows = static_cast<double>(p.local_shape[0]);
    const double cols = static_cast<double>(p.local_shape[1]);
    const double shape_scale = std::sqrt(std::max(1.0, rows / cols));
    ops::Scale(ctx, 1.0 - lr_g * wd_g, p.value);
    ops::Axpy(ctx, -lr_g * shape_scale, ortho, p.value);
  }
}

}  // namespace scalemoe
