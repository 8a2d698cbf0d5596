// PipelineModelStage: this rank's MoeTransformer chunks (one, or
// parallel.virtual_stages of them under the interleaved schedule) as the
// pipeline executor's PipelineStage (parallel/pipeline_executor.h), over one
// step's micro-batches.
//
// Every module keeps ONE forward cache, while a pipeline has several
// micro-batches in flight; train.recompute says how a chunk copes:
// - NONE (default): Forward(c, mb) runs the chunk's forward (the loss, on
//   the last stage) once, then moves the chunk's whole forward cache into a
//   stash for (c, mb) (core/forward_cache.h: tensor handles move, nothing is
//   copied); Backward(c, mb) moves it back and runs the backward. Memory:
//   the activations of every in-flight (chunk, micro-batch), at most pp - s
//   micro-batches on stage s under 1F1B (PeakInFlightMicrobatches of the
//   rank's schedule in general), each this chunk's layers' caches (plus the
//   logits' gradient on the last stage).
// - FULL (the behaviour before train.recompute existed): before the last
//   (virtual) stage, Forward(c, mb) runs the chunk's forward (its output
//   goes to the next stage) and keeps the input handle; Backward(c, mb)
//   reruns that forward from the same input, then the backward. The last
//   stage's Forward only keeps the input; Backward runs the forward (the
//   loss) and the backward back to back. Memory: the inputs plus one
//   micro-batch's caches; compute: every stage but the last runs its
//   forward twice.
// Either way the backward of (c, mb) reads the caches of (c, mb)'s forward
// from the same input and parameters, so gradients equal the unpipelined
// model's. MoE statistics, expert-bias loads and the aux/z losses count
// each micro-batch once: MoeLayer adds its loads and losses to the step's
// in Backward, from the Forward cache Backward reads (restored, or rerun),
// and the stage adds each micro-batch's losses to sums() once, from its
// first forward (FULL: the last stage's only forward). After a Backward
// the chunk's caches are dropped, not kept until the next Forward.
#pragma once

#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/forward_cache.h"
#include "core/tensor.h"
#include "model/model.h"
#include "parallel/pipeline_executor.h"

namespace scalemoe {

class PipelineModelStage : public PipelineStage {
 public:
  struct Batch {
    Tensor tokens, targets;  // [B, T] int32 CPU, checked by the caller (CheckBatch)
  };
  using Recompute = config::TrainConfig::Recompute;
  // One step: every micro-batch's loss gradient is scaled by 1/batches.size().
  // chunks[c] is model chunk c of this rank; the models and the batches'
  // storage must outlive the stage. recompute: train.recompute (above).
  PipelineModelStage(std::vector<MoeTransformer*> chunks, const ExecContext& ctx,
                     std::vector<Batch> batches, Recompute recompute = config::TrainConfig::NONE);

  StatusOr<Tensor> Forward(int chunk, int microbatch, const Tensor& input) override;
  StatusOr<Tensor> Backward(int chunk, int microbatch, const Tensor& d_output) override;

  // Sums over the step's micro-batches of this rank's share of the loss, f64
  // [kNumLosses] on the context (model/model.h): cross_entropy on the last
  // stage only, aux and z of this rank's MoE layers, total = their sum.
  const Tensor& sums() const { return sums_; }
  // Chunk forwards run so far (MoeTransformer::ForwardStage calls): one per
  // (chunk, micro-batch) under NONE; under FULL two on every (virtual)
  // stage but the last.
  int forward_runs() const { return forward_runs_; }

 private:
  Status Check(int chunk, int microbatch) const;

  // Runs chunk `chunk`'s forward of `microbatch` from `input`.
  StatusOr<StageOutput> RunForward(int chunk, int microbatch, const Tensor& input);

  std::vector<MoeTransformer*> chunks_;
  const ExecContext ctx_;
  std::vector<Batch> batches_;
  Recompute recompute_;
  // [chunk][micro-batch], from Forward until its Backward: the input (FULL)
  // or the chunk's forward cache (NONE).
  std::vector<std::vector<Tensor>> inputs_;
  std::vector<std::vector<ForwardCacheStash>> caches_;
  Tensor sums_;
  int forward_runs_ = 0;
};

}  // namespace scalemoe
