#include "parallel/tp_cross_entropy.h"

#include <string>
#include <vector>

#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {
namespace {

constexpr const char* kLayer = "VocabParallelCrossEntropy";

}  // namespace

StatusOr<VocabParallelCrossEntropy> VocabParallelCrossEntropy::Create(int64_t vocab,
                                                                      Communicator& tp) {
  SM_ASSIGN_OR_RETURN(VocabShard shard, ShardVocab(vocab, tp.rank(), tp.size()));
  return VocabParallelCrossEntropy(vocab, shard, tp);
}

Status VocabParallelCrossEntropy::Forward(const ExecContext& ctx, const Tensor& logits,
                                          const Tensor& targets, const Tensor& d_logits,
                                          const Tensor& loss) {
  if (!logits.defined() || logits.ndim() != 2 ||
      (logits.dtype() != DType::kF32 && logits.dtype() != DType::kF64 &&
       logits.dtype() != DType::kBF16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kLayer, ": logits must be f32/f64/bf16 [N, ", shard_.size, "] (this rank's vocab shard)"));
  }
  const int64_t n = logits.dim(0);
  SM_RETURN_IF_ERROR(CheckMatrix(
      logits, n, shard_.size, logits.dtype(),
      absl::StrCat(kLayer, " logits (vocab ", vocab_, " over ", tp_->size(), " ranks)")));
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(kLayer, ": no tokens"));
  if (!targets.defined() || targets.ndim() != 1 || targets.dim(0) != n ||
      targets.dtype() != DType::kI32 || !targets.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kLayer, ": targets must be a contiguous int32 [", n, "]"));
  }
  if (!loss.defined() || loss.numel() != 1 || loss.dtype() != DType::kF64 ||
      loss.device() != ctx.device()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kLayer, ": loss must be an f64 [1] tensor on the context's device"));
  }
  if (d_logits.defined()) {
    SM_RETURN_IF_ERROR(
        CheckMatrix(d_logits, n, shard_.size, logits.dtype(), std::string(kLayer) + " d_logits"));
  }
  bad_targets_ = ctx.Empty({1}, DType::kI64);
  ops::CountOutOfRange(ctx, targets, 0, vocab_, bad_targets_);
  Tensor row_max = ctx.Empty({n}, DType::kF64);
  ops::VocabRowMax(ctx, logits, row_max);
  SM_RETURN_IF_ERROR(
      WithContext(tp_->AllReduce(ctx, row_max, {.op = ReduceOp::kMax}), "vocab row max"));
  Tensor stats = ctx.Empty({2, n}, DType::kF64);
  ops::VocabSoftmaxStats(ctx, logits, targets, shard_.start, row_max, stats);
  SM_RETURN_IF_ERROR(WithContext(tp_->AllReduce(ctx, stats), "vocab softmax statistics"));
  ops::VocabCrossEntropyLoss(ctx, row_max, stats, loss);
  if (d_logits.defined()) {
    ops::VocabCrossEntropyBackward(ctx, logits, targets, shard_.start, row_max, stats,
                                   d_logits);
  }
  return absl::OkStatus();
}

StatusOr<double> VocabParallelCrossEntropy::Forward(const ExecContext& ctx,
                                                    const Tensor& logits, const Tensor& targets,
                                                    const Tensor& d_logits) {
  const Tensor loss = ctx.Empty({1}, DType::kF64);
  SM_RETURN_IF_ERROR(Forward(ctx, logits, targets, d_logits, loss));
  SM_RETURN_IF_ERROR(CheckTargets(ctx));
  SM_RETURN_IF_ERROR(ctx.status());
  return ReadHostDoubles(ctx, loss).front();
}

Status VocabParallelCrossEntropy::CheckTargets(const ExecContext& ctx) const {
  if (!bad_targets_.defined()) {
    return absl::FailedPreconditionError(absl::StrCat(kLayer, ": CheckTargets before Forward"));
  }
  const int64_t bad = ReadHostInts(ctx, bad_targets_).front();
  if (bad == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      kLayer, ": ", bad, " of the last Forward's targets are outside the vocabulary [0, ",
      vocab_, "): the data and model.vocab_size disagree"));
}

}  // namespace scalemoe
