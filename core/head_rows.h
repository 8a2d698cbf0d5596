// Head vectors whose tokens may be rows of a wider matrix: the layout that
// lets q, k and v be column slices of one q|k|v projection's output
// [tokens, (H + 2·KV)·D] (model/attention.cc, model.fuse_qkv) instead of
// three tensors of their own, and their gradients slices of one [tokens,
// (H + 2·KV)·D] input of the backward's two GEMMs.
//
// A tensor [..., H, D] (rank 3 or more; or [R, D], one head a row) holds
// row r = n·H + h (token n, head h) at element n·stride + h·D, the row's D
// elements contiguous, the token dims (all but the last two) contiguous in
// units of stride, stride >= H·D. A contiguous tensor is the case stride =
// H·D; a Narrow of dim -2 (the heads) of a contiguous [..., H', D] is the
// case stride = H'·D, as is a Narrow of dim 1 of a contiguous 2-D [R, W]
// (then H = 1 and stride = W).
//
// The ops that say so (Rope, RopeBackward, ScaledRmsNormalize(Rope) and
// their backwards, CopyHeads, CausalAttention and its backward) take such
// tensors; the rest ask for contiguous ones. (CUDA's ScaledRmsNormalize
// kernels take at most 2^31 - 1 rows of a token-strided tensor of several
// heads.)
#pragma once

#include <cstdint>
#include <optional>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe {

struct HeadRows {
  int64_t tokens = 0;  // product of the token dims
  int64_t heads = 1;   // H (1 for [R, D])
  int64_t dim = 0;     // D
  int64_t stride = 0;  // elements from one token's first head to the next's

  int64_t rows() const { return tokens * heads; }
  bool contiguous() const { return stride == heads * dim; }
  // Element offset of row r (= token·heads + head).
  int64_t offset(int64_t r) const { return r / heads * stride + r % heads * dim; }
};

// t's head-row layout, or nullopt when its strides are not one (a
// transposed view, a Narrow of D, ...). Rank 2 reads [R, D] as one head a
// row.
std::optional<HeadRows> HeadRowsOf(const Tensor& t);

// HeadRowsOf(t), SM_CHECK-failing with `op` and `what` in the message when t
// has no head-row layout.
HeadRows CheckHeadRows(const Tensor& t, const char* op, const char* what);

// For the paths of an op that take contiguous head vectors only (the
// attention's kernels other than the mma.sync ones): t itself when
// contiguous, else a contiguous copy (ops::CopyHeads; scratch from ctx).
Tensor ContiguousHeads(const ExecContext& ctx, const Tensor& t);
// For such a path's output t: t when contiguous, else an unwritten
// contiguous tensor like it, whose values CopyHeadsBack then moves into t.
Tensor ContiguousOutput(const ExecContext& ctx, const Tensor& t);
// ops::CopyHeads(from, to) unless from is to (ContiguousOutput's t).
void CopyHeadsBack(const ExecContext& ctx, const Tensor& from, const Tensor& to);

// run(q', k', v', d_q', d_k', d_v') on contiguous copies of q, k, v and
// contiguous stand-ins for d_q, d_k, d_v, whose values then go into them:
// the attention backward's path for kernels that take contiguous tensors.
template <typename Run>
void BackwardOnContiguousHeads(const ExecContext& ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& d_q, const Tensor& d_k,
                               const Tensor& d_v, Run&& run) {
  const Tensor dq = ContiguousOutput(ctx, d_q), dk = ContiguousOutput(ctx, d_k),
               dv = ContiguousOutput(ctx, d_v);
  run(ContiguousHeads(ctx, q), ContiguousHeads(ctx, k), ContiguousHeads(ctx, v), dq, dk, dv);
  CopyHeadsBack(ctx, dq, d_q);
  CopyHeadsBack(ctx, dk, d_k);
  CopyHeadsBack(ctx, dv, d_v);
}

}  // namespace scalemoe
