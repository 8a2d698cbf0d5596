// RmsNormalize (n = x / rms(x), no scale) and its backward (CPU, f32/f64),
// and the two with the residual add fused in (AddRmsNormalize,
// RmsNormalizeBackwardAdd): each row runs the same loops as the two-op
// sequence (the add as Axpy's, then Forward/Backward on the row), so the
// fused ops give its bits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

int64_t RowsOf(const Tensor& x, const Tensor& rstd) {
  SM_CHECK_MSG(x.device() == Device::kCPU && x.is_contiguous() && x.ndim() >= 1,
               "RmsNormalize x ", x.DebugString());
  const int64_t rows = x.numel() / x.dim(-1);
  SM_CHECK_MSG(rstd.numel() == rows && rstd.dtype() == x.dtype() && rstd.is_contiguous(),
               "RmsNormalize rstd ", rstd.DebugString(), " for x ", x.DebugString());
  return rows;
}

void CheckLike(const char* op, const char* what, const Tensor& t, const Tensor& x) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.numel() == x.numel() && t.dtype() == x.dtype() &&
                   t.is_contiguous(),
               op, " ", what, " ", t.DebugString(), " for ", x.DebugString());
}

template <typename T>
void Forward(const T* x, double eps, T* n, T* rstd, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;
    double sq = 0;  // f64 accumulation: the f32 path keeps its precision
    for (int64_t j = 0; j < d; ++j) sq += static_cast<double>(xr[j]) * xr[j];
    const T s = static_cast<T>(1.0 / std::sqrt(sq / static_cast<double>(d) + eps));
    rstd[r] = s;
    T* nr = n + r * d;
    for (int64_t j = 0; j < d; ++j) nr[j] = xr[j] * s;
  }
}

template <typename T>
void Backward(const T* n, const T* rstd, const T* dn, T* dx, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* nr = n + r * d;
    const T* gr = dn + r * d;
    double dot = 0;
    for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(gr[j]) * nr[j];
    const T mean = static_cast<T>(dot / static_cast<double>(d));
    T* out = dx + r * d;
    for (int64_t j = 0; j < d; ++j) out[j] = rstd[r] * (gr[j] - nr[j] * mean);
  }
}

// y += x over one row, as Axpy(1.0, x, y) computes it (1·x is exact).
template <typename T>
void AddRow(const T* x, T* y, int64_t d) {
  for (int64_t j = 0; j < d; ++j) y[j] = y[j] + x[j];
}

template <typename T>
void AddForward(const T* residual, T* x, double eps, T* n, T* rstd, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    AddRow(residual + r * d, x + r * d, d);
    Forward(x + r * d, eps, n + r * d, rstd + r, 1, d);
  }
}

// The row's backward goes to scratch first: d_x may be d_res (read after).
template <typename T>
void BackwardAdd(const T* n, const T* rstd, const T* dn, const T* d_res, T* dx, int64_t rows,
                 int64_t d) {
  std::vector<T> row(static_cast<size_t>(d));
  for (int64_t r = 0; r < rows; ++r) {
    Backward(n + r * d, rstd + r, dn + r * d, row.data(), 1, d);
    AddRow(d_res + r * d, row.data(), d);
    std::copy(row.begin(), row.end(), dx + r * d);
  }
}

}  // namespace

void RmsNormalize(const ExecContext&, const Tensor& x, double eps, const Tensor& n,
                  const Tensor& rstd) {
  const int64_t rows = RowsOf(x, rstd);
  SM_CHECK_MSG(n.numel() == x.numel() && n.dtype() == x.dtype() && n.is_contiguous(),
               "RmsNormalize n ", n.DebugString());
  const int64_t d = x.dim(-1);
  if (x.dtype() == DType::kF64) {
    Forward(x.data<double>(), eps, n.data<double>(), rstd.data<double>(), rows, d);
  } else {
    Forward(x.data<float>(), eps, n.data<float>(), rstd.data<float>(), rows, d);
  }
}

void RmsNormalizeBackward(const ExecContext&, const Tensor& n, const Tensor& rstd,
                          const Tensor& d_n, const Tensor& d_x) {
  const int64_t rows = RowsOf(n, rstd);
  SM_CHECK_MSG(d_n.numel() == n.numel() && d_n.dtype() == n.dtype() && d_n.is_contiguous(),
               "RmsNormalizeBackward d_n ", d_n.DebugString());
  SM_CHECK_MSG(d_x.numel() == n.numel() && d_x.dtype() == n.dtype() && d_x.is_contiguous(),
               "RmsNormalizeBackward d_x ", d_x.DebugString());
  const int64_t d = n.dim(-1);
  if (n.dtype() == DType::kF64) {
    Backward(n.data<double>(), rstd.data<double>(), d_n.data<double>(), d_x.data<double>(), rows,
             d);
  } else {
    Backward(n.data<float>(), rstd.data<float>(), d_n.data<float>(), d_x.data<float>(), rows, d);
  }
}

void AddRmsNormalize(const ExecContext&, const Tensor& residual, const Tensor& x, double eps,
                     const Tensor& n, const Tensor& rstd) {
  const int64_t rows = RowsOf(x, rstd);
  CheckLike("AddRmsNormalize", "residual", residual, x);
  CheckLike("AddRmsNormalize", "n", n, x);
  CheckSameOrDisjoint("AddRmsNormalize", residual, x);
  CheckSameOrDisjoint("AddRmsNormalize", residual, n);
  CheckSameOrDisjoint("AddRmsNormalize", x, n);
  const int64_t d = x.dim(-1);
  if (x.dtype() == DType::kF64) {
    AddForward(residual.data<double>(), x.data<double>(), eps, n.data<double>(),
               rstd.data<double>(), rows, d);
  } else {
    AddForward(residual.data<float>(), x.data<float>(), eps, n.data<float>(), rstd.data<float>(),
               rows, d);
  }
}

void RmsNormalizeBackwardAdd(const ExecContext&, const Tensor& n, const Tensor& rstd,
                             const Tensor& d_n, const Tensor& d_res, const Tensor& d_x) {
  const int64_t rows = RowsOf(n, rstd);
  CheckLike("RmsNormalizeBackwardAdd", "d_n", d_n, n);
  CheckLike("RmsNormalizeBackwardAdd", "d_res", d_res, n);
  CheckLike("RmsNormalizeBackwardAdd", "d_x", d_x, n);
  for (const Tensor* in : {&n, &d_n, &d_res}) {
    CheckSameOrDisjoint("RmsNormalizeBackwardAdd", d_x, *in);
  }
  const int64_t d = n.dim(-1);
  if (n.dtype() == DType::kF64) {
    BackwardAdd(n.data<double>(), rstd.data<double>(), d_n.data<double>(), d_res.data<double>(),
                d_x.data<double>(), rows, d);
  } else {
    BackwardAdd(n.data<float>(), rstd.data<float>(), d_n.data<float>(), d_res.data<float>(),
                d_x.data<float>(), rows, d);
  }
}

}  // namespace scalemoe::cpu
