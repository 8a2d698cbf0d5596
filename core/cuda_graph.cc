#include "core/cuda_graph.h"

#include "absl/strings/str_cat.h"
#include "core/context_state.h"

namespace scalemoe {

Status CudaGraph::BeginCapture(const ExecContext& ctx) {
#if SCALEMOE_CUDA
  ExecContext::State& s = *ctx.state_;
  if (s.cuda == nullptr) {
    return absl::FailedPreconditionError("CUDA graphs need a CUDA context (train.device: CUDA)");
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    SM_CHECK_MSG(!s.capturing, "CudaGraph::BeginCapture: the stream is already captured");
  }
  SM_RETURN_IF_ERROR(ctx.status());  // an earlier fault would surface inside the capture
  SM_RETURN_IF_ERROR(s.cuda->BeginCapture());
  s.allocator->BeginPrivatePool();
  std::lock_guard<std::mutex> lock(s.mu);
  s.capturing = true;
  s.capture_effects.clear();
  s.capture_reads = s.counters.host_reads.load();
  s.capture_uploads = s.counters.host_uploads.load();
  return absl::OkStatus();
#else
  (void)ctx;
  return absl::FailedPreconditionError(
      "CUDA graphs need the CUDA backend: rebuild where nvcc is found");
#endif
}

StatusOr<std::unique_ptr<CudaGraph>> CudaGraph::EndCapture(const ExecContext& ctx) {
#if SCALEMOE_CUDA
  ExecContext::State& s = *ctx.state_;
  std::vector<std::function<void()>> effects;
  int64_t reads = 0, uploads = 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    SM_CHECK_MSG(s.capturing, "CudaGraph::EndCapture without BeginCapture");
    s.capturing = false;
    effects = std::move(s.capture_effects);
    s.capture_effects.clear();
    reads = s.counters.host_reads.load() - s.capture_reads;
    uploads = s.counters.host_uploads.load() - s.capture_uploads;
  }
  const int pool = s.allocator->EndPrivatePool();
  StatusOr<void*> exec = s.cuda->EndCapture();
  // The first cause first: a host read inside the capture waited for work
  // that never ran, an upload would replay from a host buffer long gone
  // (either also invalidates the capture); else the first op that failed
  // inside it (the context's sticky error names it); else the capture's
  // own error.
  Status problem;
  if (reads > 0 || uploads > 0) {
    problem = absl::FailedPreconditionError(absl::StrCat(
        "the captured work read the device from the host ", reads, " time(s) and uploaded ",
        uploads, " host buffer(s); a CUDA graph can replay neither"));
  }
  if (problem.ok()) problem = ctx.status();
  if (problem.ok()) problem = exec.status();
  if (!problem.ok()) {
    if (exec.ok()) CudaDevice::DestroyGraph(*exec);
    s.cuda->ClearLastError();  // the runtime's per-thread error: not this context's
    s.allocator->RetirePrivatePool(pool);
    return problem;
  }
  return std::unique_ptr<CudaGraph>(new CudaGraph(ctx, *exec, pool, std::move(effects)));
#else
  (void)ctx;
  return absl::FailedPreconditionError(
      "CUDA graphs need the CUDA backend: rebuild where nvcc is found");
#endif
}

CudaGraph::~CudaGraph() {
#if SCALEMOE_CUDA
  CudaDevice::DestroyGraph(exec_);
  // Queued replays still use the pool's blocks: they go to the shared cache,
  // whose later users are queued after those replays on the same stream.
  ctx_.state_->allocator->RetirePrivatePool(pool_);
#endif
}

Status CudaGraph::Launch(bool host_effects) const {
#if SCALEMOE_CUDA
  SM_RETURN_IF_ERROR(ctx_.state_->cuda->LaunchGraph(exec_));
  if (host_effects) {
    for (const auto& effect : effects_) effect();
  }
  return absl::OkStatus();
#else
  (void)host_effects;
  return absl::FailedPreconditionError("CUDA graphs need the CUDA backend");
#endif
}

}  // namespace scalemoe
