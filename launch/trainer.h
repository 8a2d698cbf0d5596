// Trainer: the training loop behind `scalemoe train`, on one rank or many
// (data, expert, tensor/sequence/expert-tensor and pipeline parallel, ZeRO-1:
// parallel/, model/, optim/distributed_optimizer).
//
// Owns one run directory:
//   <run_dir>/config.textproto        the resolved config (every field)
//   <run_dir>/metrics.jsonl           one record per log/eval step (append)
//   <run_dir>/events.out.tfevents.*   TensorBoard scalars
//   <run_dir>/checkpoints/step_N/     parameters, optimizer state, loader state
//
// A step: PrepareStep (fold scale vectors into weights), A micro-batches of
// Forward/Backward (A = global_batch / (micro_batch * dp)), FinishBackward,
// optimizer Step (clip + update), expert-bias update. Under pipeline
// parallelism (parallel.pp > 1) the A micro-batches run through the stages
// as one 1F1B PipelineExecutor step, or interleaved over
// parallel.virtual_stages model chunks per rank (model/pipeline_model_stage.h);
// tied embeddings keep a copy on the last stage, whose gradient is summed
// with the first stage's; the logged loss is the last stage's CE plus every
// stage's aux/z, evaluation (on the parameters after the update) is a
// forward-only pass through the stages, and rank 0 prints the bubble
// fraction and each stage's peak of stashed activations at start-up. Resume restores the
// parameters, optimizer state, step and loader position from the newest
// complete checkpoint, so N straight steps equal k steps + resume + N-k steps
// bit for bit. On several ranks every rank runs this loop; rank 0 alone
// writes metrics, TensorBoard and progress, every rank writes its own part of
// each checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/status.h"
#include "parallel/process_groups.h"

namespace scalemoe {

struct TrainOptions {
  config::RunConfig config;  // validated
  std::string run_dir;
  bool resume = false;       // continue from the newest checkpoint in run_dir
  bool quiet = false;        // no progress lines (tests)
  // Stop (after saving a checkpoint) once this many steps are done, without
  // ending the schedule (Megatron's --exit-interval); 0 = run to train_steps.
  int64_t exit_after_steps = 0;
  // This rank's process groups (laid out as config.parallel says); nullptr =
  // a world of one. Not owned; must outlive Train().
  ProcessGroups* groups = nullptr;
  // Called once each step's work is queued on the context (before that
  // step's logging, evaluation or checkpoint), with the steps done so far:
  // bench/train_step_bench records its timing events here. Empty = none.
  std::function<void(int64_t steps_done, const ExecContext& ctx)> on_step_queued;
};

struct TrainResult {
  int64_t steps_done = 0;       // the step count reached (== train_steps when complete)
  double last_train_loss = 0;   // mean total loss of the last step
  double last_val_loss = -1;    // last evaluation's cross-entropy (-1: none)
  double unigram_val_loss = -1; // cross-entropy of a unigram model on the same batches
  int64_t skipped_steps = 0;    // non-finite steps skipped (on_nonfinite: SKIP)
  // Device→host reads (ExecContext::ToHost) of the last step that did not
  // log, evaluate or save (-1: none such): the MoE layers' per-expert
  // counts, one per MoE layer per micro-batch forward, and nothing else.
  int64_t quiet_step_host_reads = -1;
  // malloc/free (CPU) or cudaMalloc/cudaFree (CUDA) calls of the context's
  // caching allocator in that step (-1: none such): 0 once the cache is warm.
  int64_t quiet_step_system_allocs = -1;
  // train.cuda_graphs: micro-batches run by replaying a captured graph,
  // captures made (the first, and again after an evaluation or an op-timed
  // step), and micro-batches run eagerly (launch/micro_batch_graph.h).
  int64_t cuda_graph_replays = 0, cuda_graph_captures = 0, cuda_graph_eager = 0;
  std::string device;           // where the step ran: "CPU" or "CUDA:<ordinal>"
  std::string last_checkpoint;  // newest checkpoint written or resumed from
};

// Runs the training loop. Errors (bad dataset, a checkpoint that does not
// match, a non-finite loss under on_nonfinite STOP) name the thing and the
// fix; checkpoints already written stay intact.
StatusOr<TrainResult> Train(const TrainOptions& options);

}  // namespace scalemoe
