// ExecContext: the execution seam. Every op, allocation and device→host read
// of a training step goes through one; layers never branch on the device.
//
// A context owns (shared by its copies — it is a cheap handle, passed by
// const reference):
// - the device and its compute stream (a cudaStream_t on CUDA; none on CPU);
// - a caching allocator for activations and temporaries (core/allocator.h:
//   CPU blocks, or stream-ordered CUDA blocks), with a poison mode for tests;
// - a workspace (scratch bytes for libraries such as cuBLASLt);
// - lazily created library handles (core/cuda/cuda_libraries.h);
// - a sticky error: an op that cannot run (an op without an implementation
//   for this device, an asynchronous CUDA fault) records the first failure
//   with Fail(); callers check status() at layer boundaries, like CUDA's own
//   error model, so ops stay void and cheap;
// - counters, among them the device→host reads a step makes (ToHost is the
//   only way layers and the trainer read device data on the host).
// No globals: a process may hold several contexts (tests run ranks as
// threads, each with its own), and every op receives the one it runs on.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "core/allocator.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

struct CudaLibraries;  // core/cuda/cuda_libraries.h

struct ExecCounters {
  std::atomic<int64_t> host_reads{0};       // ToHost calls (each a sync on CUDA)
  std::atomic<int64_t> host_read_bytes{0};
  std::atomic<int64_t> host_uploads{0};     // host→device copies (ToDevice, CopyAcross)
};

struct CpuContextOptions {
  bool poison = PoisonAllocationsFromEnv();  // 0xFF-fill every block handed out
};

class ExecContext {
 public:
  // A CPU context (as Cpu()).
  ExecContext();
  static ExecContext Cpu(const CpuContextOptions& options = {});
  // A context on CUDA device `ordinal` with its own non-blocking stream.
  // Fails without the CUDA backend or without such a device.
  static StatusOr<ExecContext> Cuda(int ordinal = 0);
  // CUDA devices visible to this process (0 without the CUDA backend).
  static int CudaDeviceCount();

  Device device() const;
  void* stream() const;  // cudaStream_t; null on the CPU
  int device_ordinal() const;

  // A tensor on this context's device from its caching allocator; contents
  // undefined (NaN bytes in poison mode). Out of memory aborts with a
  // message naming the size and the fix (callers cannot recover mid-step).
  Tensor Empty(const Shape& shape, DType dtype) const;
  Tensor Zeros(const Shape& shape, DType dtype) const;
  // Scratch memory of at least nbytes, valid for work queued on this
  // context's stream until the next Workspace call.
  void* Workspace(size_t nbytes) const;

  // The first error recorded (OK if none); on CUDA also an asynchronous
  // fault of earlier work. Does not synchronise.
  Status status() const;
  void Fail(const Status& status) const;

  // A host copy of `t` (t itself when it is already on the host). Counted
  // in counters().host_reads: on CUDA each call waits for the stream.
  Tensor ToHost(const Tensor& t) const;
  // A copy of host tensor `t` on this context's device (t itself on the CPU).
  Tensor ToDevice(const Tensor& t) const;
  // Copies src into dst (same dtype and numel, contiguous) across host and
  // device memory in either direction, ordered on the stream; a copy into
  // host memory returns once it has landed. Not counted as a host read
  // (communication staging uses it; layers read through ToHost).
  Status CopyAcross(const Tensor& src, const Tensor& dst) const;
  // Waits until all work queued on the stream is done (no-op on the CPU).
  Status Synchronize() const;

  ExecCounters& counters() const;
  AllocatorStats allocator_stats() const;
  CachingAllocator& allocator() const;
  CudaLibraries* cuda_libraries() const;  // created on first use; null on the CPU

  // Host-side bookkeeping that goes with queued work (a layer's count of
  // this step's micro-batches): runs `effect` now and, while the stream is
  // captured into a CUDA graph (core/cuda_graph.h), again after each replay
  // of that graph, which runs no host code of its own.
  void HostEffect(const std::function<void()>& effect) const;
  // Whether the stream is being captured into a CUDA graph.
  bool capturing() const;

 private:
  friend class CudaGraph;
  struct State;
  explicit ExecContext(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace scalemoe
