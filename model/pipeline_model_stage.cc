#include "model/pipeline_model_stage.h"

#include "absl/strings/str_cat.h"

namespace scalemoe {

PipelineModelStage::PipelineModelStage(MoeTransformer& model, const ExecContext& ctx,
                                       std::vector<Batch> batches)
    : model_(model), ctx_(ctx), batches_(std::move(batches)), inputs_(batches_.size()) {}

Status PipelineModelStage::CheckMicrobatch(int microbatch) const {
  if (microbatch < 0 || microbatch >= static_cast<int>(batches_.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "micro-batch ", microbatch, " is outside this step's ", batches_.size(),
        " micro-batches: the executor's num_microbatches and the trainer's batches disagree"));
  }
  return absl::OkStatus();
}

void PipelineModelStage::Add(const LossBreakdown& loss) {
  sums_.cross_entropy += loss.cross_entropy;
  sums_.aux += loss.aux;
  sums_.z += loss.z;
  sums_.total += loss.total;
  sums_.tokens += loss.tokens;
}

StatusOr<Tensor> PipelineModelStage::Forward(int microbatch, const Tensor& input) {
  SM_RETURN_IF_ERROR(CheckMicrobatch(microbatch));
  inputs_[microbatch] = input;
  if (model_.is_last_stage()) return Tensor();  // the forward runs in Backward
  const Batch& b = batches_[microbatch];
  StageOutput out = model_.ForwardStage(ctx_, b.tokens, b.targets, input, /*keep_grad=*/true);
  Add(out.loss);
  return out.output;
}

StatusOr<Tensor> PipelineModelStage::Backward(int microbatch, const Tensor& d_output) {
  SM_RETURN_IF_ERROR(CheckMicrobatch(microbatch));
  const Batch& b = batches_[microbatch];
  StageOutput out =
      model_.ForwardStage(ctx_, b.tokens, b.targets, inputs_[microbatch], /*keep_grad=*/true);
  if (model_.is_last_stage()) Add(out.loss);
  inputs_[microbatch] = Tensor();
  return model_.BackwardStage(ctx_, d_output,
                              1.0 / static_cast<double>(batches_.size()));
}

}  // namespace scalemoe
