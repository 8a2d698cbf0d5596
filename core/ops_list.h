// The op set as one X-macro list, for the backends' declarations
// (core/cpu/cpu_ops.h, core/cuda/cuda_ops.h) and the dispatcher
// (core/ops_dispatch.cc). core/ops.h holds the documented declarations of
// the same functions; a mismatch with this list fails the build (the
// dispatcher defines ops::X from it).
//
// SM_OPS(X) calls X(ReturnType, Name, (parameters), (arguments), Cuda) for
// every op; Cuda is CUDA when core/cuda implements the op, NO_CUDA while it
// does not (a CUDA context then fails the op with a Status naming it).
#pragma once

#include "core/context.h"
#include "core/tensor.h"

// clang-format off
#define SM_OPS(X) \
  X(void, Gemm, (const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c, const ::scalemoe::ops::GemmOptions& options), (ctx, a, b, c, options), CUDA) \
  X(void, GroupedGemm, (const ExecContext& ctx, const Tensor& a, const ::scalemoe::ops::MatrixGroup& b, const Tensor& offsets, const Tensor& c, const ::scalemoe::ops::GroupedGemmOptions& options), (ctx, a, b, offsets, c, options), CUDA) \
  X(void, GroupedGemmWeightGrad, (const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& offsets, const ::scalemoe::ops::MatrixGroup& c, double beta), (ctx, a, b, offsets, c, beta), CUDA) \
  X(void, GroupedGemmGathered, (const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor, const ::scalemoe::ops::MatrixGroup& b, const Tensor& offsets, const Tensor& c, const ::scalemoe::ops::GroupedGemmOptions& options), (ctx, x, rows, divisor, b, offsets, c, options), CUDA) \
  X(void, GroupedGemmWeightGradGathered, (const ExecContext& ctx, const Tensor& a, const Tensor& x, const Tensor& rows, int divisor, const Tensor& offsets, const ::scalemoe::ops::MatrixGroup& c, double beta), (ctx, a, x, rows, divisor, offsets, c, beta), CUDA) \
  X(void, GroupedGemmSwiGlu, (const ExecContext& ctx, const Tensor& x, const Tensor& rows, int divisor, const ::scalemoe::ops::MatrixGroup& b, const Tensor& offsets, const Tensor& gate_up, const Tensor& h), (ctx, x, rows, divisor, b, offsets, gate_up, h), CUDA) \
  X(void, GroupedGemmSwiGluBackward, (const ExecContext& ctx, const Tensor& d_y, const ::scalemoe::ops::MatrixGroup& b, const Tensor& offsets, const Tensor& gate_up, const Tensor& d_gate_up), (ctx, d_y, b, offsets, gate_up, d_gate_up), CUDA) \
  X(void, Copy, (const ExecContext& ctx, const Tensor& x, const Tensor& y), (ctx, x, y), CUDA) \
  X(void, CopyHeads, (const ExecContext& ctx, const Tensor& x, const Tensor& y), (ctx, x, y), CUDA) \
  X(void, Axpy, (const ExecContext& ctx, double alpha, const Tensor& x, const Tensor& y), (ctx, alpha, x, y), CUDA) \
  X(void, Scale, (const ExecContext& ctx, double alpha, const Tensor& x), (ctx, alpha, x), CUDA) \
  X(void, Zero, (const ExecContext& ctx, const Tensor& x), (ctx, x), CUDA) \
  X(void, Sum, (const ExecContext& ctx, const Tensor& x, const Tensor& out), (ctx, x, out), CUDA) \
  X(void, SplitBf16, (const ExecContext& ctx, const Tensor& x, int64_t reps, const Tensor& out), (ctx, x, reps, out), CUDA) \
  X(void, AddParts, (const ExecContext& ctx, const Tensor& x, double beta, const Tensor& out), (ctx, x, beta, out), CUDA) \
  X(void, ScaleRowsCols, (const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col, const Tensor& out), (ctx, x, row, col, out), CUDA) \
  X(void, ScaleRowsColsBackward, (const ExecContext& ctx, const Tensor& x, const Tensor& row, const Tensor& col, const Tensor& d_out, const Tensor& d_x, const Tensor& d_row, const Tensor& d_col), (ctx, x, row, col, d_out, d_x, d_row, d_col), CUDA) \
  X(void, ScaleRowsColsGroup, (const ExecContext& ctx, const ::scalemoe::ops::MatrixGroup& x, const ::scalemoe::ops::MatrixGroup& row, const ::scalemoe::ops::MatrixGroup& col, const ::scalemoe::ops::MatrixGroup& out), (ctx, x, row, col, out), CUDA) \
  X(void, ScaleRowsColsBackwardGroup, (const ExecContext& ctx, const ::scalemoe::ops::MatrixGroup& x, const ::scalemoe::ops::MatrixGroup& row, const ::scalemoe::ops::MatrixGroup& col, const ::scalemoe::ops::MatrixGroup& d_out, const ::scalemoe::ops::MatrixGroup& d_x, const ::scalemoe::ops::MatrixGroup& d_row, const ::scalemoe::ops::MatrixGroup& d_col), (ctx, x, row, col, d_out, d_x, d_row, d_col), CUDA) \
  X(void, SwiGlu, (const ExecContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& h), (ctx, gate, up, h), CUDA) \
  X(void, SwiGluBackward, (const ExecContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& d_h, const Tensor& d_gate, const Tensor& d_up), (ctx, gate, up, d_h, d_gate, d_up), CUDA) \
  X(void, SwiGluPacked, (const ExecContext& ctx, const Tensor& gate_up, const Tensor& h), (ctx, gate_up, h), CUDA) \
  X(void, SwiGluPackedBackward, (const ExecContext& ctx, const Tensor& gate_up, const Tensor& d_h, const Tensor& d_gate_up), (ctx, gate_up, d_h, d_gate_up), CUDA) \
  X(void, RmsNormalize, (const ExecContext& ctx, const Tensor& x, double eps, const Tensor& n, const Tensor& rstd), (ctx, x, eps, n, rstd), CUDA) \
  X(void, RmsNormalizeBackward, (const ExecContext& ctx, const Tensor& n, const Tensor& rstd, const Tensor& d_n, const Tensor& d_x), (ctx, n, rstd, d_n, d_x), CUDA) \
  X(void, ScaledRmsNormalize, (const ExecContext& ctx, const Tensor& x, const Tensor& gamma, double eps, const Tensor& y, const Tensor& rstd), (ctx, x, gamma, eps, y, rstd), CUDA) \
  X(void, ScaledRmsNormalizeBackward, (const ExecContext& ctx, const Tensor& x, const Tensor& rstd, const Tensor& gamma, const Tensor& d_y, const Tensor& d_x, const Tensor& d_gamma), (ctx, x, rstd, gamma, d_y, d_x, d_gamma), CUDA) \
  X(void, ScaledRmsNormalizeRope, (const ExecContext& ctx, const Tensor& x, const Tensor& gamma, double eps, const Tensor& rope_table, const Tensor& y, const Tensor& rstd), (ctx, x, gamma, eps, rope_table, y, rstd), CUDA) \
  X(void, ScaledRmsNormalizeRopeBackward, (const ExecContext& ctx, const Tensor& x, const Tensor& rstd, const Tensor& gamma, const Tensor& rope_table, const Tensor& d_y, const Tensor& d_x, const Tensor& d_gamma), (ctx, x, rstd, gamma, rope_table, d_y, d_x, d_gamma), CUDA) \
  X(void, AddRmsNormalize, (const ExecContext& ctx, const Tensor& residual, const Tensor& x, double eps, const Tensor& n, const Tensor& rstd), (ctx, residual, x, eps, n, rstd), CUDA) \
  X(void, RmsNormalizeBackwardAdd, (const ExecContext& ctx, const Tensor& n, const Tensor& rstd, const Tensor& d_n, const Tensor& d_res, const Tensor& d_x), (ctx, n, rstd, d_n, d_res, d_x), CUDA) \
  X(void, Rope, (const ExecContext& ctx, const Tensor& x, double theta, const Tensor& out, const Tensor& table), (ctx, x, theta, out, table), CUDA) \
  X(void, RopeBackward, (const ExecContext& ctx, const Tensor& d_out, double theta, const Tensor& d_x, const Tensor& table), (ctx, d_out, theta, d_x, table), CUDA) \
  X(void, RopeTable, (const ExecContext& ctx, double theta, const Tensor& table), (ctx, theta, table), CUDA) \
  X(void, CausalAttention, (const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const ::scalemoe::ops::AttentionOptions& options), (ctx, q, k, v, out, lse, options), CUDA) \
  X(void, CausalAttentionBackward, (const ExecContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& d_out, const Tensor& d_q, const Tensor& d_k, const Tensor& d_v, const ::scalemoe::ops::AttentionOptions& options), (ctx, q, k, v, out, lse, d_out, d_q, d_k, d_v, options), CUDA) \
  X(void, EmbeddingLookup, (const ExecContext& ctx, const Tensor& tokens, const Tensor& weight, const Tensor& out), (ctx, tokens, weight, out), CUDA) \
  X(void, EmbeddingBackward, (const ExecContext& ctx, const Tensor& tokens, const Tensor& d_out, const Tensor& d_weight), (ctx, tokens, d_out, d_weight), CUDA) \
  X(void, CrossEntropy, (const ExecContext& ctx, const Tensor& logits, const Tensor& targets, const Tensor& d_logits, const Tensor& loss), (ctx, logits, targets, d_logits, loss), CUDA) \
  X(void, RouterScores, (const ExecContext& ctx, ::scalemoe::ops::ScoreFunction fn, const Tensor& logits, const Tensor& scores), (ctx, fn, logits, scores), CUDA) \
  X(void, RouterScoresBackward, (const ExecContext& ctx, ::scalemoe::ops::ScoreFunction fn, const Tensor& scores, const Tensor& d_scores, const Tensor& d_logits), (ctx, fn, scores, d_scores, d_logits), CUDA) \
  X(void, TopKRouting, (const ExecContext& ctx, const Tensor& scores, const Tensor& bias, int k, bool normalize, const Tensor& expert_ids, const Tensor& weights), (ctx, scores, bias, k, normalize, expert_ids, weights), CUDA) \
  X(void, TopKRoutingBackward, (const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids, bool normalize, const Tensor& d_weights, const Tensor& d_scores), (ctx, scores, expert_ids, normalize, d_weights, d_scores), CUDA) \
  X(void, TopKWeightsAt, (const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids, bool normalize, const Tensor& weights), (ctx, scores, expert_ids, normalize, weights), CUDA) \
  X(void, CapacityDrop, (const ExecContext& ctx, const Tensor& expert_ids, const Tensor& priority, int num_experts, int64_t capacity, const Tensor& kept), (ctx, expert_ids, priority, num_experts, capacity, kept), CUDA) \
  X(void, LoadBalancingLoss, (const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids, double coeff, const Tensor& loss), (ctx, scores, expert_ids, coeff, loss), CUDA) \
  X(void, LoadBalancingLossBackward, (const ExecContext& ctx, const Tensor& expert_ids, double coeff, double scale, const Tensor& d_scores), (ctx, expert_ids, coeff, scale, d_scores), CUDA) \
  X(void, ZLoss, (const ExecContext& ctx, const Tensor& logits, double coeff, const Tensor& loss), (ctx, logits, coeff, loss), CUDA) \
  X(void, ZLossBackward, (const ExecContext& ctx, const Tensor& logits, double coeff, double scale, const Tensor& d_logits), (ctx, logits, coeff, scale, d_logits), CUDA) \
  X(void, AssignmentCounts, (const ExecContext& ctx, const Tensor& expert_ids, const Tensor& counts), (ctx, expert_ids, counts), CUDA) \
  X(void, LoadBalancingLossShare, (const ExecContext& ctx, const Tensor& scores, const Tensor& fractions, int64_t total_tokens, double coeff, const Tensor& loss), (ctx, scores, fractions, total_tokens, coeff, loss), CUDA) \
  X(void, LoadBalancingLossShareBackward, (const ExecContext& ctx, const Tensor& fractions, int64_t total_tokens, double coeff, double scale, const Tensor& d_scores), (ctx, fractions, total_tokens, coeff, scale, d_scores), CUDA) \
  X(void, ZLossShare, (const ExecContext& ctx, const Tensor& logits, int64_t total_tokens, double coeff, const Tensor& loss), (ctx, logits, total_tokens, coeff, loss), CUDA) \
  X(void, ZLossShareBackward, (const ExecContext& ctx, const Tensor& logits, int64_t total_tokens, double coeff, double scale, const Tensor& d_logits), (ctx, logits, total_tokens, coeff, scale, d_logits), CUDA) \
  X(void, SortByExpert, (const ExecContext& ctx, const Tensor& expert_ids, const Tensor& kept, int num_experts, const Tensor& perm_slot, const Tensor& counts), (ctx, expert_ids, kept, num_experts, perm_slot, counts), CUDA) \
  X(void, GatherRows, (const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor, const Tensor& out), (ctx, x, indices, divisor, out), CUDA) \
  X(void, GatherScaledRows, (const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor, const Tensor& weights, const Tensor& out), (ctx, x, indices, divisor, weights, out), CUDA) \
  X(void, ScatterAddRows, (const ExecContext& ctx, const Tensor& y, const Tensor& indices, int divisor, const Tensor& weights, const Tensor& out), (ctx, y, indices, divisor, weights, out), CUDA) \
  X(void, GatheredRowDot, (const ExecContext& ctx, const Tensor& x, const Tensor& indices, int divisor, const Tensor& y, const Tensor& out), (ctx, x, indices, divisor, y, out), CUDA) \
  X(void, Dot, (const ExecContext& ctx, const Tensor& x, const Tensor& y, const Tensor& out), (ctx, x, y, out), CUDA) \
  X(void, MagnitudeDirection, (const ExecContext& ctx, const Tensor& alpha, const Tensor& beta, const Tensor& norm_sq, int64_t dim, const Tensor& gamma), (ctx, alpha, beta, norm_sq, dim, gamma), CUDA) \
  X(void, MagnitudeDirectionBackward, (const ExecContext& ctx, const Tensor& alpha, const Tensor& beta, const Tensor& dots, int64_t dim, const Tensor& d_gamma, const Tensor& d_alpha, const Tensor& d_beta), (ctx, alpha, beta, dots, dim, d_gamma, d_alpha, d_beta), CUDA) \
  X(void, MagnitudeDirectionGroup, (const ExecContext& ctx, const ::scalemoe::ops::MatrixGroup& alpha, const ::scalemoe::ops::MatrixGroup& beta, const ::scalemoe::ops::MatrixGroup& gamma), (ctx, alpha, beta, gamma), CUDA) \
  X(void, MagnitudeDirectionBackwardGroup, (const ExecContext& ctx, const ::scalemoe::ops::MatrixGroup& alpha, const ::scalemoe::ops::MatrixGroup& beta, const ::scalemoe::ops::MatrixGroup& d_gamma, const ::scalemoe::ops::MatrixGroup& d_alpha, const ::scalemoe::ops::MatrixGroup& d_beta), (ctx, alpha, beta, d_gamma, d_alpha, d_beta), CUDA) \
  X(void, CopySegments, (const ExecContext& ctx, const Tensor& src, const Tensor& dst, const Tensor& segments), (ctx, src, dst, segments), CUDA) \
  X(void, SegmentSumOfSquares, (const ExecContext& ctx, const Tensor& x, const Tensor& segments, const Tensor& sums), (ctx, x, segments, sums), CUDA) \
  X(void, GradNormControl, (const ExecContext& ctx, const Tensor& sum_of_squares, double max_norm, const Tensor& grad_norm, const ::scalemoe::ops::StepControl& control), (ctx, sum_of_squares, max_norm, grad_norm, control), CUDA) \
  X(void, AdamWUpdate, (const ExecContext& ctx, const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq, const Tensor& segments, const Tensor& coefficients, const ::scalemoe::ops::AdamWUpdateOptions& options, const ::scalemoe::ops::StepControl& control), (ctx, params, grads, exp_avg, exp_avg_sq, segments, coefficients, options, control), CUDA) \
  X(void, MuonMomentum, (const ExecContext& ctx, const Tensor& grads, const Tensor& momentum, const Tensor& update, const Tensor& segments, const ::scalemoe::ops::MuonMomentumOptions& options, const ::scalemoe::ops::StepControl& control), (ctx, grads, momentum, update, segments, options, control), CUDA) \
  X(void, FrobeniusNormalize, (const ExecContext& ctx, const Tensor& x, double eps), (ctx, x, eps), CUDA) \
  X(void, MuonApply, (const ExecContext& ctx, const Tensor& params, const Tensor& ortho, const Tensor& segments, const Tensor& coefficients, double lr, const ::scalemoe::ops::StepControl& control), (ctx, params, ortho, segments, coefficients, lr, control), CUDA) \
  X(void, TrackNonFinite, (const ExecContext& ctx, const Tensor& nonfinite, const Tensor& loss, int64_t step, const Tensor& tracker), (ctx, nonfinite, loss, step, tracker), CUDA) \
  X(void, SelectedScores, (const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids, const Tensor& out), (ctx, scores, expert_ids, out), CUDA) \
  X(void, AccumulateExpertLoads, (const ExecContext& ctx, const Tensor& counts, int64_t assignments, const Tensor& step), (ctx, counts, assignments, step), CUDA) \
  X(void, ExpertBiasUpdate, (const ExecContext& ctx, const Tensor& loads, double rate, const Tensor& skip, const Tensor& bias), (ctx, loads, rate, skip, bias), CUDA) \
  X(void, InvertRowIndex, (const ExecContext& ctx, const Tensor& row_slot, const Tensor& slot_row), (ctx, row_slot, slot_row), CUDA) \
  X(void, TiledRowIndex, (const ExecContext& ctx, int copies, const Tensor& gather, const Tensor& slot_row), (ctx, copies, gather, slot_row), CUDA) \
  X(void, SourceToExpertOrder, (const ExecContext& ctx, const Tensor& counts, int64_t source_stride, const Tensor& to_expert_order, const Tensor& to_source_order), (ctx, counts, source_stride, to_expert_order, to_source_order), CUDA) \
  X(void, SumSourceCounts, (const ExecContext& ctx, const Tensor& counts, const Tensor& totals), (ctx, counts, totals), CUDA) \
  X(void, CountOffsets, (const ExecContext& ctx, const Tensor& counts, const Tensor& offsets), (ctx, counts, offsets), CUDA) \
  X(void, CombineSlots, (const ExecContext& ctx, const Tensor& rows, const Tensor& slot_row, const Tensor& weights, const Tensor& out), (ctx, rows, slot_row, weights, out), CUDA) \
  X(void, SlotRowDot, (const ExecContext& ctx, const Tensor& x, const Tensor& slot_row, const Tensor& rows, const Tensor& out), (ctx, x, slot_row, rows, out), CUDA) \
  X(void, VocabRowMax, (const ExecContext& ctx, const Tensor& logits, const Tensor& row_max), (ctx, logits, row_max), CUDA) \
  X(void, VocabSoftmaxStats, (const ExecContext& ctx, const Tensor& logits, const Tensor& targets, int64_t vocab_start, const Tensor& row_max, const Tensor& stats), (ctx, logits, targets, vocab_start, row_max, stats), CUDA) \
  X(void, VocabCrossEntropyLoss, (const ExecContext& ctx, const Tensor& row_max, const Tensor& stats, const Tensor& loss), (ctx, row_max, stats, loss), CUDA) \
  X(void, VocabCrossEntropyBackward, (const ExecContext& ctx, const Tensor& logits, const Tensor& targets, int64_t vocab_start, const Tensor& row_max, const Tensor& stats, const Tensor& d_logits), (ctx, logits, targets, vocab_start, row_max, stats, d_logits), CUDA) \
  X(void, VocabShardRows, (const ExecContext& ctx, const Tensor& tokens, int64_t vocab_start, int64_t shard_size, const Tensor& rows), (ctx, tokens, vocab_start, shard_size, rows), CUDA) \
  X(void, CountOutOfRange, (const ExecContext& ctx, const Tensor& ids, int64_t begin, int64_t end, const Tensor& count), (ctx, ids, begin, end, count), CUDA)
// clang-format on
