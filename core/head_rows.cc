#include "core/head_rows.h"

#include "core/ops.h"

namespace scalemoe {

std::optional<HeadRows> HeadRowsOf(const Tensor& t) {
  const int n = t.ndim();
  if (!t.defined() || n < 2) return std::nullopt;
  const Shape& shape = t.shape();
  const Shape& strides = t.strides();
  HeadRows r;
  r.dim = shape[n - 1];
  // A dim of size 1 may carry any stride (Narrow keeps the source's).
  if (strides[n - 1] != 1 && r.dim > 1) return std::nullopt;
  int first_token_dim;  // the innermost token dim
  if (n == 2) {
    r.heads = 1;
    first_token_dim = 0;
  } else {
    r.heads = shape[n - 2];
    if (strides[n - 2] != r.dim && r.heads > 1) return std::nullopt;
    first_token_dim = n - 3;
  }
  // The token dims, innermost first: the first of size > 1 sets the stride,
  // each further one of size > 1 must be the sizes inside it times that
  // apart (a dim of size 1 may carry any stride). One token: a contiguous
  // row of heads.
  r.stride = 0;
  r.tokens = 1;
  for (int i = first_token_dim; i >= 0; --i) {
    if (shape[i] > 1) {
      if (strides[i] <= 0) return std::nullopt;  // no broadcast rows
      if (r.stride == 0) {
        r.stride = strides[i];
      } else if (strides[i] != r.stride * r.tokens) {
        return std::nullopt;
      }
    }
    r.tokens *= shape[i];
  }
  if (r.stride == 0) r.stride = r.heads * r.dim;
  if (r.stride < r.heads * r.dim) return std::nullopt;
  return r;
}

HeadRows CheckHeadRows(const Tensor& t, const char* op, const char* what) {
  const std::optional<HeadRows> rows = HeadRowsOf(t);
  SM_CHECK_MSG(rows.has_value(), op, " ", what,
               " needs head rows [..., H, D] (contiguous, or its tokens rows of a wider matrix: "
               "core/head_rows.h), got ",
               t.DebugString(), " with strides ", ShapeString(t.strides()));
  return *rows;
}

Tensor ContiguousHeads(const ExecContext& ctx, const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor copy = ctx.Empty(t.shape(), t.dtype());
  ops::CopyHeads(ctx, t, copy);
  return copy;
}

Tensor ContiguousOutput(const ExecContext& ctx, const Tensor& t) {
  return t.is_contiguous() ? t : ctx.Empty(t.shape(), t.dtype());
}

void CopyHeadsBack(const ExecContext& ctx, const Tensor& from, const Tensor& to) {
  if (!from.SharesDataWith(to)) ops::CopyHeads(ctx, from, to);
}

}  // namespace scalemoe
