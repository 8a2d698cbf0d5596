#include "parallel/pipeline_executor.h"

#include <algorithm>

namespace scalemoe {

static int ActivationTag(int microbatch) { return 2 * microbatch; }
static int GradTag(int microbatch) { return 2 * microbatch + 1; }

StatusOr<PipelineExecutor> PipelineExecutor::Create(Communicator& pp,
                                                    const PipelineExecutorOptions& options) {
  if (options.activation_shape.empty() || NumElements(options.activation_shape) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline activation shape ", ShapeString(options.activation_shape),
                     " is empty: pass [micro_batch_size * seq_length, d_model]"));
  }
  if (options.activation_dtype != DType::kF32 && options.activation_dtype != DType::kF64 &&
      options.activation_dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("pipeline activations must be floating point, got ",
                     DTypeName(options.activation_dtype)));
  }
  SM_ASSIGN_OR_RETURN(std::vector<PipelineAction> actions,
                      BuildPipelineSchedule(options.schedule, pp.rank(), pp.size(),
                                            options.num_microbatches));
  return PipelineExecutor(pp, options, std::move(actions));
}

PipelineExecutor::PipelineExecutor(Communicator& pp, PipelineExecutorOptions options,
                                   std::vector<PipelineAction> actions)
    : pp_(&pp),
      options_(std::move(options)),
      actions_(std::move(actions)),
      stage_(pp.rank()),
      num_stages_(pp.size()) {}

StatusOr<PipelineStepStats> PipelineExecutor::RunStep(PipelineStage& stage) {
  const int m = options_.num_microbatches;
  inputs_.assign(m, Tensor());
  outputs_.assign(m, Tensor());
  d_outputs_.assign(m, Tensor());
  d_inputs_.assign(m, Tensor());
  stashed_ = 0;
  stashed_bytes_ = 0;
  PipelineStepStats stats;
  stats.stage = stage_;
  stats.num_stages = num_stages_;
  stats.num_microbatches = m;
  stats.bubble_fraction = PipelineBubbleFraction(num_stages_, m);
  for (const PipelineAction& action : actions_) {
    Status status = Run(action, stage, stats);
    if (!status.ok()) {
      return Status(status.code(),
                    absl::StrCat("pipeline stage ", stage_, " of ", num_stages_, ", ",
                                 PipelineOpName(action.op), " of micro-batch ",
                                 action.microbatch, ": ", status.message()));
    }
  }
  SM_CHECK(stashed_ == 0);
  return stats;
}

Status PipelineExecutor::Run(const PipelineAction& action, PipelineStage& stage,
                             PipelineStepStats& stats) {
  const int mb = action.microbatch;
  switch (action.op) {
    case PipelineOp::kRecvActivation: {
      SM_ASSIGN_OR_RETURN(inputs_[mb], Tensor::TryEmpty(options_.activation_shape,
                                                        options_.activation_dtype,
                                                        options_.activation_device));
      ++stats.recvs;
      return pp_->Recv(inputs_[mb], stage_ - 1, {.tag = ActivationTag(mb)});
    }
    case PipelineOp::kForward: {
      SM_ASSIGN_OR_RETURN(outputs_[mb], stage.Forward(mb, inputs_[mb]));
      const bool last = stage_ == num_stages_ - 1;
      if (last && outputs_[mb].defined()) {
        return absl::InternalError("the last stage returned an activation; it must return an "
                                   "undefined Tensor (it keeps the loss itself)");
      }
      if (!last) SM_RETURN_IF_ERROR(CheckActivation(outputs_[mb], action, "Forward's output"));
      stats.peak_stashed_microbatches = std::max(stats.peak_stashed_microbatches, ++stashed_);
      if (inputs_[mb].defined()) stashed_bytes_ += inputs_[mb].nbytes();
      stats.peak_stashed_bytes = std::max(stats.peak_stashed_bytes, stashed_bytes_);
      return absl::OkStatus();
    }
    case PipelineOp::kSendActivation: {
      ++stats.sends;
      Status status = pp_->Send(outputs_[mb], stage_ + 1, {.tag = ActivationTag(mb)});
      outputs_[mb] = Tensor();
      return status;
    }
    case PipelineOp::kRecvGrad: {
      SM_ASSIGN_OR_RETURN(d_outputs_[mb], Tensor::TryEmpty(options_.activation_shape,
                                                           options_.activation_dtype,
                                                           options_.activation_device));
      ++stats.recvs;
      return pp_->Recv(d_outputs_[mb], stage_ + 1, {.tag = GradTag(mb)});
    }
    case PipelineOp::kBackward: {
      SM_ASSIGN_OR_RETURN(d_inputs_[mb], stage.Backward(mb, d_outputs_[mb]));
      if (stage_ > 0) {
        SM_RETURN_IF_ERROR(CheckActivation(d_inputs_[mb], action, "Backward's input gradient"));
      }
      if (stage_ == 0 && d_inputs_[mb].defined()) {
        return absl::InternalError("the first stage returned an input gradient; it must return "
                                   "an undefined Tensor (its input is the tokens)");
      }
      --stashed_;
      if (inputs_[mb].defined()) stashed_bytes_ -= inputs_[mb].nbytes();
      inputs_[mb] = Tensor();
      d_outputs_[mb] = Tensor();
      return absl::OkStatus();
    }
    case PipelineOp::kSendGrad: {
      ++stats.sends;
      Status status = pp_->Send(d_inputs_[mb], stage_ - 1, {.tag = GradTag(mb)});
      d_inputs_[mb] = Tensor();
      return status;
    }
  }
  return absl::InternalError("unknown pipeline action");
}

Status PipelineExecutor::CheckActivation(const Tensor& t, const PipelineAction& action,
                                         const char* what) const {
  if (!t.defined() || t.shape() != options_.activation_shape ||
      t.dtype() != options_.activation_dtype || !t.is_contiguous() ||
      t.device() != options_.activation_device) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " of micro-batch ", action.microbatch, " is ",
        t.defined() ? t.DebugString() : std::string("undefined"),
        " but every pipeline boundary carries ",
        DTypeName(options_.activation_dtype), ShapeString(options_.activation_shape),
        " contiguous on ", options_.activation_device == Device::kCPU ? "the CPU" : "the GPU",
        ": the stage must return the executor's activation shape"));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
