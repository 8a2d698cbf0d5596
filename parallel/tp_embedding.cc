#include "parallel/tp_embedding.h"

#include <string>

#include "core/host_values.h"
#include "core/ops.h"

namespace scalemoe {

StatusOr<std::unique_ptr<VocabParallelEmbedding>> VocabParallelEmbedding::Create(
    ParamRegistry& registry, ParamSpec spec, Communicator& tp, SequenceParallel sp) {
  const std::string layer = absl::StrCat("VocabParallelEmbedding(", spec.name, ")");
  if (spec.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(layer, ": table must be 2-D [V, C], got ", ShapeString(spec.shape)));
  }
  SM_RETURN_IF_ERROR(CheckShardCoords(registry, spec.layout.tp_group, tp, layer));
  SM_ASSIGN_OR_RETURN(VocabShard shard, ShardVocab(spec.shape[0], tp.rank(), tp.size()));
  spec.layout.tp_split_dim = 0;
  Param* w = registry.Create(std::move(spec));
  return std::unique_ptr<VocabParallelEmbedding>(new VocabParallelEmbedding(w, shard, tp, sp));
}

Status VocabParallelEmbedding::Forward(const ExecContext& ctx, const Tensor& tokens,
                                       const Tensor& out) {
  const std::string layer = absl::StrCat("VocabParallelEmbedding(", weight_->spec.name, ")");
  if (!tokens.defined() || tokens.ndim() != 1 || tokens.dtype() != DType::kI32 ||
      !tokens.is_contiguous()) {
    return absl::InvalidArgumentError(layer + ": tokens must be a contiguous int32 [N]");
  }
  const int64_t n = tokens.dim(0);
  const int64_t c = weight_->local_shape[1];
  const bool sp = sp_ == SequenceParallel::kOn;
  if (sp && n % tp_->size() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        layer, ": ", n, " tokens do not split over ", tp_->size(),
        " ranks under sequence parallelism: use a micro-batch token count divisible by tp"));
  }
  SM_RETURN_IF_ERROR(
      CheckMatrix(out, sp ? n / tp_->size() : n, c, weight_->value.dtype(), layer + " output"));
  const int64_t vocab = weight_->spec.shape[0];
  bad_tokens_ = ctx.Empty({1}, DType::kI64);
  ops::CountOutOfRange(ctx, tokens, 0, vocab, bad_tokens_);
  local_rows_ = ctx.Empty({n}, DType::kI32);
  ops::VocabShardRows(ctx, tokens, shard_.start, shard_.size, local_rows_);
  const Tensor full = sp ? ctx.Empty({n, c}, out.dtype()) : out;
  ops::GatherRows(ctx, weight_->value, local_rows_, 1, full);
  if (sp) return ReduceScatterTokens(ctx, *tp_, full, out);
  return tp_->size() > 1 ? tp_->AllReduce(ctx, out) : absl::OkStatus();
}

Status VocabParallelEmbedding::Backward(const ExecContext& ctx, const Tensor& d_out) {
  const std::string layer = absl::StrCat("VocabParallelEmbedding(", weight_->spec.name, ")");
  if (!local_rows_.defined()) {
    return absl::FailedPreconditionError(layer + ": Backward before Forward");
  }
  const int64_t n = local_rows_.dim(0);
  const int64_t c = weight_->local_shape[1];
  const bool sp = sp_ == SequenceParallel::kOn;
  SM_RETURN_IF_ERROR(
      CheckMatrix(d_out, sp ? n / tp_->size() : n, c, weight_->grad.dtype(), layer + " d_out"));
  Tensor d_full = d_out;
  if (sp) {
    d_full = ctx.Empty({n, c}, d_out.dtype());
    SM_RETURN_IF_ERROR(GatherTokens(ctx, *tp_, d_out, d_full));
  }
  ops::ScatterAddRows(ctx, d_full, local_rows_, 1, Tensor(), weight_->grad);
  return absl::OkStatus();
}

Status VocabParallelEmbedding::CheckTokens(const ExecContext& ctx) const {
  const std::string layer = absl::StrCat("VocabParallelEmbedding(", weight_->spec.name, ")");
  if (!bad_tokens_.defined()) {
    return absl::FailedPreconditionError(layer + ": CheckTokens before Forward");
  }
  const int64_t bad = ReadHostInts(ctx, bad_tokens_).front();
  if (bad == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      layer, ": ", bad, " of the last Forward's tokens are outside the vocabulary [0, ",
      weight_->spec.shape[0], "): the data and model.vocab_size disagree"));
}

}  // namespace scalemoe
