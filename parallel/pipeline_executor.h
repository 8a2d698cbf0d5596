// PipelineExecutor: runs one stage's pipeline schedule
// (parallel/pipeline_schedule.h) for one training step, moving activations
// and their gradients between neighbouring stages with Send/Recv on the pp
// group. PipelineStage is the seam to the model: the executor owns the order
// and the communication, the stage owns the compute and its caches.
//
// Activations crossing a stage boundary have one fixed shape and dtype for
// every micro-batch ([B*T, C] in the model), so receivers allocate before
// the message arrives. Tags: a boundary between virtual stage j = c*p + s
// (chunk c of rank s) and j + 1 carries micro-batch mb's activation with tag
// 2*(c*m + mb) and its gradient with 2*(c*m + mb) + 1 (c = 0 without
// interleaving: 2*mb and 2*mb + 1); per (peer, tag) messages are matched in
// order, so consecutive steps reuse the tags safely. Tags stay below
// kPipelineTagLimit (the trainer's own messages use 30000 and up): Create
// refuses 2*v*m + 1 >= kPipelineTagLimit.
//
// Interleaved 1F1B (num_chunks = v >= 2): peers are rank s-1 and s+1 mod p;
// the "first stage" below means virtual stage 0 (rank 0 chunk 0) and the
// "last stage" virtual stage p*v - 1 (rank p-1 chunk v-1); every other
// (rank, chunk) receives and sends.
//
// Memory: a received input activation stays alive (the stage may keep a
// handle to it) until that (chunk, micro-batch)'s Backward returns; the
// executor counts the (chunk, micro-batch) pairs between Forward and
// Backward ("stashed") and reports the peak: min(p - stage, m) under 1F1B,
// m under GPipe, PeakInFlightMicrobatches(schedule()) in general. Under the
// interleaved schedule an input may also be received a few steps before
// its Forward (see pipeline_schedule.h); that buffer is not counted.
// A stage that keeps its forward caches between Forward and Backward
// (model/pipeline_model_stage.h under train.recompute=NONE) holds them for
// the same stashed pairs.
//
// Errors: a failed Send/Recv, a stage's error, or a tensor of the wrong
// shape ends the step with a Status naming the stage, the micro-batch and
// the action. Every pp rank must run the same kind and micro-batch count.
// Not thread-safe; one executor per rank.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/pipeline_schedule.h"

namespace scalemoe {

// One pipeline stage's compute for one step: Forward(chunk, mb) is called
// once per model chunk and micro-batch, then later Backward(chunk, mb) once,
// in the schedule's order (several forwards, of several chunks under the
// interleaved schedule, may precede the first backward, so the stage keeps
// what Backward needs per (chunk, micro-batch), not only for the last
// Forward). chunk is always 0 for GPipe and 1F1B; under interleaved 1F1B
// chunk c of rank s is virtual stage c*p + s, and "first stage"/"last stage"
// below mean virtual stage 0 (rank 0 chunk 0) / p*v - 1 (rank p-1 chunk v-1).
class PipelineStage {
 public:
  virtual ~PipelineStage() = default;

  // input: the previous (virtual) stage's activation of micro-batch
  // `microbatch` (shape PipelineExecutorOptions::activation_shape;
  // undefined on the first stage, which reads its own tokens for
  // `microbatch`). Returns the output activation to send to the next stage
  // (that shape and dtype), or an undefined Tensor on the last stage, which
  // computes and keeps the micro-batch's loss itself (already scaled for
  // accumulation). The executor sends the output before it calls anything
  // else on the stage; the stage may reuse its storage afterwards.
  virtual StatusOr<Tensor> Forward(int chunk, int microbatch, const Tensor& input) = 0;

  // d_output: gradient of Forward(chunk, microbatch)'s output, from the
  // next stage (undefined on the last stage: the backward starts from its
  // loss). Accumulates parameter gradients; returns the gradient of
  // `input` (activation shape) to send to the previous stage, or an
  // undefined Tensor on the first stage.
  virtual StatusOr<Tensor> Backward(int chunk, int microbatch, const Tensor& d_output) = 0;
};

// Point-to-point tags of the pipeline are below this (the trainer's own
// messages use 30000 and 30001).
inline constexpr int kPipelineTagLimit = 30000;

struct PipelineExecutorOptions {
  PipelineScheduleKind schedule = PipelineScheduleKind::kOneFOneB;
  int num_microbatches = 1;  // gradient-accumulation steps of one optimizer step
  int num_chunks = 1;        // model chunks per rank: >= 2 for kInterleaved1F1B, else 1
  Shape activation_shape;    // [B*T, C]
  DType activation_dtype = DType::kF32;
  Device activation_device = Device::kCPU;  // where receive buffers live
  ExecContext ctx;  // the stages' context: sends and receives are ordered on it
};

struct PipelineStepStats {
  int stage = 0, num_stages = 1, num_microbatches = 1, num_chunks = 1;
  int peak_stashed_microbatches = 0;  // (chunk, micro-batch) pairs, measured over the step
  int64_t peak_stashed_bytes = 0;     // received input activations held at the peak
  double bubble_fraction = 0;         // (p - 1) / (v*m + p - 1)
  int sends = 0, recvs = 0;           // point-to-point calls this step
};

class PipelineExecutor {
 public:
  // pp: this rank's pipeline group (stage = pp.rank(), stages = pp.size());
  // must outlive the executor. InvalidArgument for a bad micro-batch or
  // chunk count (see BuildPipelineSchedule), tags that would reach
  // kPipelineTagLimit, an empty activation shape, or a dtype that is not
  // floating point.
  static StatusOr<PipelineExecutor> Create(Communicator& pp,
                                           const PipelineExecutorOptions& options);

  // Runs every action of this stage's schedule for one step.
  StatusOr<PipelineStepStats> RunStep(PipelineStage& stage);

  int stage() const { return stage_; }
  int num_stages() const { return num_stages_; }
  const std::vector<PipelineAction>& schedule() const { return actions_; }

 private:
  PipelineExecutor(Communicator& pp, PipelineExecutorOptions options,
                   std::vector<PipelineAction> actions);
  Status Run(const PipelineAction& action, PipelineStage& stage, PipelineStepStats& stats);
  Status CheckActivation(const Tensor& t, const PipelineAction& action, const char* what) const;
  // Virtual stage 0 / the last virtual stage (stage 0 / p - 1 without chunks).
  bool IsFirst(int chunk) const { return stage_ == 0 && chunk == 0; }
  bool IsLast(int chunk) const {
    return stage_ == num_stages_ - 1 && chunk == options_.num_chunks - 1;
  }
  int Slot(const PipelineAction& a) const {
    return a.chunk * options_.num_microbatches + a.microbatch;
  }
  // Tags of the boundary above (up = true) or below chunk `chunk` of this
  // rank; see the file comment.
  int Tag(const PipelineAction& a, bool up, bool grad) const;

  Communicator* pp_;
  PipelineExecutorOptions options_;
  std::vector<PipelineAction> actions_;
  int stage_ = 0, num_stages_ = 1;
  // Per (chunk, micro-batch) at Slot(), during a step: the received input
  // (kept until its Backward), the output waiting for SendActivation, the
  // received output gradient and the input gradient waiting for SendGrad.
  std::vector<Tensor> inputs_, outputs_, d_outputs_, d_inputs_;
  int stashed_ = 0;
  int64_t stashed_bytes_ = 0;
};

}  // namespace scalemoe
