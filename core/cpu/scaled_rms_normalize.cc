// ScaledRmsNormalize and its backward (CPU): RmsNormalize then the scale γ
// over each row in one pass, with the arithmetic of the two-op sequence the
// per-head norms ran before (RmsNormalize's rows, core/cpu/rms_rows.h, then
// core/cpu/scale_rows_cols.cc's products with no row vector), in A =
// Acc<T> (f32 for bf16 x: the widened copy the sequence normalized), so the
// same bits; a bf16 y (or d_y, d_x) for f32 x is the sequence's f32 result
// rounded once, as its copy into bf16 rounded it. d_gamma is summed row by
// row in A, as ScaleRowsColsBackward sums its d_col.
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"
#include "core/cpu/rms_rows.h"
#include "core/head_rows.h"
#include "core/scaled_rms_normalize_checks.h"

namespace scalemoe::cpu {
namespace {

// Rows of x, every tensor a CPU tensor, contiguous but x and the
// backward's d_x (head rows, core/head_rows.h: their layouts into x_rows
// and dx_rows), then the shared checks (core/scaled_rms_normalize_checks.h).
int64_t CheckRows(const char* op, const Tensor& x, const Tensor& gamma, const Tensor& rstd,
                  std::initializer_list<std::pair<const char*, const Tensor*>> io, HeadRows& x_rows,
                  const Tensor* d_x = nullptr, HeadRows* dx_rows = nullptr) {
  const auto check = [op](const char* what, const Tensor& t) {
    SM_CHECK_MSG(t.device() == Device::kCPU && t.is_contiguous(), op, " ", what,
                 " must be a contiguous CPU tensor, got ", t.DebugString());
  };
  SM_CHECK_MSG(x.device() == Device::kCPU, op, " x must be a CPU tensor, got ", x.DebugString());
  x_rows = CheckHeadRows(x, op, "x");
  check("gamma", gamma);
  check("rstd", rstd);
  for (const auto& [what, t] : io) {
    if (t != d_x) check(what, *t);
  }
  if (d_x != nullptr) {
    SM_CHECK_MSG(d_x->device() == Device::kCPU && d_x->dim(-1) == x.dim(-1), op, " d_x ",
                 d_x->DebugString(), " for x ", x.DebugString());
    *dx_rows = CheckHeadRows(*d_x, op, "d_x");
  }
  return ops::CheckScaledRmsNormalizeArgs(op, x, gamma, rstd, io);
}

// O: y's type (T, or bf16 for f32 T). x's rows at xr.offset(r).
template <typename T, typename O>
void Forward(const T* x, const HeadRows& xr_at, const Acc<T>* gamma, double eps, O* y, Acc<T>* rstd,
             int64_t rows, int64_t d) {
  using A = Acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + xr_at.offset(r);
    const A s = RowRstd(xr, d, eps);
    rstd[r] = s;
    for (int64_t j = 0; j < d; ++j) {
      const A n = static_cast<A>(xr[j]) * s;  // RmsNormalize's n, stored in A there
      y[r * d + j] = O(n * gamma[j]);         // ScaleRowsCols' (1·n)·γ
    }
  }
}

// x's rows at x_at.offset(r), d_x's at dx_at.offset(r).
template <typename T, typename O>
void Backward(const T* x, const HeadRows& x_at, const Acc<T>* rstd, const Acc<T>* gamma,
              const O* dy, O* dx, const HeadRows& dx_at, Acc<T>* d_gamma, int64_t rows, int64_t d) {
  using A = Acc<T>;
  std::vector<A> n(static_cast<size_t>(d)), dn(static_cast<size_t>(d));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + x_at.offset(r);
    for (int64_t j = 0; j < d; ++j) {
      n[j] = static_cast<A>(xr[j]) * rstd[r];
      const A g = static_cast<A>(dy[r * d + j]);
      dn[j] = g * gamma[j];    // ScaleRowsColsBackward's d_x
      d_gamma[j] += g * n[j];  // and its d_col
    }
    RowBackward(n.data(), rstd[r], dn.data(), dx + dx_at.offset(r), d);
  }
}

}  // namespace

void ScaledRmsNormalize(const ExecContext&, const Tensor& x, const Tensor& gamma, double eps,
                        const Tensor& y, const Tensor& rstd) {
  HeadRows xr;
  const int64_t rows = CheckRows("ScaledRmsNormalize", x, gamma, rstd, {{"y", &y}}, xr);
  const int64_t d = x.dim(-1);
  if (y.dtype() != x.dtype()) {  // bf16 y for f32 x (CheckRows)
    Forward(x.data<float>(), xr, gamma.data<float>(), eps, y.data<bf16>(), rstd.data<float>(), rows,
            d);
    return;
  }
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Forward(x.data<T>(), xr, gamma.data<Acc<T>>(), eps, y.data<T>(), rstd.data<Acc<T>>(), rows, d);
  });
}

void ScaledRmsNormalizeBackward(const ExecContext&, const Tensor& x, const Tensor& rstd,
                                const Tensor& gamma, const Tensor& d_y, const Tensor& d_x,
                                const Tensor& d_gamma) {
  HeadRows xr, dxr;
  const int64_t rows = CheckRows("ScaledRmsNormalizeBackward", x, gamma, rstd,
                                 {{"d_y", &d_y}, {"d_x", &d_x}}, xr, &d_x, &dxr);
  SM_CHECK_MSG(d_gamma.device() == Device::kCPU && d_gamma.is_contiguous() &&
                   d_gamma.numel() == gamma.numel() && d_gamma.dtype() == gamma.dtype(),
               "ScaledRmsNormalizeBackward d_gamma ", d_gamma.DebugString(), " for gamma ",
               gamma.DebugString());
  const int64_t d = x.dim(-1);
  if (d_y.dtype() != x.dtype()) {  // bf16 d_y and d_x for f32 x (CheckRows)
    Backward(x.data<float>(), xr, rstd.data<float>(), gamma.data<float>(), d_y.data<bf16>(),
             d_x.data<bf16>(), dxr, d_gamma.data<float>(), rows, d);
    return;
  }
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Backward(x.data<T>(), xr, rstd.data<Acc<T>>(), gamma.data<Acc<T>>(), d_y.data<T>(),
             d_x.data<T>(), dxr, d_gamma.data<Acc<T>>(), rows, d);
  });
}

void ScaledRmsNormalizeRope(const ExecContext& ctx, const Tensor& x, const Tensor& gamma,
                            double eps, const Tensor& rope_table, const Tensor& y,
                            const Tensor& rstd) {
  ops::CheckRopeTableArgs("ScaledRmsNormalizeRope", x, rope_table);
  ScaledRmsNormalize(ctx, x, gamma, eps, y, rstd);
  Rope(ctx, y, /*theta=*/0.0, y, rope_table);  // theta is the table's; unread with one
}

void ScaledRmsNormalizeRopeBackward(const ExecContext& ctx, const Tensor& x, const Tensor& rstd,
                                    const Tensor& gamma, const Tensor& rope_table,
                                    const Tensor& d_y, const Tensor& d_x, const Tensor& d_gamma) {
  ops::CheckRopeTableArgs("ScaledRmsNormalizeRopeBackward", x, rope_table);
  const Tensor d_n = Tensor::Empty(d_y.shape(), d_y.dtype());
  RopeBackward(ctx, d_y, /*theta=*/0.0, d_n, rope_table);  // as in the forward
  ScaledRmsNormalizeBackward(ctx, x, rstd, gamma, d_n, d_x, d_gamma);
}

}  // namespace scalemoe::cpu
