// LocalCommunicator: the group of one rank, without MPI. A world of one (a
// plain `scalemoe train` without mpirun, or a test's single-rank reference
// run) gets one of these on every axis, so callers never branch on the world
// size: reductions leave the tensor as it is, gathers and scatters copy.
#pragma once

#include <string>

#include "parallel/communicator.h"
#include "parallel/process_groups.h"

namespace scalemoe {

class LocalCommunicator : public Communicator {
 public:
  explicit LocalCommunicator(std::string name) : name_(std::move(name)) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }

  Status Barrier() override { return absl::OkStatus(); }

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
  std::string name_;
};

// Process groups of a world of one: every axis a LocalCommunicator.
ProcessGroups LocalProcessGroups();

}  // namespace scalemoe
