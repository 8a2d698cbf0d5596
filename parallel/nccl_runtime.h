// NcclRuntime: what every NCCL communicator of one process shares — the
// device, one communication stream, the events that order it against the
// compute stream, and a monitor thread that turns a failed or stuck
// collective into an error instead of a hang. Built only with the CUDA
// backend (parallel/nccl_communicator.h is its user).
//
// Why one communication stream for all groups: a GPU stream runs in order,
// so every NCCL kernel of this rank runs in the order the host issued it, on
// every rank alike; kernels of two communicators on two streams could be
// scheduled in different orders on different ranks and deadlock (NCCL's
// documentation, "Using multiple NCCL communicators concurrently"). The
// communication stream still runs beside the compute stream: that is the
// overlap of gradient reduction with backward compute.
//
// Failure (the monitor thread): every poll (a tenth of the timeout, 10 ms to
// 1 s) it asks each communicator for NCCL's asynchronous error
// (ncclCommGetAsyncError) and whether its newest collective has finished
// (an event query). An error, or a collective unfinished `timeout` after it
// was queued, aborts every communicator (ncclCommAbort: stuck kernels exit,
// so a host waiting on the compute stream returns), records a sticky error
// naming the rank, the group, the collective and the setting, fails the
// context of the newest collective (ExecContext::Fail, which the trainer
// checks), and calls `on_failure` if given. Every later call on these
// communicators returns the error. The trainer passes no `on_failure`: its
// next collective fails the run, and train_command ends the job. NCCL calls that block the host
// themselves (the first send/recv between two ranks connects them; init and split) are not covered:
// the MPI collective that precedes init is watched by the CollectiveWatchdog.
//
// Threading: the communicators are used by one thread (as MPI's FUNNELED);
// the monitor thread takes mu() to read their state and to abort them.
// Lifetime: shared by the communicators (shared_ptr); the last one destroys
// it, after they have destroyed their NCCL communicators.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/context.h"
#include "core/status.h"
#include "parallel/nccl_options.h"

namespace scalemoe {

class NcclRuntime {
 public:
  // On CUDA device `ordinal`.
  static StatusOr<std::shared_ptr<NcclRuntime>> Create(int ordinal, NcclOptions options);
  ~NcclRuntime();
  NcclRuntime(const NcclRuntime&) = delete;
  NcclRuntime& operator=(const NcclRuntime&) = delete;

  int ordinal() const { return ordinal_; }
  cudaStream_t stream() const { return stream_; }
  const NcclOptions& options() const { return options_; }

  // One communicator's state as the monitor sees it. Created by Track, owned
  // here; fields are guarded by mu().
  struct Tracked {
    ncclComm_t comm = nullptr;  // null once aborted or destroyed
    std::string group;
    int group_rank = 0;
    cudaEvent_t done = nullptr;     // recorded after each collective
    const char* last_op = nullptr;  // non-null while that collective may run
    std::chrono::steady_clock::time_point queued;
  };
  StatusOr<Tracked*> Track(ncclComm_t comm, std::string group, int group_rank);
  // Destroys the communicator (unless aborted) and forgets it.
  void Untrack(Tracked* tracked);

  // Guards every Tracked and the NCCL calls on their communicators.
  std::mutex& mu() { return mu_; }
  // OK, or the failure that aborted the communicators (mu() held).
  const Status& error_locked() const { return error_; }
  // The context of the newest collective, failed with the error (mu() held).
  // Holding it keeps that context alive until the next collective or the
  // runtime's end.
  void set_context_locked(const ExecContext& ctx) { ctx_ = ctx; }

  // Events for asynchronous Work (each owns one until it is waited on).
  StatusOr<cudaEvent_t> TakeEvent();
  void ReturnEvent(cudaEvent_t event);

 private:
  NcclRuntime(int ordinal, NcclOptions options) : ordinal_(ordinal), options_(std::move(options)) {}
  void Loop();
  // Records the failure, aborts every communicator (mu_ held).
  std::string FailLocked(const Tracked& culprit, const std::string& why);

  const int ordinal_;
  const NcclOptions options_;
  cudaStream_t stream_ = nullptr;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  Status error_;
  std::optional<ExecContext> ctx_;
  std::vector<std::unique_ptr<Tracked>> tracked_;
  std::vector<cudaEvent_t> free_events_;
  std::thread monitor_;
};

// Status of a CUDA runtime call made for NCCL work: `what` with the error's
// name and text and the device.
Status NcclCudaStatus(cudaError_t error, const char* what, int ordinal);

}  // namespace scalemoe
