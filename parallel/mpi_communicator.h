// MPI backend for CPU tensors: MpiRuntime (process-wide MPI init/finalize,
// RAII), MpiCommunicator (a Communicator over one MPI_Comm) and
// CreateMpiProcessGroups (every axis's communicator via MPI_Comm_split).
//
// Every communicator we create has MPI_ERRORS_RETURN set, so MPI failures
// become a Status naming the collective, the group ("dp[0,2]") and the rank.
// Threading: MPI is initialised FUNNELED: only the thread that created the
// MpiRuntime may call into these communicators.
// Lifetime: destroy every MpiCommunicator (ProcessGroups) before the
// MpiRuntime, since MPI_Finalize must come last.
// Dtypes: f32, f64, i32, i64 everywhere; bf16 moves as raw 16-bit words
// (AllGather, AllToAllV, Broadcast, Send/Recv) and is refused by reductions.
// Counts above INT_MAX elements are refused (MPI's int counts).
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace scalemoe {

// Initialises MPI (MPI_THREAD_FUNNELED) unless someone already did, and
// finalises it on destruction if it initialised it. Without mpirun, Open MPI
// starts as a singleton: a world of one.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // Not OK when MPI_Init_thread failed (the message says why and what to
  // check); world_rank/world_size are then 0 and 1.
  const Status& status() const { return status_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

 private:
  Status status_;
  bool initialized_here_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
};

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction while MPI is still up)
  // and sets MPI_ERRORS_RETURN on it.
  static StatusOr<std::unique_ptr<MpiCommunicator>> Adopt(MPI_Comm comm, std::string name);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  Status AllReduce(const Tensor& tensor, const AllReduceOptions& options = {}) override;
  StatusOr<std::unique_ptr<Work>> AllReduceAsync(const Tensor& tensor,
                                                 const AllReduceOptions& options = {}) override;
  Status ReduceScatter(const Tensor& input, const Tensor& output,
                       const ReduceScatterOptions& options = {}) override;
  StatusOr<std::unique_ptr<Work>> ReduceScatterAsync(
      const Tensor& input, const Tensor& output,
      const ReduceScatterOptions& options = {}) override;
  Status AllGather(const Tensor& input, const Tensor& output,
                   const AllGatherOptions& options = {}) override;
  Status AllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                   const Tensor& output, const std::vector<int64_t>& recv_counts,
                   const AllToAllOptions& options = {}) override;
  Status Broadcast(const Tensor& tensor, const BroadcastOptions& options = {}) override;
  Status Send(const Tensor& tensor, int peer, const SendRecvOptions& options = {}) override;
  Status Recv(const Tensor& tensor, int peer, const SendRecvOptions& options = {}) override;
  Status Barrier() override;

 private:
  MpiCommunicator(MPI_Comm comm, std::string name, int rank, int size)
      : comm_(comm), name_(std::move(name)), rank_(rank), size_(size) {}
  // Status of an MPI return code for collective `op`.
  Status Check(int code, const char* op) const;
  Status CheckTensor(const char* op, const Tensor& t, bool reduces) const;
  Status CheckChunks(const char* op, const Tensor& chunk, const Tensor& whole) const;

  MPI_Comm comm_;
  std::string name_;
  int rank_, size_;
};

// This rank's communicators for `sizes` over MPI_COMM_WORLD (MPI must be
// initialised). InvalidArgument when `sizes` does not tile the world.
StatusOr<ProcessGroups> CreateMpiProcessGroups(const GridSizes& sizes);

}  // namespace scalemoe
