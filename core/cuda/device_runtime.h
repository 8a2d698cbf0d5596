// CudaDevice: what a CUDA ExecContext holds of the CUDA runtime — the device,
// its non-blocking compute stream, the block source of its caching allocator
// (cudaMalloc/cudaFree, counted by the allocator's stats) and the library
// handles. CUDA errors become Status here, naming the call and the device.
// Built only with SCALEMOE_CUDA.
#pragma once

#include <cstddef>
#include <memory>

#include "core/allocator.h"
#include "core/cuda/cuda_libraries.h"
#include "core/status.h"

namespace scalemoe {

class CudaDevice {
 public:
  static StatusOr<std::unique_ptr<CudaDevice>> Create(int ordinal);
  // Visible devices; 0 when the driver finds none (the error is cleared).
  static int Count();
  ~CudaDevice();
  CudaDevice(const CudaDevice&) = delete;
  CudaDevice& operator=(const CudaDevice&) = delete;

  void* stream() const { return stream_; }
  int ordinal() const { return ordinal_; }
  CudaLibraries& libraries() { return libraries_; }
  // cudaMalloc/cudaFree on this device, for the context's allocator.
  std::unique_ptr<BlockSource> DeviceBlocks() const;

  // Stream-ordered: queued on the stream.
  Status MemsetZero(void* ptr, size_t nbytes) const;
  Status CopyToDevice(void* dst, const void* host_src, size_t nbytes) const;
  Status CopyOnDevice(void* dst, const void* src, size_t nbytes) const;
  // Waits for the stream, then returns with dst filled.
  Status CopyToHost(void* host_dst, const void* src, size_t nbytes) const;
  Status Synchronize() const;
  // CUDA graphs (core/cuda_graph.h): records the stream's work from
  // BeginCapture (relaxed mode: the allocator may still cudaMalloc) until
  // EndCapture, which instantiates it; LaunchGraph queues a replay.
  Status BeginCapture() const;
  StatusOr<void*> EndCapture() const;  // a cudaGraphExec_t
  Status LaunchGraph(void* exec) const;
  // Safe while replays are queued: the executable goes when they are done.
  static void DestroyGraph(void* exec);
  // Resets the runtime's last error (cudaGetLastError) after a failure that
  // is already reported, so that later status checks do not see it again.
  void ClearLastError() const;
  // An asynchronous fault of earlier work (cudaGetLastError), as a Status.
  Status LastError() const;

 private:
  CudaDevice(int ordinal, void* stream) : ordinal_(ordinal), stream_(stream) {}
  int ordinal_;
  void* stream_;
  CudaLibraries libraries_;
};

// Status of a CUDA runtime call: OK, or `what` with the error's name and
// text and the device.
Status CudaStatus(int error, const char* what, int ordinal);

}  // namespace scalemoe
