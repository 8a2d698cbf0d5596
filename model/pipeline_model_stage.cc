#include "model/pipeline_model_stage.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"

namespace scalemoe {

PipelineModelStage::PipelineModelStage(std::vector<MoeTransformer*> chunks, const ExecContext& ctx,
                                       std::vector<Batch> batches, Recompute recompute)
    : chunks_(std::move(chunks)),
      ctx_(ctx),
      batches_(std::move(batches)),
      recompute_(recompute),
      inputs_(chunks_.size(), std::vector<Tensor>(batches_.size())),
      caches_(chunks_.size()),
      sums_(ctx.Zeros({kNumLosses}, DType::kF64)) {
  for (auto& chunk : caches_) chunk.resize(batches_.size());
}

Status PipelineModelStage::Check(int chunk, int microbatch) const {
  if (chunk < 0 || chunk >= static_cast<int>(chunks_.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model chunk ", chunk, " is outside this rank's ", chunks_.size(),
        " chunks: the executor's num_chunks and parallel.virtual_stages disagree"));
  }
  if (microbatch < 0 || microbatch >= static_cast<int>(batches_.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "micro-batch ", microbatch, " is outside this step's ", batches_.size(),
        " micro-batches: the executor's num_microbatches and the trainer's batches disagree"));
  }
  return absl::OkStatus();
}

StatusOr<StageOutput> PipelineModelStage::RunForward(int chunk, int microbatch,
                                                     const Tensor& input) {
  const Batch& b = batches_[microbatch];
  ++forward_runs_;
  return chunks_[chunk]->ForwardStage(ctx_, b.tokens, b.targets, input, /*keep_grad=*/true);
}

StatusOr<Tensor> PipelineModelStage::Forward(int chunk, int microbatch, const Tensor& input) {
  SM_RETURN_IF_ERROR(Check(chunk, microbatch));
  MoeTransformer& model = *chunks_[chunk];
  if (recompute_ == config::TrainConfig::FULL) {
    inputs_[chunk][microbatch] = input;
    if (model.is_last_stage()) return Tensor();  // the forward runs in Backward
  }
  SM_ASSIGN_OR_RETURN(StageOutput out, RunForward(chunk, microbatch, input));
  ops::Axpy(ctx_, 1.0, out.losses, sums_);
  if (recompute_ != config::TrainConfig::FULL) {
    // Until Backward: the activations of this (chunk, micro-batch), not the
    // module's (the next Forward would overwrite them).
    model.VisitForwardCache(caches_[chunk][microbatch]);
  }
  return out.output;  // undefined on the last stage
}

StatusOr<Tensor> PipelineModelStage::Backward(int chunk, int microbatch, const Tensor& d_output) {
  SM_RETURN_IF_ERROR(Check(chunk, microbatch));
  MoeTransformer& model = *chunks_[chunk];
  if (recompute_ == config::TrainConfig::FULL) {
    SM_ASSIGN_OR_RETURN(StageOutput out, RunForward(chunk, microbatch, inputs_[chunk][microbatch]));
    if (model.is_last_stage()) ops::Axpy(ctx_, 1.0, out.losses, sums_);
    inputs_[chunk][microbatch] = Tensor();
  } else {
    ForwardCacheStash& cache = caches_[chunk][microbatch];
    SM_CHECK_MSG(!cache.empty(), "PipelineModelStage: Backward of chunk ", chunk, " micro-batch ",
                 microbatch, " without its Forward");
    cache.BeginRestore();
    model.VisitForwardCache(cache);
    SM_CHECK(cache.restored());
    cache = ForwardCacheStash();
  }
  StatusOr<Tensor> d_input =
      model.BackwardStage(ctx_, d_output, 1.0 / static_cast<double>(batches_.size()));
  ForwardCacheStash spent;  // frees this micro-batch's activations now
  model.VisitForwardCache(spent);
  return d_input;
}

}  // namespace scalemoe
