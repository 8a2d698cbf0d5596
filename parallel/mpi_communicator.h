// MPI backend for CPU tensors: MpiCommunicator, a Communicator over one
// MPI_Comm. The launcher creates them through parallel/mpi_runtime.h
// (CreateMpiProcessGroups) and never sees MPI types; this header is for the
// backend and its tests.
//
// Every communicator we create has MPI_ERRORS_RETURN set, so MPI failures
// become a Status naming the collective, the group ("dp[0,2]") and the rank.
// Threading: MPI is initialised FUNNELED: only the thread that created the
// MpiRuntime may call into these communicators.
// Lifetime: destroy every MpiCommunicator (ProcessGroups) before the
// MpiRuntime, since MPI_Finalize must come last.
// Hangs: with a CollectiveWatchdog, every blocking call (and Work::Wait) is
// watched: one that does not return in time ends the process through the
// watchdog's handler (parallel/collective_watchdog.h).
// Dtypes: f32, f64, i32, i64 everywhere; bf16 moves as raw 16-bit words
// (AllGather, AllToAllV, Broadcast, Send/Recv) and is refused by reductions.
// Counts above INT_MAX elements are refused (MPI's int counts).
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/collective_watchdog.h"
#include "parallel/communicator.h"
#include "parallel/mpi_runtime.h"
#include "parallel/process_groups.h"

namespace scalemoe {

// MPI's text for an error code ("code N" when MPI has none).
std::string MpiErrorString(int code);

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed on destruction while MPI is still up)
  // and sets MPI_ERRORS_RETURN on it. `watchdog` (may be null) watches every
  // blocking call and must outlive the communicator.
  static StatusOr<std::unique_ptr<MpiCommunicator>> Adopt(MPI_Comm comm, std::string name,
                                                          CollectiveWatchdog* watchdog = nullptr);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  Status Barrier() override;

 protected:
  Status HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostAllReduceAsync(const Tensor& tensor,
                                                     const AllReduceOptions& options) override;
  Status HostReduceScatter(const Tensor& input, const Tensor& output,
                           const ReduceScatterOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) override;
  Status HostAllGather(const Tensor& input, const Tensor& output,
                       const AllGatherOptions& options) override;
  Status HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                       const Tensor& output, const std::vector<int64_t>& recv_counts,
                       const AllToAllOptions& options) override;
  Status HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) override;
  Status HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) override;
  Status HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) override;

 private:
  MpiCommunicator(MPI_Comm comm, std::string name, int rank, int size,
                  CollectiveWatchdog* watchdog)
      : comm_(comm), name_(std::move(name)), rank_(rank), size_(size), watchdog_(watchdog) {}
  CollectiveWatchdog::Scope Watch(const char* op) const {
    return CollectiveWatchdog::Watch(watchdog_, op, name_, rank_);
  }
  // Status of an MPI return code for collective `op`.
  Status Check(int code, const char* op) const;
  Status CheckTensor(const char* op, const Tensor& t, bool reduces) const;
  Status CheckChunks(const char* op, const Tensor& chunk, const Tensor& whole) const;

  MPI_Comm comm_;
  std::string name_;
  int rank_, size_;
  CollectiveWatchdog* watchdog_;  // not owned; may be null
};

}  // namespace scalemoe
