#include "launch/micro_batch_graph.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/op_timer.h"

namespace scalemoe {
namespace {

// Captures with no replay between them before the graph is given up.
constexpr int kMaxCapturesInARow = 4;

}  // namespace

StatusOr<Tensor> MicroBatchGraph::Run(const Tensor& tokens, const Tensor& targets,
                                      double loss_grad_scale, bool first_of_step) {
  const std::vector<void*> trace = ctx_.allocator().TakeTrace();
  const int w = first_of_step ? 0 : 1;
  StatusOr<Tensor> losses;
  if (given_up_ || op_timer::Enabled()) {
    // The op timer times each op as it is queued: eager, and the graph is
    // captured again after it.
    Invalidate();
    losses = RunEager(tokens, targets, loss_grad_scale);
  } else if (graph_ && tokens.shape() == tokens_.shape() && loss_grad_scale == scale_ &&
             (known_[w] ? trace == trace_[w] : (w == 1 && trace.empty()))) {
    // Between micro-batches nothing is allocated (the step's losses are
    // summed in place): an empty trace there needs no capture of its own.
    trace_[w] = trace;
    known_[w] = true;
    Status launched = Upload(tokens, targets);
    if (launched.ok()) launched = graph_->Launch();
    losses = launched.ok() ? StatusOr<Tensor>(losses_) : StatusOr<Tensor>(launched);
    ++stats_.replays;
    captures_in_a_row_ = 0;
  } else if (!warm_) {
    losses = RunEager(tokens, targets, loss_grad_scale);
    warm_ = true;
  } else if (captures_in_a_row_ >= kMaxCapturesInARow) {
    SM_LOG_RANK0(kWarning, "train.cuda_graphs: the work between micro-batches moved the graph's "
                           "inputs in ", kMaxCapturesInARow, " steps in a row; training goes on "
                           "without the graph (as train.cuda_graphs: false)");
    given_up_ = true;
    Invalidate();
    losses = RunEager(tokens, targets, loss_grad_scale);
  } else {
    losses = Capture(tokens, targets, loss_grad_scale);
    trace_[w] = trace;
    known_[w] = true;
    known_[1 - w] = false;
  }
  ctx_.allocator().StartTrace();
  return losses;
}

void MicroBatchGraph::Invalidate() {
  graph_.reset();
  known_[0] = known_[1] = false;
}

StatusOr<Tensor> MicroBatchGraph::RunEager(const Tensor& tokens, const Tensor& targets,
                                           double loss_grad_scale) {
  SM_ASSIGN_OR_RETURN(const StageOutput out,
                      model_.ForwardStage(ctx_, tokens, targets, Tensor(), /*keep_grad=*/true));
  SM_RETURN_IF_ERROR(model_.Backward(ctx_, loss_grad_scale));
  ++stats_.eager;
  return out.losses;
}

Status MicroBatchGraph::Upload(const Tensor& tokens, const Tensor& targets) {
  if (!tokens_.defined() || tokens_.shape() != tokens.shape()) {
    // Only before a capture: a replay needs the shape it was captured with.
    tokens_ = ctx_.Empty(tokens.shape(), DType::kI32);
    targets_ = ctx_.Empty(targets.shape(), DType::kI32);
  }
  SM_RETURN_IF_ERROR(ctx_.CopyAcross(tokens, tokens_));
  return ctx_.CopyAcross(targets, targets_);
}

StatusOr<Tensor> MicroBatchGraph::Capture(const Tensor& tokens, const Tensor& targets,
                                          double loss_grad_scale) {
  SM_RETURN_IF_ERROR(Upload(tokens, targets));  // outside: a replay cannot upload
  // The old graph's pool goes back to the shared cache first, so that the
  // new pool takes its blocks over.
  graph_.reset();
  auto failed = [](const Status& why) {
    return absl::Status(why.code(),
                        absl::StrCat("train.cuda_graphs: capturing a micro-batch's forward and "
                                     "backward failed: ", why.message(),
                                     "; set train.cuda_graphs: false to train without graphs"));
  };
  if (Status begun = CudaGraph::BeginCapture(ctx_); !begun.ok()) return failed(begun);
  StatusOr<StageOutput> out =
      model_.ForwardStage(ctx_, tokens_, targets_, Tensor(), /*keep_grad=*/true);
  Status ran = out.status();
  if (ran.ok()) ran = model_.Backward(ctx_, loss_grad_scale);
  // Always ended: the stream must leave capture mode whatever happened.
  StatusOr<std::unique_ptr<CudaGraph>> graph = CudaGraph::EndCapture(ctx_);
  if (!ran.ok()) return failed(ran);
  if (!graph.ok()) return failed(graph.status());
  graph_ = *std::move(graph);
  scale_ = loss_grad_scale;
  losses_ = out->losses;
  ++stats_.captures;
  ++captures_in_a_row_;
  // The capture ran no device work: this launch is the micro-batch (its
  // host effects ran with the captured host code).
  SM_RETURN_IF_ERROR(graph_->Launch(/*host_effects=*/false));
  return losses_;
}

}  // namespace scalemoe
