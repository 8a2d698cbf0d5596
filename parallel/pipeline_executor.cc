#include "parallel/pipeline_executor.h"

#include <algorithm>
#include <string>

namespace scalemoe {

// The boundary above chunk c of this rank is between virtual stages c*p + s
// and c*p + s + 1 and is named by the lower side's chunk c; the boundary
// below chunk c is named by the previous virtual stage's chunk: c, or c - 1
// on rank 0 (whose previous virtual stage is rank p-1's chunk c - 1).
int PipelineExecutor::Tag(const PipelineAction& a, bool up, bool grad) const {
  const int lower_chunk = up || stage_ > 0 ? a.chunk : a.chunk - 1;
  SM_CHECK(lower_chunk >= 0);
  return 2 * (lower_chunk * options_.num_microbatches + a.microbatch) + (grad ? 1 : 0);
}

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
  if (2 * static_cast<int64_t>(options.num_chunks) * options.num_microbatches + 1 >=
      kPipelineTagLimit) {
    return absl::InvalidArgumentError(absl::StrCat(
        options.num_microbatches, " micro-batches x ", options.num_chunks,
        " model chunks (parallel.virtual_stages): 2 * chunks * micro-batches + 1 = ",
        2 * static_cast<int64_t>(options.num_chunks) * options.num_microbatches + 1,
        " reaches the pipeline tag limit ", kPipelineTagLimit,
        " (higher tags are the trainer's): lower train.global_batch_size or raise "
        "train.micro_batch_size"));
  }
  SM_ASSIGN_OR_RETURN(std::vector<PipelineAction> actions,
                      BuildPipelineSchedule(options.schedule, pp.rank(), pp.size(),
                                            options.num_microbatches, options.num_chunks));
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
  const int slots = m * options_.num_chunks;
  inputs_.assign(slots, Tensor());
  outputs_.assign(slots, Tensor());
  d_outputs_.assign(slots, Tensor());
  d_inputs_.assign(slots, Tensor());
  stashed_ = 0;
  stashed_bytes_ = 0;
  PipelineStepStats stats;
  stats.stage = stage_;
  stats.num_stages = num_stages_;
  stats.num_microbatches = m;
  stats.num_chunks = options_.num_chunks;
  stats.bubble_fraction = PipelineBubbleFraction(num_stages_, m, options_.num_chunks);
  for (const PipelineAction& action : actions_) {
    Status status = Run(action, stage, stats);
    if (!status.ok()) {
      return Status(status.code(),
                    absl::StrCat("pipeline stage ", stage_, " of ", num_stages_, ", ",
                                 PipelineOpName(action.op), " of micro-batch ",
                                 action.microbatch,
                                 options_.num_chunks > 1
                                     ? absl::StrCat(" (chunk ", action.chunk, ")")
                                     : std::string(),
                                 ": ", status.message()));
    }
  }
  SM_CHECK(stashed_ == 0);
  return stats;
}

Status PipelineExecutor::Run(const PipelineAction& action, PipelineStage& stage,
                             PipelineStepStats& stats) {
  const int mb = action.microbatch, c = action.chunk, slot = Slot(action);
  const int prev = (stage_ + num_stages_ - 1) % num_stages_;
  const int next = (stage_ + 1) % num_stages_;
  switch (action.op) {
    case PipelineOp::kRecvActivation: {
      SM_ASSIGN_OR_RETURN(inputs_[slot], Tensor::TryEmpty(options_.activation_shape,
                                                          options_.activation_dtype,
                                                          options_.activation_device));
      ++stats.recvs;
      return pp_->Recv(options_.ctx, inputs_[slot], prev,
                       {.tag = Tag(action, /*up=*/false, /*grad=*/false)});
    }
    case PipelineOp::kForward: {
      SM_ASSIGN_OR_RETURN(outputs_[slot], stage.Forward(c, mb, inputs_[slot]));
      const bool last = IsLast(c);
      if (last && outputs_[slot].defined()) {
        return absl::InternalError("the last stage returned an activation; it must return an "
                                   "undefined Tensor (it keeps the loss itself)");
      }
      if (!last) SM_RETURN_IF_ERROR(CheckActivation(outputs_[slot], action, "Forward's output"));
      stats.peak_stashed_microbatches = std::max(stats.peak_stashed_microbatches, ++stashed_);
      if (inputs_[slot].defined()) stashed_bytes_ += inputs_[slot].nbytes();
      stats.peak_stashed_bytes = std::max(stats.peak_stashed_bytes, stashed_bytes_);
      return absl::OkStatus();
    }
    case PipelineOp::kSendActivation: {
      ++stats.sends;
      Status status = pp_->Send(options_.ctx, outputs_[slot], next,
                                {.tag = Tag(action, /*up=*/true, /*grad=*/false)});
      outputs_[slot] = Tensor();
      return status;
    }
    case PipelineOp::kRecvGrad: {
      SM_ASSIGN_OR_RETURN(d_outputs_[slot], Tensor::TryEmpty(options_.activation_shape,
                                                             options_.activation_dtype,
                                                             options_.activation_device));
      ++stats.recvs;
      return pp_->Recv(options_.ctx, d_outputs_[slot], next,
                       {.tag = Tag(action, /*up=*/true, /*grad=*/true)});
    }
    case PipelineOp::kBackward: {
      SM_ASSIGN_OR_RETURN(d_inputs_[slot], stage.Backward(c, mb, d_outputs_[slot]));
      const bool first = IsFirst(c);
      if (!first) {
        SM_RETURN_IF_ERROR(
            CheckActivation(d_inputs_[slot], action, "Backward's input gradient"));
      }
      if (first && d_inputs_[slot].defined()) {
        return absl::InternalError("the first stage returned an input gradient; it must return "
                                   "an undefined Tensor (its input is the tokens)");
      }
      --stashed_;
      if (inputs_[slot].defined()) stashed_bytes_ -= inputs_[slot].nbytes();
      inputs_[slot] = Tensor();
      d_outputs_[slot] = Tensor();
      return absl::OkStatus();
    }
    case PipelineOp::kSendGrad: {
      ++stats.sends;
      Status status = pp_->Send(options_.ctx, d_inputs_[slot], prev,
                                {.tag = Tag(action, /*up=*/false, /*grad=*/true)});
      d_inputs_[slot] = Tensor();
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
        what, " of micro-batch ", action.microbatch,
        options_.num_chunks > 1 ? absl::StrCat(" (chunk ", action.chunk, ")") : std::string(),
        " is ",
        t.defined() ? t.DebugString() : std::string("undefined"),
        " but every pipeline boundary carries ",
        DTypeName(options_.activation_dtype), ShapeString(options_.activation_shape),
        " contiguous on ", options_.activation_device == Device::kCPU ? "the CPU" : "the GPU",
        ": the stage must return the executor's activation shape"));
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
