// TrainLoop under pipeline parallelism: the executor set-up, one step's
// forward/backward (plain or through the 1F1B executor) and the forward-only
// evaluation pass through the stages.
#include <algorithm>
#include <string>
#include <vector>

#include "core/logging.h"
#include "core/host_values.h"
#include "core/ops.h"
#include "launch/train_loop.h"
#include "model/pipeline_model_stage.h"

namespace scalemoe {
namespace {

// Point-to-point tag of the forward-only evaluation pass between pipeline
// stages (the executor's training tags are 2*mb and 2*mb + 1, far below).
constexpr int kEvalTag = 30000;
// Tag of the tied-embedding gradient exchange between the first and last stage.
constexpr int kTiedEmbeddingTag = 30001;

}  // namespace

// Pipeline parallelism: one 1F1B executor over the pp group, each step's
// micro-batches (the loader's, the same on every stage) in flight together.
// train.recompute picks whether a stage keeps its in-flight micro-batches'
// activations (NONE) or reruns their forward in the backward (FULL):
// model/pipeline_model_stage.h.
// Rank 0 prints the schedule's bubble fraction and every stage's peak of
// stashed input activations per rank (what issue 6 asks the trainer to
// report; under sequence parallelism each TP rank stashes its 1/tp of the
// tokens).
Status TrainLoop::SetupPipeline() {
  const int v = static_cast<int>(chunks_.size());
  PipelineExecutorOptions eo;
  eo.schedule = v > 1 ? PipelineScheduleKind::kInterleaved1F1B : PipelineScheduleKind::kOneFOneB;
  eo.num_microbatches = static_cast<int>(accumulation_);
  eo.num_chunks = v;
  // What one stage sends the next per micro-batch: [B*T, C], or this TP
  // rank's [B*T/tp, C] under sequence parallelism.
  eo.activation_shape =
      model().BoundaryShape(cfg_.train().micro_batch_size(), cfg_.model().seq_length());
  eo.activation_dtype = model().BoundaryDType();
  eo.activation_device = ctx_.device();
  eo.ctx = ctx_;
  SM_ASSIGN_OR_RETURN(PipelineExecutor executor, PipelineExecutor::Create(*groups_.pp, eo));
  executor_.emplace(std::move(executor));
  if (!is_rank0()) return absl::OkStatus();
  const int p = groups_.pp->size(), m = eo.num_microbatches;
  const int64_t activation_bytes = NumElements(eo.activation_shape) * DTypeSize(eo.activation_dtype);
  std::string stages;
  for (int s = 0; s < p; ++s) {
    SM_ASSIGN_OR_RETURN(std::vector<PipelineAction> actions,
                        BuildPipelineSchedule(eo.schedule, s, p, m, v));
    const int peak = PeakInFlightMicrobatches(actions);
    // Received inputs held at once: every in-flight forward except those of
    // virtual stage 0 (rank 0's first chunk embeds its own tokens).
    int received = 0, in_flight = 0;
    for (const PipelineAction& a : actions) {
      const bool receives = !(s == 0 && a.chunk == 0);
      if (a.op == PipelineOp::kForward && receives) received = std::max(received, ++in_flight);
      if (a.op == PipelineOp::kBackward && receives) --in_flight;
    }
    absl::StrAppend(&stages, s == 0 ? "" : ", ", "stage ", s, ": ", peak,
                    v > 1 ? " (chunk, micro-batch) pairs (" : " micro-batches (",
                    received * activation_bytes / 1048576.0,
                    " MiB received)");
  }
  SM_LOG_RANK0(kInfo, "pipeline: ", p, " stages", v > 1 ? absl::StrCat(" x ", v, " chunks") : "",
               " x ", m, " micro-batches per step, ", PipelineScheduleName(eo.schedule),
               ", bubble fraction ", PipelineBubbleFraction(p, m, v),
               "; peak stashed activations per stage: ", stages,
               cfg_.train().recompute() == config::TrainConfig::FULL
                   ? "; each stage but the last reruns its forward in the backward "
                     "(train.recompute=FULL)"
                   : "; each stage keeps those micro-batches' layer activations "
                     "(train.recompute=NONE)");
  return absl::OkStatus();
}

StatusOr<Tensor> TrainLoop::ForwardBackward() {
  if (!pipelined()) {
    // Over the micro-batches; kept from step to step, so that no block of
    // the step's eager work is alive when a CUDA graph replays
    // (launch/micro_batch_graph.h).
    if (!loss_sums_.defined()) loss_sums_ = ctx_.Empty({kNumLosses}, DType::kF64);
    const Tensor& sums = loss_sums_;
    ops::Zero(ctx_, sums);
    for (int64_t m = 0; m < accumulation_; ++m) {
      MicroBatch batch = train_loader_->Next();
      auto [tokens, targets] = BatchTensors(batch);
      SM_RETURN_IF_ERROR(model().CheckBatch(tokens, targets));
      const double scale = 1.0 / static_cast<double>(accumulation_);
      if (graph_) {
        SM_ASSIGN_OR_RETURN(const Tensor losses, graph_->Run(tokens, targets, scale, m == 0));
        ops::Axpy(ctx_, 1.0, losses, sums);
        continue;
      }
      SM_ASSIGN_OR_RETURN(const StageOutput out, model().ForwardStage(ctx_, tokens, targets,
                                                                      Tensor(), true));
      SM_RETURN_IF_ERROR(model().Backward(ctx_, scale));
      ops::Axpy(ctx_, 1.0, out.losses, sums);
    }
    return sums;
  }
  std::vector<MicroBatch> batches;
  std::vector<PipelineModelStage::Batch> views;
  batches.reserve(accumulation_);
  for (int64_t m = 0; m < accumulation_; ++m) {
    batches.push_back(train_loader_->Next());
    auto [tokens, targets] = BatchTensors(batches.back());
    SM_RETURN_IF_ERROR(model().CheckBatch(tokens, targets));
    views.push_back({tokens, targets});
  }
  std::vector<MoeTransformer*> chunks;
  for (auto& c : chunks_) chunks.push_back(c.get());
  PipelineModelStage stage(std::move(chunks), ctx_, std::move(views), cfg_.train().recompute());
  SM_RETURN_IF_ERROR(executor_->RunStep(stage).status());
  return stage.sums();
}

// Forward only, one micro-batch at a time through the stages (no overlap:
// evaluation is rare); the last stage holds the cross-entropy. Interleaved,
// a micro-batch passes the ranks once per chunk: rank p-1's chunk c feeds
// rank 0's chunk c+1.
StatusOr<double> TrainLoop::EvaluatePipelined() {
  Communicator& pp = *groups_.pp;
  const int p = pp.size(), r = pp.rank();
  Tensor loss = ctx_.Zeros({1}, DType::kF64);
  const int64_t n = cfg_.train().eval_batches() * accumulation_;
  for (int64_t i = 0; i < n; ++i) {
    MicroBatch batch = val_loader_->At(i);
    auto [tokens, targets] = BatchTensors(batch);
    for (auto& chunk : chunks_) {
      Tensor input;
      if (!chunk->is_first_stage()) {
        input = ctx_.Empty(chunk->BoundaryShape(tokens.shape()[0], tokens.shape()[1]),
                           chunk->BoundaryDType());
        SM_RETURN_IF_ERROR(pp.Recv(ctx_, input, (r + p - 1) % p, {.tag = kEvalTag}));
      }
      SM_ASSIGN_OR_RETURN(const StageOutput out,
                          chunk->ForwardStage(ctx_, tokens, targets, input, false));
      if (!chunk->is_last_stage()) {
        SM_RETURN_IF_ERROR(pp.Send(ctx_, out.output, (r + 1) % p, {.tag = kEvalTag}));
      }
      ops::Axpy(ctx_, 1.0 / n, out.losses.Narrow(0, kCrossEntropyLoss, 1), loss);
    }
  }
  SM_RETURN_IF_ERROR(pp.AllReduce(ctx_, loss));
  SM_RETURN_IF_ERROR(groups_.dp->AllReduce(ctx_, loss));
  return ReadScalar(ctx_, loss) / groups_.dp->size();
}

// The first and last stage swap their local embedding gradients and each
// adds the other's: a + b is exact-commutative in IEEE arithmetic, so both
// copies get the same bits, then the same reduction and update. The model
// does not report the embedding range ready, so the optimizer's Step reduces
// it over dp only after this sum. Middle stages hold no copy.
Status TrainLoop::SumTiedEmbeddingGrads() {
  if (!holds_first_stage() && !holds_last_stage()) return absl::OkStatus();
  Communicator& pp = *groups_.pp;
  // This rank's copy: the one kEmbedding parameter it holds (the first
  // stage's table, or the last stage's head copy).
  const Param* embedding = nullptr;
  for (const auto& p : registry_.params()) {
    if (p->spec.role == ParamRole::kEmbedding) embedding = p.get();
  }
  SM_CHECK_MSG(embedding != nullptr, "tied embeddings: pipeline rank ", pp.rank(),
               " holds no embedding");
  const Tensor& mine = embedding->grad;
  Tensor theirs = ctx_.Empty(mine.shape(), mine.dtype());
  const SendRecvOptions tag{.tag = kTiedEmbeddingTag};
  // First stage sends first, the last receives first: blocking sends cannot
  // deadlock.
  if (holds_first_stage()) {
    SM_RETURN_IF_ERROR(pp.Send(ctx_, mine, pp.size() - 1, tag));
    SM_RETURN_IF_ERROR(pp.Recv(ctx_, theirs, pp.size() - 1, tag));
  } else {
    SM_RETURN_IF_ERROR(pp.Recv(ctx_, theirs, 0, tag));
    SM_RETURN_IF_ERROR(pp.Send(ctx_, mine, 0, tag));
  }
  ops::Axpy(ctx_, 1.0, theirs, mine);
  return absl::OkStatus();
}

}  // namespace scalemoe
