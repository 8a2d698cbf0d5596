// ScaleRowsCols and its backward on the CPU (f32/f64 reference).
#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

struct Dims {
  int64_t b, r, c;
};

Dims CheckShapes(const Tensor& x, const Tensor& row, const Tensor& col) {
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, "ScaleRowsCols x ", x.DebugString());
  SM_CHECK_MSG(x.is_contiguous() && x.device() == Device::kCPU, "ScaleRowsCols x ",
               x.DebugString());
  Dims d{x.ndim() == 3 ? x.dim(0) : 1, x.dim(-2), x.dim(-1)};
  if (row.defined()) {
    SM_CHECK_MSG(row.numel() == d.b * d.r && row.dtype() == x.dtype() && row.is_contiguous(),
                 "ScaleRowsCols row ", row.DebugString(), " for x ", x.DebugString());
  }
  if (col.defined()) {
    SM_CHECK_MSG(col.numel() == d.b * d.c && col.dtype() == x.dtype() && col.is_contiguous(),
                 "ScaleRowsCols col ", col.DebugString(), " for x ", x.DebugString());
  }
  return d;
}

template <typename T>
const T* OrNull(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

template <typename T>
void Forward(Dims d, const T* x, const T* row, const T* col, T* out) {
  for (int64_t b = 0; b < d.b; ++b) {
    for (int64_t i = 0; i < d.r; ++i) {
      const T ri = row ? row[b * d.r + i] : T(1);
      const T* xr = x + (b * d.r + i) * d.c;
      T* orow = out + (b * d.r + i) * d.c;
      const T* cb = col ? col + b * d.c : nullptr;
      if (cb) {
        for (int64_t j = 0; j < d.c; ++j) orow[j] = ri * xr[j] * cb[j];
      } else {
        for (int64_t j = 0; j < d.c; ++j) orow[j] = ri * xr[j];
      }
    }
  }
}

template <typename T>
void Backward(Dims d, const T* x, const T* row, const T* col, const T* dout, T* dx, T* drow,
              T* dcol) {
  for (int64_t b = 0; b < d.b; ++b) {
    const T* cb = col ? col + b * d.c : nullptr;
    for (int64_t i = 0; i < d.r; ++i) {
      const T ri = row ? row[b * d.r + i] : T(1);
      const int64_t base = (b * d.r + i) * d.c;
      T acc_row = 0;
      for (int64_t j = 0; j < d.c; ++j) {
        const T cj = cb ? cb[j] : T(1);
        const T g = dout[base + j];
        if (dx) dx[base + j] = g * ri * cj;
        if (drow) acc_row += g * x[base + j] * cj;
        if (dcol) dcol[b * d.c + j] += g * x[base + j] * ri;
      }
      if (drow) drow[b * d.r + i] += acc_row;
    }
  }
}

}  // namespace

void ScaleRowsCols(const ExecContext&, const Tensor& x, const Tensor& row, const Tensor& col,
                   const Tensor& out) {
  const Dims d = CheckShapes(x, row, col);
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype() && out.is_contiguous(),
               "ScaleRowsCols out ", out.DebugString());
  if (x.dtype() == DType::kF64) {
    Forward(d, x.data<double>(), OrNull<double>(row), OrNull<double>(col), out.data<double>());
  } else {
    Forward(d, x.data<float>(), OrNull<float>(row), OrNull<float>(col), out.data<float>());
  }
}

void ScaleRowsColsBackward(const ExecContext&, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col) {
  const Dims d = CheckShapes(x, row, col);
  SM_CHECK_MSG(d_out.numel() == x.numel() && d_out.dtype() == x.dtype(), "d_out ",
               d_out.DebugString());
  if (d_x.defined()) SM_CHECK(d_x.numel() == x.numel() && d_x.dtype() == x.dtype());
  if (d_row.defined()) SM_CHECK(d_row.numel() == d.b * d.r && d_row.dtype() == x.dtype());
  if (d_col.defined()) SM_CHECK(d_col.numel() == d.b * d.c && d_col.dtype() == x.dtype());
  if (x.dtype() == DType::kF64) {
    using T = double;
    Backward(d, x.data<T>(), OrNull<T>(row), OrNull<T>(col), d_out.data<T>(),
             d_x.defined() ? d_x.data<T>() : nullptr, d_row.defined() ? d_row.data<T>() : nullptr,
             d_col.defined() ? d_col.data<T>() : nullptr);
  } else {
    using T = float;
    Backward(d, x.data<T>(), OrNull<T>(row), OrNull<T>(col), d_out.data<T>(),
             d_x.defined() ? d_x.data<T>() : nullptr, d_row.defined() ? d_row.data<T>() : nullptr,
             d_col.defined() ? d_col.data<T>() : nullptr);
  }
}

}  // namespace scalemoe::cpu
