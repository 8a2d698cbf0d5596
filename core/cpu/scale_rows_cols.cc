// ScaleRowsCols and its backward on the CPU (f32/f64 reference; bf16
// computed in f32, its d_col sums kept in f32 until the one rounding store;
// the forward also takes f32 row/col vectors for bf16 x), and their group
// forms: one single-matrix call per group, in group order (so a d_col
// shared by all groups gets the single calls' bits).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/float_types.h"
#include "core/matrix_group_checks.h"

namespace scalemoe::cpu {
namespace {

using ops::VectorDTypeOk;
using ops::VectorDTypes;

struct Dims {
  int64_t b, r, c;
};

Dims CheckShapes(const char* op, const Tensor& x, const Tensor& row, const Tensor& col,
                 VectorDTypes allowed) {
  SM_CHECK_MSG(x.ndim() == 2 || x.ndim() == 3, op, " x ", x.DebugString());
  SM_CHECK_MSG(x.is_contiguous() && x.device() == Device::kCPU, op, " x ", x.DebugString());
  Dims d{x.ndim() == 3 ? x.dim(0) : 1, x.dim(-2), x.dim(-1)};
  const char* dtypes = allowed == VectorDTypes::kLikeX ? " (row and col take x's dtype)"
                                                       : " (row and col take x's dtype, or f32 "
                                                         "for bf16 x)";
  if (row.defined()) {
    SM_CHECK_MSG(row.numel() == d.b * d.r && row.is_contiguous() && row.device() == Device::kCPU,
                 op, " row ", row.DebugString(), " for x ", x.DebugString());
    SM_CHECK_MSG(VectorDTypeOk(row, x, allowed), op, " row ", row.DebugString(), " for x ",
                 x.DebugString(), dtypes);
  }
  if (col.defined()) {
    SM_CHECK_MSG(col.numel() == d.b * d.c && col.is_contiguous() && col.device() == Device::kCPU,
                 op, " col ", col.DebugString(), " for x ", x.DebugString());
    SM_CHECK_MSG(VectorDTypeOk(col, x, allowed), op, " col ", col.DebugString(), " for x ",
                 x.DebugString(), dtypes);
  }
  return d;
}

// v's elements as f32: v's own when it is f32, null when it is undefined,
// else widened into `copy` (exact for bf16).
const float* AsF32(const Tensor& v, std::vector<float>& copy) {
  if (!v.defined()) return nullptr;
  if (v.dtype() == DType::kF32) return v.data<float>();
  const bf16* p = v.data<bf16>();
  copy.resize(static_cast<size_t>(v.numel()));
  for (size_t i = 0; i < copy.size(); ++i) copy[i] = static_cast<float>(p[i]);
  return copy.data();
}

template <typename T>
T* OrNull(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// O is T, or bf16 for f32 T (the group op's folded bf16 operand: computed
// in f32, rounded once on store). V, row's and col's type, is T, or f32 for
// bf16 T (the same f32 products, rounded once on store). out may be x.
template <typename T, typename O = T, typename V = T>
void Forward(Dims d, const T* x, const V* row, const V* col, O* out) {
  using A = Acc<T>;
  for (int64_t b = 0; b < d.b; ++b) {
    for (int64_t i = 0; i < d.r; ++i) {
      const A ri = row ? static_cast<A>(row[b * d.r + i]) : A(1);
      const T* xr = x + (b * d.r + i) * d.c;
      O* orow = out + (b * d.r + i) * d.c;
      const V* cb = col ? col + b * d.c : nullptr;
      if (cb) {
        for (int64_t j = 0; j < d.c; ++j) {
          orow[j] = O(ri * static_cast<A>(xr[j]) * static_cast<A>(cb[j]));
        }
      } else {
        for (int64_t j = 0; j < d.c; ++j) orow[j] = O(ri * static_cast<A>(xr[j]));
      }
    }
  }
}

template <typename T>
void Backward(Dims d, const T* x, const T* row, const T* col, const T* dout, T* dx, T* drow,
              T* dcol) {
  using A = Acc<T>;
  // d_col's sums run in A: in place for f32/f64, in an f32 copy for bf16.
  std::vector<A> dcol_copy;
  A* dc = nullptr;
  if (dcol) {
    if constexpr (std::is_same_v<A, T>) {
      dc = dcol;
    } else {
      dcol_copy.resize(static_cast<size_t>(d.b * d.c));
      for (size_t j = 0; j < dcol_copy.size(); ++j) dcol_copy[j] = static_cast<A>(dcol[j]);
      dc = dcol_copy.data();
    }
  }
  for (int64_t b = 0; b < d.b; ++b) {
    const T* cb = col ? col + b * d.c : nullptr;
    for (int64_t i = 0; i < d.r; ++i) {
      const A ri = row ? static_cast<A>(row[b * d.r + i]) : A(1);
      const int64_t base = (b * d.r + i) * d.c;
      A acc_row = 0;
      for (int64_t j = 0; j < d.c; ++j) {
        const A cj = cb ? static_cast<A>(cb[j]) : A(1);
        const A g = static_cast<A>(dout[base + j]);
        if (dx) dx[base + j] = T(g * ri * cj);
        if (drow) acc_row += g * static_cast<A>(x[base + j]) * cj;
        if (dc) dc[b * d.c + j] += g * static_cast<A>(x[base + j]) * ri;
      }
      if (drow) drow[b * d.r + i] = T(static_cast<A>(drow[b * d.r + i]) + acc_row);
    }
  }
  if constexpr (!std::is_same_v<A, T>) {
    for (size_t j = 0; j < dcol_copy.size(); ++j) dcol[j] = T(dcol_copy[j]);
  }
}

}  // namespace

void ScaleRowsCols(const ExecContext&, const Tensor& x, const Tensor& row, const Tensor& col,
                   const Tensor& out) {
  const Dims d = CheckShapes("ScaleRowsCols", x, row, col, VectorDTypes::kLikeXOrF32);
  SM_CHECK_MSG(out.numel() == x.numel() && out.dtype() == x.dtype() && out.is_contiguous() &&
                   out.device() == Device::kCPU,
               "ScaleRowsCols out ", out.DebugString(), " for x ", x.DebugString());
  const bool f32_vectors =
      (row.defined() && row.dtype() != x.dtype()) || (col.defined() && col.dtype() != x.dtype());
  if (f32_vectors) {  // bf16 x (CheckShapes): a bf16 vector beside an f32 one is widened
    std::vector<float> row_copy, col_copy;
    Forward<bf16, bf16, float>(d, x.data<bf16>(), AsF32(row, row_copy), AsF32(col, col_copy),
                               out.data<bf16>());
    return;
  }
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Forward(d, x.data<T>(), OrNull<T>(row), OrNull<T>(col), out.data<T>());
  });
}

