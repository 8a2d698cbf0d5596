#include "moe/token_permuter.h"

#include "core/ops.h"

namespace scalemoe {

void TokenPermuter::Plan(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept,
                         const Tensor& counts) {
  perm_slot_ = ctx.Empty({expert_ids.numel()}, DType::kI32);
  slot_row_ = ctx.Empty(expert_ids.shape(), DType::kI32);
  ops::SortByExpert(ctx, expert_ids, kept, num_experts_, perm_slot_, counts);
  ops::InvertRowIndex(ctx, perm_slot_, slot_row_);
}

void TokenPermuter::Permute(const ExecContext& ctx, const Tensor& n,
                            const Tensor& permuted) const {
  ops::GatherRows(ctx, n, perm_slot_, top_k_, permuted);
}

void TokenPermuter::Unpermute(const ExecContext& ctx, const Tensor& y, const Tensor& weights,
                              const Tensor& out) const {
  ops::CombineSlots(ctx, y, slot_row_, weights, out);
}

void TokenPermuter::UnpermuteBackward(const ExecContext& ctx, const Tensor& d_out,
                                      const Tensor& y, const Tensor& weights,
                                      const Tensor& d_y, const Tensor& d_weights) const {
  // d_y[i] = w_i · d_out[token_i]
  ops::GatherScaledRows(ctx, d_out, perm_slot_, top_k_, weights.View({rows()}), d_y);
  // d_w[t, j] = <d_out[t], y[row of (t, j)]>
  ops::SlotRowDot(ctx, d_out, slot_row_, y, d_weights);
}

void TokenPermuter::PermuteBackward(const ExecContext& ctx, const Tensor& d_permuted,
                                    const Tensor& d_n) const {
  ops::CombineSlots(ctx, d_permuted, slot_row_, Tensor(), d_n);
}

}  // namespace scalemoe
