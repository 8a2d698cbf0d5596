// Communicator: the only way layers, the optimizer and checkpoints talk to
// other ranks. One Communicator is bound to one process group (a set of
// global ranks; rank() is the position inside it). Backends: MPI for host
// memory (parallel/mpi_communicator.h), NCCL for CUDA tensors
// (parallel/nccl_communicator.h, built with the CUDA backend), and an
// in-process fake for unit tests (parallel/fake_communicator.h).
//
// Two kinds of call:
// - Tensor collectives take the ExecContext the tensors live on and are
//   ordered on its stream: on the CPU they complete before returning; on
//   CUDA a device-native backend (NCCL) queues them on the stream, and a
//   host backend (MPI, the fake) stages the tensors through host memory
//   (a copy down, the host collective, a copy up: slow, but every layout's
//   GPU code path runs with several ranks on one GPU). Callers never branch.
// - Host collectives (the *Host calls) move small CPU arrays of control
//   values — counts that size an exchange, strings, flags, losses for a log
//   line — synchronously, never on a stream, whatever the backend.
//
// Contract (every backend implements all of it):
// - Tensors are contiguous and of the same dtype on every rank; counts are
//   in elements.
// - Collectives are called by every rank of the group in the same order.
// - Synchronous calls return once the result is in place on this rank (on
//   CUDA: once queued, ordered before later work on the context's stream).
// - Async calls return a Work handle; the buffers must stay untouched until
//   Wait() returns. (On CUDA, Wait makes the caller's stream wait, not the host.)
// - Errors (a dead peer, a mismatched call, an MPI/NCCL failure) become a
//   Status naming the collective, the group and the rank; never a hang that
//   the backend can detect.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/context.h"
#include "core/status.h"
#include "core/tensor.h"

namespace scalemoe {

enum class ReduceOp : uint8_t { kSum = 0, kMax = 1, kMin = 2 };

struct AllReduceOptions {
  ReduceOp op = ReduceOp::kSum;
};
struct ReduceScatterOptions {
  ReduceOp op = ReduceOp::kSum;
};
struct AllGatherOptions {};
struct AllToAllOptions {};
struct BroadcastOptions {
  int root = 0;  // group rank
};
struct SendRecvOptions {
  int tag = 0;
};

// Handle of an asynchronous collective.
class Work {
 public:
  virtual ~Work() = default;
  // Blocks until done; returns the collective's status. Call once.
  virtual Status Wait() = 0;
};

// A Work that finished before it was returned (backends that complete an
// "async" call synchronously): Wait() reports `status`.
class CompletedWork : public Work {
 public:
  explicit CompletedWork(Status status) : status_(std::move(status)) {}
  Status Wait() override { return status_; }

 private:
  Status status_;
};

// A device-native backend (NCCL): tensor collectives on device memory,
// queued on the context's stream (ordered as the Communicator contract
// says). A Communicator that has one (device_collectives() non-null) sends
// CUDA tensors there instead of staging them through host memory; CPU
// tensors still take the host backend. Arguments are as the Communicator
// calls of the same name without "Device".
class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  virtual Status DeviceAllReduce(const ExecContext& ctx, const Tensor& tensor,
                                 const AllReduceOptions& options) = 0;
  virtual StatusOr<std::unique_ptr<Work>> DeviceAllReduceAsync(const ExecContext& ctx,
                                                               const Tensor& tensor,
                                                               const AllReduceOptions& options) = 0;
  virtual Status DeviceReduceScatter(const ExecContext& ctx, const Tensor& input,
                                     const Tensor& output, const ReduceScatterOptions& options) = 0;
  virtual StatusOr<std::unique_ptr<Work>> DeviceReduceScatterAsync(
      const ExecContext& ctx, const Tensor& input, const Tensor& output,
      const ReduceScatterOptions& options) = 0;
  virtual Status DeviceAllGather(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                                 const AllGatherOptions& options) = 0;
  virtual Status DeviceAllToAllV(const ExecContext& ctx, const Tensor& input,
                                 const std::vector<int64_t>& send_counts, const Tensor& output,
                                 const std::vector<int64_t>& recv_counts,
                                 const AllToAllOptions& options) = 0;
  virtual Status DeviceBroadcast(const ExecContext& ctx, const Tensor& tensor,
                                 const BroadcastOptions& options) = 0;
  virtual Status DeviceSend(const ExecContext& ctx, const Tensor& tensor, int peer,
                            const SendRecvOptions& options) = 0;
  virtual Status DeviceRecv(const ExecContext& ctx, const Tensor& tensor, int peer,
                            const SendRecvOptions& options) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  // Human-readable name of the group ("dp[0,2]"), used in error messages.
  virtual const std::string& name() const = 0;

