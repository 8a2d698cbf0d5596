// MicroBatchGraph: train.cuda_graphs. One micro-batch's forward and backward
// (MoeTransformer::ForwardStage with gradients, then Backward) is captured
// into a CUDA graph (core/cuda_graph.h) and replayed for the micro-batches
// after it: one launch instead of a launch per op, and none of the host
// work that queues them.
//
// A replay uses the addresses of the capture, so:
// - each batch is copied into two device buffers kept here, which the graph
//   reads (the ids are checked on the host first);
// - the eager work between micro-batches (a step's fold before them; the
//   unfold, the optimizer and the logging after) must leave everything the
//   graph reads where it was. The allocator traces that work's allocations
//   (core/allocator.h); when the trace differs from the one the capture
//   followed, the micro-batch is captured again;
// - an eager forward (evaluation, an op-timed step) replaces the model's
//   caches: Invalidate() drops the graph and the next micro-batch captures;
// - the loss scale rides on the captured GEMMs as a constant (their alpha):
//   a micro-batch with another scale captures again. (The train loop's
//   scale, 1 / the accumulation, is the same for a whole run.)
// The first micro-batch runs eagerly: the allocator then holds one
// micro-batch's blocks, which the capture takes over without cudaMalloc.
// The losses are the same bits as the eager path's
// (tests/launch/trainer_cuda_graph_test.cc).
#pragma once

#include <memory>
#include <vector>

#include "core/context.h"
#include "core/cuda_graph.h"
#include "model/model.h"

namespace scalemoe {

class MicroBatchGraph {
 public:
  MicroBatchGraph(const ExecContext& ctx, MoeTransformer& model) : ctx_(ctx), model_(model) {}

  // One training micro-batch: host `tokens` and `targets` (checked by
  // MoeTransformer::CheckBatch), the backward scaled by `loss_grad_scale`.
  // `first_of_step`: the step's eager work ran since the last call. Returns
  // the losses [kNumLosses] f64 on the device, valid until the next call.
  StatusOr<Tensor> Run(const Tensor& tokens, const Tensor& targets, double loss_grad_scale,
                       bool first_of_step);
  // An eager forward ran (or will): the model's caches are not the graph's.
  void Invalidate();

  struct Stats {
    int64_t replays = 0, captures = 0, eager = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  StatusOr<Tensor> RunEager(const Tensor& tokens, const Tensor& targets, double loss_grad_scale);
  StatusOr<Tensor> Capture(const Tensor& tokens, const Tensor& targets, double loss_grad_scale);
  Status Upload(const Tensor& tokens, const Tensor& targets);

  ExecContext ctx_;
  MoeTransformer& model_;
  std::unique_ptr<CudaGraph> graph_;
  Tensor tokens_, targets_;  // the graph's inputs on the device
  Tensor losses_;            // the graph's output
  double scale_ = 0.0;       // the loss_grad_scale the graph was captured with
  bool warm_ = false;        // an eager micro-batch filled the allocator's cache
  // The allocations of the eager work before a step's first micro-batch
  // (0) and between micro-batches (1) that the graph was captured after;
  // known[w]: recorded since the capture.
  std::vector<void*> trace_[2];
  bool known_[2] = {false, false};
  // Captures with no replay between: the eager work moves the graph's
  // inputs every step. After a few the graph is given up (a warning says so).
  int captures_in_a_row_ = 0;
  bool given_up_ = false;
  Stats stats_;
};

}  // namespace scalemoe
