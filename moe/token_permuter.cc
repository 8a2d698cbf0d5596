#include "moe/token_permuter.h"

#include "core/ops.h"

namespace scalemoe {

void TokenPermuter::Plan(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept) {
  perm_slot_ = Tensor::Empty({expert_ids.numel()}, DType::kI32, ctx.device());
  Tensor counts = Tensor::Empty({num_experts_}, DType::kI64, ctx.device());
  ops::SortByExpert(ctx, expert_ids, kept, num_experts_, perm_slot_, counts);
  counts_.assign(counts.data<int64_t>(), counts.data<int64_t>() + num_experts_);
}

Tensor TokenPermuter::RowWeights(const ExecContext& ctx, const Tensor& weights) const {
  Tensor w = Tensor::Empty({rows(), 1}, weights.dtype(), ctx.device());
  ops::GatherRows(ctx, weights.View({rows(), 1}), perm_slot_, 1, w);
  return w.View({rows()});
}

void TokenPermuter::Permute(const ExecContext& ctx, const Tensor& n,
                            const Tensor& permuted) const {
  ops::GatherRows(ctx, n, perm_slot_, top_k_, permuted);
}

void TokenPermuter::Unpermute(const ExecContext& ctx, const Tensor& y, const Tensor& weights,
                              const Tensor& out) const {
  ops::ScatterAddRows(ctx, y, perm_slot_, top_k_, RowWeights(ctx, weights), out);
}

void TokenPermuter::UnpermuteBackward(const ExecContext& ctx, const Tensor& d_out,
                                      const Tensor& y, const Tensor& weights,
                                      const Tensor& d_y, const Tensor& d_weights) const {
  // d_y[i] = w_i · d_out[token_i]
  ops::GatherRows(ctx, d_out, perm_slot_, top_k_, d_y);
  ops::ScaleRowsCols(ctx, d_y, RowWeights(ctx, weights), Tensor(), d_y);
  // d_w[slot_i] = <d_out[token_i], y[i]>
  Tensor d_row_w = Tensor::Empty({rows(), 1}, y.dtype(), ctx.device());
  ops::GatheredRowDot(ctx, d_out, perm_slot_, top_k_, y, d_row_w);
  ops::Zero(ctx, d_weights);
  ops::ScatterAddRows(ctx, d_row_w, perm_slot_, 1, Tensor(), d_weights.View({rows(), 1}));
}

void TokenPermuter::PermuteBackward(const ExecContext& ctx, const Tensor& d_permuted,
                                    const Tensor& d_n) const {
  ops::ScatterAddRows(ctx, d_permuted, perm_slot_, top_k_, Tensor(), d_n);
}

}  // namespace scalemoe
