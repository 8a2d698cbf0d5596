// Communicator: the only way layers, the optimizer and checkpoints talk to
// other ranks. One Communicator is bound to one process group (a set of
// global ranks; rank() is the position inside it). Backends: MPI for CPU
// tensors (parallel/mpi_communicator.h), NCCL for CUDA tensors (later), and
// an in-process fake for unit tests (parallel/fake_communicator.h).
//
// Contract (every backend implements all of it):
// - Tensors are contiguous, on the backend's device, and of the same dtype
//   on every rank; counts are in elements.
// - Collectives are called by every rank of the group in the same order.
// - Synchronous calls return once the result is in place on this rank.
// - Async calls return a Work handle; the buffers must stay untouched until
//   Wait() returns. (On CUDA, Wait makes the caller's stream wait, not the host.)
// - Errors (a dead peer, a mismatched call, an MPI/NCCL failure) become a
//   Status naming the collective, the group and the rank; never a hang that
//   the backend can detect.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // in this group
  virtual int size() const = 0;
  // Human-readable name of the group ("dp[0,2]"), used in error messages.
  virtual const std::string& name() const = 0;

  // In place: every rank ends with the reduction of all ranks' `tensor`.
  virtual Status AllReduce(const Tensor& tensor, const AllReduceOptions& options = {}) = 0;
  virtual StatusOr<std::unique_ptr<Work>> AllReduceAsync(const Tensor& tensor,
                                                         const AllReduceOptions& options = {}) = 0;
  // input [size * n] -> output [n]: rank r gets the reduction of every rank's
  // chunk r.
  virtual Status ReduceScatter(const Tensor& input, const Tensor& output,
                               const ReduceScatterOptions& options = {}) = 0;
  virtual StatusOr<std::unique_ptr<Work>> ReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options = {}) = 0;
  // input [n] -> output [size * n]: chunk r of the output is rank r's input.
  virtual Status AllGather(const Tensor& input, const Tensor& output,
                           const AllGatherOptions& options = {}) = 0;
  // Uneven all-to-all over flat buffers: this rank sends send_counts[p]
  // consecutive elements of `input` to rank p (in rank order) and receives
  // recv_counts[p] elements from rank p into `output` (in rank order). Zero
  // counts are fine, including a rank that sends or receives nothing.
  virtual Status AllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                           const Tensor& output, const std::vector<int64_t>& recv_counts,
                           const AllToAllOptions& options = {}) = 0;
  virtual Status Broadcast(const Tensor& tensor, const BroadcastOptions& options = {}) = 0;
  virtual Status Send(const Tensor& tensor, int peer, const SendRecvOptions& options = {}) = 0;
  virtual Status Recv(const Tensor& tensor, int peer, const SendRecvOptions& options = {}) = 0;
  virtual Status Barrier() = 0;
};

}  // namespace scalemoe
