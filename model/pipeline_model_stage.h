// PipelineModelStage: this rank's MoeTransformer stage as the pipeline
// executor's PipelineStage (parallel/pipeline_executor.h), over one step's
// micro-batches.
//
// The model keeps one forward cache while a pipeline has several
// micro-batches in flight, so a stage recomputes instead of caching:
// - before the last stage, Forward(mb) runs the stage's forward (its output
//   goes to the next stage) and keeps the input handle; Backward(mb) reruns
//   that forward from the same input, then the backward;
// - the last stage's Forward(mb) only keeps the input; Backward(mb) runs the
//   forward (the loss) and the backward back to back.
// The rerun sees the same input and parameters, so gradients equal the
// unpipelined model's. Every MoE layer sees each micro-batch the same number
// of times per step (2 before the last stage, 1 on it), so its accumulated
// expert loads are exactly that multiple of the single-rank ones and the
// sign-based expert-bias update (moe/router.cc) is unchanged; the layer's
// stats() are those of its last forward, as on one rank.
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
  // model and the batches' storage must outlive the stage.
  PipelineModelStage(MoeTransformer& model, const ExecContext& ctx, std::vector<Batch> batches);

  StatusOr<Tensor> Forward(int microbatch, const Tensor& input) override;
  StatusOr<Tensor> Backward(int microbatch, const Tensor& d_output) override;

  // Sums over the step's micro-batches of this stage's share of the loss:
  // cross_entropy on the last stage only, aux and z of this stage's MoE
  // layers, total = their sum.
  const LossBreakdown& sums() const { return sums_; }

 private:
  Status CheckMicrobatch(int microbatch) const;
  void Add(const LossBreakdown& loss);

  MoeTransformer& model_;
  const ExecContext ctx_;
  std::vector<Batch> batches_;
  std::vector<Tensor> inputs_;  // per micro-batch, from Forward until its Backward
  LossBreakdown sums_;
};

}  // namespace scalemoe
