#include "optim/muon.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "core/host_values.h"

namespace scalemoe {
namespace {

constexpr double kNsA = 3.4445;
constexpr double kNsB = -4.7750;
constexpr double kNsC = 2.0315;
constexpr double kNsEps = 1e-7;

}  // namespace

Muon::Muon(const MuonOptions& options, const ParamGroups& groups, DType dtype,
           const ExecContext& ctx)
    : options_(options), total_(groups.total_numel()) {
  SM_CHECK_MSG(dtype == DType::kF32 || dtype == DType::kF64, "Muon state dtype ",
               DTypeName(dtype), ": f32 or f64");
  // Matrices by shape (registry order within a shape), packed class by class.
  std::map<std::pair<int64_t, int64_t>, std::vector<const ParamGroupEntry*>> by_shape;
  for (const ParamGroupEntry& e : groups.entries()) {
    const Param& p = *e.param;
    if (groups.group(e.group).rule != UpdateRule::kMuon || p.local_numel() == 0) continue;
    SM_CHECK_MSG(p.local_shape.size() == 2, p.spec.name, ": Muon takes 2-D matrices");
    by_shape[{p.local_shape[0], p.local_shape[1]}].push_back(&e);
  }
  std::vector<int64_t> rows;
  std::vector<double> coefficients;
  for (const auto& [shape, entries] : by_shape) {
    const auto [r, c] = shape;
    classes_.push_back({r, c, static_cast<int64_t>(entries.size()), packed_numel_});
    const double shape_scale = std::sqrt(std::max(1.0, static_cast<double>(r) / c));
    for (const ParamGroupEntry* e : entries) {
      const Param& p = *e->param;
      const ParamGroup& g = groups.group(e->group);
      rows.insert(rows.end(), {p.flat_offset, p.flat_offset + p.local_numel(), packed_numel_});
      coefficients.insert(coefficients.end(),
                          {g.lr_mult, g.EffectiveWeightDecay(options_.weight_decay),
                           shape_scale});
      packed_numel_ += p.local_numel();
    }
  }
  const int64_t matrices = static_cast<int64_t>(rows.size() / 3);
  segments_ = TableToDevice(ctx, {matrices, 3}, rows);
  coefficients_ = TableToDevice(ctx, {matrices, 3}, coefficients);
  momentum_ = ctx.Zeros({total_}, dtype);
}

void Muon::NewtonSchulz(const ExecContext& ctx, const Tensor& g, const Tensor& out, int steps) {
  SM_CHECK_MSG(out.shape() == g.shape() && out.dtype() == g.dtype(), "NewtonSchulz ",
               g.DebugString(), " -> ", out.DebugString());
  ops::Copy(ctx, g, out);
  NewtonSchulzInPlace(ctx, out, steps);
}

void Muon::NewtonSchulzInPlace(const ExecContext& ctx, const Tensor& x_in, int steps) {
  SM_CHECK_MSG(x_in.ndim() == 2 || x_in.ndim() == 3, "NewtonSchulz of ", x_in.DebugString(),
               ": [R, C] or [B, R, C]");
  const int64_t rows = x_in.dim(-2), cols = x_in.dim(-1);
  const bool tall = rows > cols;  // iterate on Xᵀ: Gram matrix on the small side
  const int64_t small = std::min(rows, cols);
  Shape square = {small, small};
  if (x_in.ndim() == 3) square.insert(square.begin(), x_in.dim(0));
  ops::FrobeniusNormalize(ctx, x_in, kNsEps);
  // x and next swap roles each iteration (no copy back); the result is
  // copied into x_in at the end if it lies in the scratch buffer.
  Tensor x = x_in;
  Tensor next = ctx.Empty(x_in.shape(), x_in.dtype());
  const Tensor gram = ctx.Empty(square, x_in.dtype());
  const Tensor poly = ctx.Empty(square, x_in.dtype());
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
    std::swap(x, next);
  }
  if (steps % 2 == 1) ops::Copy(ctx, x, x_in);
}

void Muon::Step(const ExecContext& ctx, const Tensor& values, const Tensor& grads, double lr,
                const ops::StepControl& control) {
  SM_CHECK_MSG(values.numel() == total_ && grads.numel() == total_, "Muon::Step values ",
               values.DebugString(), ", grads ", grads.DebugString(), ": need the ", total_,
               "-element flat buffers");
  if (classes_.empty()) return;
  const Tensor packed = ctx.Empty({packed_numel_}, momentum_.dtype());
  ops::MuonMomentum(ctx, grads, momentum_, packed, segments_,
                    {.momentum = options_.momentum, .nesterov = options_.nesterov}, control);
  for (const ShapeClass& c : classes_) {
    const Tensor batch =
        packed.Narrow(0, c.packed_begin, c.count * c.rows * c.cols).View({c.count, c.rows, c.cols});
    NewtonSchulzInPlace(ctx, batch, options_.ns_steps);
  }
  ops::MuonApply(ctx, values, packed, segments_, coefficients_, lr, control);
}

}  // namespace scalemoe
