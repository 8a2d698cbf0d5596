// PipelineModelStage: this rank's MoeTransformer chunks (one, or
// parallel.virtual_stages of them under the interleaved schedule) as the
// pipeline executor's PipelineStage (parallel/pipeline_executor.h), over one
// step's micro-batches.
//
// The model keeps one forward cache while a pipeline has several
// micro-batches in flight, so a chunk recomputes instead of caching:
// - before the last (virtual) stage, Forward(c, mb) runs the chunk's forward
//   (its output goes to the next stage) and keeps the input handle;
//   Backward(c, mb) reruns that forward from the same input, then the
//   backward;
// - the last stage's Forward only keeps the input; Backward runs the forward
//   (the loss) and the backward back to back.
// The rerun sees the same input and parameters, so gradients equal the
// unpipelined model's. MoE statistics and expert-bias loads count each
// micro-batch once (MoeLayer::step_stats counts forwards that get a Backward).
#pragma once

#include <vector>

#include "core/context.h"
#include "core/tensor.h"
#include "model/model.h"
#include "parallel/pipeline_executor.h"

namespace scalemoe {

class PipelineModelStage : public PipelineStage {
 public:
  struct Batch {
    Tensor tokens, targets;  // [B, T] int32 CPU, checked by the caller (CheckBatch)
  };
  // One step: every micro-batch's loss gradient is scaled by 1/batches.size().
  // chunks[c] is model chunk c of this rank; the models and the batches'
  // storage must outlive the stage.
  PipelineModelStage(std::vector<MoeTransformer*> chunks, const ExecContext& ctx,
                     std::vector<Batch> batches);

  StatusOr<Tensor> Forward(int chunk, int microbatch, const Tensor& input) override;
  StatusOr<Tensor> Backward(int chunk, int microbatch, const Tensor& d_output) override;

  // Sums over the step's micro-batches of this rank's share of the loss, f64
  // [kNumLosses] on the context (model/model.h): cross_entropy on the last
  // stage only, aux and z of this rank's MoE layers, total = their sum.
  const Tensor& sums() const { return sums_; }

 private:
  Status Check(int chunk, int microbatch) const;

  std::vector<MoeTransformer*> chunks_;
  const ExecContext ctx_;
  std::vector<Batch> batches_;
  // [chunk][micro-batch]: the input from Forward until its Backward.
  std::vector<std::vector<Tensor>> inputs_;
  Tensor sums_;
};

}  // namespace scalemoe
