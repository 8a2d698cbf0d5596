// ExecContext::State: what a context's copies share. Internal to core/
// (context.cc and cuda_graph.cc, which records the stream's work).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "core/context.h"

#if SCALEMOE_CUDA
#include "core/cuda/device_runtime.h"
#endif

namespace scalemoe {

struct ExecContext::State {
  Device device = Device::kCPU;
  int ordinal = 0;
  void* stream = nullptr;
  std::shared_ptr<CachingAllocator> allocator;
  ExecCounters counters;
  std::mutex mu;  // guards error, workspace and the capture's fields
  Status error;
  std::shared_ptr<Storage> workspace;
  // While the stream is captured (core/cuda_graph.h): the host effects to
  // repeat at each replay, and the host reads and uploads counted when the
  // capture began.
  bool capturing = false;
  std::vector<std::function<void()>> capture_effects;
  int64_t capture_reads = 0, capture_uploads = 0;
#if SCALEMOE_CUDA
  std::unique_ptr<CudaDevice> cuda;  // stream and libraries; destroyed last
#endif
  ~State() {
#if SCALEMOE_CUDA
    if (cuda) (void)cuda->Synchronize();
#endif
    workspace.reset();
    if (allocator) allocator->ReleaseCache();
  }
};

}  // namespace scalemoe
