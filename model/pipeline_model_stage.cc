#include "model/pipeline_model_stage.h"

#include "absl/strings/str_cat.h"
#include "core/ops.h"

namespace scalemoe {

PipelineModelStage::PipelineModelStage(std::vector<MoeTransformer*> chunks,
                                       const ExecContext& ctx, std::vector<Batch> batches)
    : chunks_(std::move(chunks)),
      ctx_(ctx),
      batches_(std::move(batches)),
      inputs_(chunks_.size(), std::vector<Tensor>(batches_.size())),
      sums_(ctx.Zeros({kNumLosses}, DType::kF64)) {}

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

StatusOr<Tensor> PipelineModelStage::Forward(int chunk, int microbatch, const Tensor& input) {
  SM_RETURN_IF_ERROR(Check(chunk, microbatch));
  inputs_[chunk][microbatch] = input;
  MoeTransformer& model = *chunks_[chunk];
  if (model.is_last_stage()) return Tensor();  // the forward runs in Backward
  const Batch& b = batches_[microbatch];
  SM_ASSIGN_OR_RETURN(StageOutput out,
                      model.ForwardStage(ctx_, b.tokens, b.targets, input, /*keep_grad=*/true));
  ops::Axpy(ctx_, 1.0, out.losses, sums_);
  return out.output;
}

StatusOr<Tensor> PipelineModelStage::Backward(int chunk, int microbatch, const Tensor& d_output) {
  SM_RETURN_IF_ERROR(Check(chunk, microbatch));
  MoeTransformer& model = *chunks_[chunk];
  const Batch& b = batches_[microbatch];
  SM_ASSIGN_OR_RETURN(StageOutput out,
                      model.ForwardStage(ctx_, b.tokens, b.targets, inputs_[chunk][microbatch],
                                         /*keep_grad=*/true));
  if (model.is_last_stage()) ops::Axpy(ctx_, 1.0, out.losses, sums_);
  inputs_[chunk][microbatch] = Tensor();
  return model.BackwardStage(ctx_, d_output, 1.0 / static_cast<double>(batches_.size()));
}

}  // namespace scalemoe
