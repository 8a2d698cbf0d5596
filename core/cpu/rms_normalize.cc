// RmsNormalize (n = x / rms(x), no scale) and its backward (CPU), and the
// two with the residual add fused in (AddRmsNormalize,
// RmsNormalizeBackwardAdd): each row runs the same loops as the two-op
// sequence (the add as Axpy's, then Forward/Backward on the row), so the
// fused ops give its bits. f32 and f64 compute in themselves (row sums in
// f64); bf16 is loaded into f32 and runs the f32 path's arithmetic, its
// rstd kept in f32 and every bf16 output rounded once on store, where the
// CUDA kernels round (core/cuda/rms_normalize.cu): AddRmsNormalize's sum
// before it is squared, RmsNormalizeBackwardAdd's backward before the add.
#include <algorithm>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"
#include "core/cpu/rms_rows.h"

namespace scalemoe::cpu {
namespace {

// Rows of x viewed as [R, D], after checking x and its row statistic.
int64_t RowsOf(const char* op, const Tensor& x, const Tensor& rstd) {
  SM_CHECK_MSG(
      x.device() == Device::kCPU && x.is_contiguous() && x.ndim() >= 1 &&
          (x.dtype() == DType::kF32 || x.dtype() == DType::kF64 || x.dtype() == DType::kBF16),
      op, " x must be contiguous f32, f64 or bf16 CPU rows, got ", x.DebugString());
  const int64_t rows = x.numel() / x.dim(-1);
  const DType stat = StatDType(x.dtype());
  SM_CHECK_MSG(rstd.device() == Device::kCPU && rstd.numel() == rows && rstd.dtype() == stat &&
                   rstd.is_contiguous(),
               op, " rstd ", rstd.DebugString(), " for x ", x.DebugString(), " (want ", rows, " ",
               DTypeName(stat), ")");
  return rows;
}

void CheckLike(const char* op, const char* what, const Tensor& t, const Tensor& x) {
  SM_CHECK_MSG(t.device() == Device::kCPU && t.numel() == x.numel() && t.dtype() == x.dtype() &&
                   t.is_contiguous(),
               op, " ", what, " ", t.DebugString(), " for ", x.DebugString());
}

// T is the storage type, A = Acc<T> the compute type and rstd's (T itself
// for f32 and f64: the arithmetic those paths always had).
template <typename T>
void Forward(const T* x, double eps, T* n, Acc<T>* rstd, int64_t rows, int64_t d) {
  using A = Acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;
    const A s = RowRstd(xr, d, eps);
    rstd[r] = s;
    T* nr = n + r * d;
    for (int64_t j = 0; j < d; ++j) nr[j] = T(static_cast<A>(xr[j]) * s);
  }
}

template <typename T>
void Backward(const T* n, const Acc<T>* rstd, const T* dn, T* dx, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) RowBackward(n + r * d, rstd[r], dn + r * d, dx + r * d, d);
}

// y += x over one row, as Axpy(1.0, x, y) computes it (1·x is exact),
// rounded to T.
template <typename T>
void AddRow(const T* x, T* y, int64_t d) {
  using A = Acc<T>;
  for (int64_t j = 0; j < d; ++j) y[j] = T(static_cast<A>(y[j]) + static_cast<A>(x[j]));
}

template <typename T>
void AddForward(const T* residual, T* x, double eps, T* n, Acc<T>* rstd, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    AddRow(residual + r * d, x + r * d, d);
    Forward(x + r * d, eps, n + r * d, rstd + r, 1, d);
  }
}

// The row's backward goes to scratch first (rounded to T there, as
// RmsNormalizeBackward's store): d_x may be d_res (read after).
template <typename T>
void BackwardAdd(const T* n, const Acc<T>* rstd, const T* dn, const T* d_res, T* dx, int64_t rows,
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
  const int64_t rows = RowsOf("RmsNormalize", x, rstd);
  CheckLike("RmsNormalize", "n", n, x);
  const int64_t d = x.dim(-1);
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Forward(x.data<T>(), eps, n.data<T>(), rstd.data<Acc<T>>(), rows, d);
  });
}

void RmsNormalizeBackward(const ExecContext&, const Tensor& n, const Tensor& rstd,
                          const Tensor& d_n, const Tensor& d_x) {
  const int64_t rows = RowsOf("RmsNormalizeBackward", n, rstd);
  CheckLike("RmsNormalizeBackward", "d_n", d_n, n);
  CheckLike("RmsNormalizeBackward", "d_x", d_x, n);
  const int64_t d = n.dim(-1);
  DispatchFloat(n, [&](auto zero) {
    using T = decltype(zero);
    Backward(n.data<T>(), rstd.data<Acc<T>>(), d_n.data<T>(), d_x.data<T>(), rows, d);
  });
}

void AddRmsNormalize(const ExecContext&, const Tensor& residual, const Tensor& x, double eps,
                     const Tensor& n, const Tensor& rstd) {
  const int64_t rows = RowsOf("AddRmsNormalize", x, rstd);
  CheckLike("AddRmsNormalize", "residual", residual, x);
  CheckLike("AddRmsNormalize", "n", n, x);
  CheckSameOrDisjoint("AddRmsNormalize", residual, x);
  CheckSameOrDisjoint("AddRmsNormalize", residual, n);
  CheckSameOrDisjoint("AddRmsNormalize", x, n);
  const int64_t d = x.dim(-1);
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    AddForward(residual.data<T>(), x.data<T>(), eps, n.data<T>(), rstd.data<Acc<T>>(), rows, d);
  });
}

void RmsNormalizeBackwardAdd(const ExecContext&, const Tensor& n, const Tensor& rstd,
                             const Tensor& d_n, const Tensor& d_res, const Tensor& d_x) {
  const int64_t rows = RowsOf("RmsNormalizeBackwardAdd", n, rstd);
  CheckLike("RmsNormalizeBackwardAdd", "d_n", d_n, n);
  CheckLike("RmsNormalizeBackwardAdd", "d_res", d_res, n);
  CheckLike("RmsNormalizeBackwardAdd", "d_x", d_x, n);
  for (const Tensor* in : {&n, &d_n, &d_res}) {
    CheckSameOrDisjoint("RmsNormalizeBackwardAdd", d_x, *in);
  }
  const int64_t d = n.dim(-1);
  DispatchFloat(n, [&](auto zero) {
    using T = decltype(zero);
    BackwardAdd(n.data<T>(), rstd.data<Acc<T>>(), d_n.data<T>(), d_res.data<T>(), d_x.data<T>(),
                rows, d);
  });
}

}  // namespace scalemoe::cpu