  // ---- Tensor collectives: tensors on ctx.device(), ordered on its stream.
  // In place: every rank ends with the reduction of all ranks' `tensor`.
  Status AllReduce(const ExecContext& ctx, const Tensor& tensor,
                   const AllReduceOptions& options = {});
  StatusOr<std::unique_ptr<Work>> AllReduceAsync(const ExecContext& ctx, const Tensor& tensor,
                                                 const AllReduceOptions& options = {});
  // input [size * n] -> output [n]: rank r gets the reduction of every rank's
  // chunk r.
  Status ReduceScatter(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                       const ReduceScatterOptions& options = {});
  StatusOr<std::unique_ptr<Work>> ReduceScatterAsync(const ExecContext& ctx, const Tensor& input,
                                                     const Tensor& output,
                                                     const ReduceScatterOptions& options = {});
  // input [n] -> output [size * n]: chunk r of the output is rank r's input.
  Status AllGather(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                   const AllGatherOptions& options = {});
  // Uneven all-to-all over flat buffers: this rank sends send_counts[p]
  // consecutive elements of `input` to rank p (in rank order) and receives
  // recv_counts[p] elements from rank p into `output` (in rank order). Zero
  // counts are fine, including a rank that sends or receives nothing.
  Status AllToAllV(const ExecContext& ctx, const Tensor& input,
                   const std::vector<int64_t>& send_counts, const Tensor& output,
                   const std::vector<int64_t>& recv_counts, const AllToAllOptions& options = {});
  Status Broadcast(const ExecContext& ctx, const Tensor& tensor,
                   const BroadcastOptions& options = {});
  Status Send(const ExecContext& ctx, const Tensor& tensor, int peer,
              const SendRecvOptions& options = {});
  Status Recv(const ExecContext& ctx, const Tensor& tensor, int peer,
              const SendRecvOptions& options = {});

  // ---- Host collectives: CPU tensors of control values, synchronous.
  Status AllReduceHost(const Tensor& tensor, const AllReduceOptions& options = {}) {
    return HostAllReduce(tensor, options);
  }
  Status AllGatherHost(const Tensor& input, const Tensor& output) {
    return HostAllGather(input, output, {});
  }
  Status AllToAllVHost(const Tensor& input, const std::vector<int64_t>& send_counts,
                       const Tensor& output, const std::vector<int64_t>& recv_counts) {
    return HostAllToAllV(input, send_counts, output, recv_counts, {});
  }
  Status BroadcastHost(const Tensor& tensor, const BroadcastOptions& options = {}) {
    return HostBroadcast(tensor, options);
  }
  virtual Status Barrier() = 0;

 protected:
  // The device-native backend, or null: device tensors are then staged
  // through the host backend below.
  virtual DeviceCollectives* device_collectives() { return nullptr; }

  // The backend: collectives over host memory (MPI, the fake, a group of one).
  virtual Status HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) = 0;
  virtual StatusOr<std::unique_ptr<Work>> HostAllReduceAsync(const Tensor& tensor,
                                                             const AllReduceOptions& options) = 0;
  virtual Status HostReduceScatter(const Tensor& input, const Tensor& output,
                                   const ReduceScatterOptions& options) = 0;
  virtual StatusOr<std::unique_ptr<Work>> HostReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) = 0;
  virtual Status HostAllGather(const Tensor& input, const Tensor& output,
                               const AllGatherOptions& options) = 0;
  virtual Status HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                               const Tensor& output, const std::vector<int64_t>& recv_counts,
                               const AllToAllOptions& options) = 0;
  virtual Status HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) = 0;
  virtual Status HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) = 0;
  virtual Status HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) = 0;

 private:
  // Device tensors through a host backend: copy down, `op` on host copies,
  // copy the written ones up (parallel/communicator.cc).
  Status Staged(const ExecContext& ctx, const char* op, const std::vector<Tensor>& reads,
                const std::vector<Tensor>& writes,
                const std::function<Status(const std::vector<Tensor>& reads,
                                           const std::vector<Tensor>& writes)>& run);
};

}  // namespace scalemoe