void ScaleRowsColsBackward(const ExecContext&, const Tensor& x, const Tensor& row,
                           const Tensor& col, const Tensor& d_out, const Tensor& d_x,
                           const Tensor& d_row, const Tensor& d_col) {
  const Dims d = CheckShapes("ScaleRowsColsBackward", x, row, col, VectorDTypes::kLikeX);
  SM_CHECK_MSG(d_out.numel() == x.numel() && d_out.dtype() == x.dtype(), "d_out ",
               d_out.DebugString());
  if (d_x.defined()) SM_CHECK(d_x.numel() == x.numel() && d_x.dtype() == x.dtype());
  if (d_row.defined()) SM_CHECK(d_row.numel() == d.b * d.r && d_row.dtype() == x.dtype());
  if (d_col.defined()) SM_CHECK(d_col.numel() == d.b * d.c && d_col.dtype() == x.dtype());
  DispatchFloat(x, [&](auto zero) {
    using T = decltype(zero);
    Backward(d, x.data<T>(), OrNull<T>(row), OrNull<T>(col), d_out.data<T>(), OrNull<T>(d_x),
             OrNull<T>(d_row), OrNull<T>(d_col));
  });
}

namespace {

template <typename T>
T* At(const MatrixGroup& g, int64_t i) {
  return g.size() == 0 ? nullptr : g.matrices[i].data<T>();
}

}  // namespace

void ScaleRowsColsGroup(const ExecContext&, const MatrixGroup& x, const MatrixGroup& row,
                        const MatrixGroup& col, const MatrixGroup& out) {
  ops::CheckScaleRowsColsGroup(x, row, col, out, Device::kCPU);
  const int64_t n = x.size(), r = x.rows, c = x.cols;
  const bool rounded = x.dtype == DType::kF32 && out.dtype == DType::kBF16;
  if (n == 0) return;
  const Dims d{1, r, c};
  DispatchFloat(x.matrices[0], [&](auto zero) {
    using T = decltype(zero);
    for (int64_t g = 0; g < n; ++g) {
      const T* xs = At<T>(x, g);
      if constexpr (std::is_same_v<T, float>) {
        if (rounded) {
          Forward<T, bf16>(d, xs, At<T>(row, g), At<T>(col, g), At<bf16>(out, g));
          continue;
        }
      }
      Forward(d, xs, At<T>(row, g), At<T>(col, g), At<T>(out, g));
    }
  });
}

void ScaleRowsColsBackwardGroup(const ExecContext&, const MatrixGroup& x, const MatrixGroup& row,
                                const MatrixGroup& col, const MatrixGroup& d_out,
                                const MatrixGroup& d_x, const MatrixGroup& d_row,
                                const MatrixGroup& d_col) {
  // A d_col shared by every group takes their sums in group order, as the
  // single calls in that order would (the loop below).
  ops::CheckScaleRowsColsBackwardGroup(x, row, col, d_out, d_x, d_row, d_col, Device::kCPU);
  const int64_t n = x.size(), r = x.rows, c = x.cols;
  if (n == 0) return;
  const Dims d{1, r, c};
  DispatchFloat(x.matrices[0], [&](auto zero) {
    using T = decltype(zero);
    for (int64_t g = 0; g < n; ++g) {
      Backward(d, At<T>(x, g), At<T>(row, g), At<T>(col, g), At<T>(d_out, g), At<T>(d_x, g),
               At<T>(d_row, g), At<T>(d_col, g));
    }
  });
}

}  // namespace scalemoe::cpu
