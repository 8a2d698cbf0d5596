// CudaGraph: a stretch of a CUDA context's stream work recorded once and
// replayed (CUDA graphs): one launch instead of hundreds, none of the host
// code that queued them. What the recording may contain:
// - kernels and device-to-device copies on the context's stream, reading and
//   writing memory whose addresses stay put: a replay uses the recorded
//   ones. Blocks allocated during the capture come from a private pool of
//   the allocator (core/allocator.h) and stay the graph's while it lives;
// - no host read (ToHost: it would wait for work that is not running) and
//   no upload from host memory (the replay would read the host buffer as it
//   is then): EndCapture fails naming the counts;
// - host bookkeeping only through ExecContext::HostEffect, which Launch
//   repeats after each replay.
// Built for train.cuda_graphs (launch/micro_batch_graph.h); CPU contexts
// and builds without the CUDA backend cannot capture.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/context.h"
#include "core/status.h"

namespace scalemoe {

class CudaGraph {
 public:
  // Starts recording `ctx`'s stream.
  static Status BeginCapture(const ExecContext& ctx);
  // Ends the recording begun on `ctx`: the instantiated graph, or the reason
  // it cannot be replayed. Either way the stream is no longer captured.
  static StatusOr<std::unique_ptr<CudaGraph>> EndCapture(const ExecContext& ctx);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Queues one replay on the context's stream, then runs the host effects
  // (not for the launch right after the capture: the captured host code ran
  // them then).
  Status Launch(bool host_effects = true) const;

 private:
  CudaGraph(ExecContext ctx, void* exec, int pool,
            std::vector<std::function<void()>> effects)
      : ctx_(std::move(ctx)), exec_(exec), pool_(pool), effects_(std::move(effects)) {}

  ExecContext ctx_;
  void* exec_;  // cudaGraphExec_t
  int pool_;    // the allocator's private pool
  std::vector<std::function<void()>> effects_;
};

}  // namespace scalemoe
