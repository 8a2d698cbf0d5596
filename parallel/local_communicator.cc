#include "parallel/local_communicator.h"

#include <cstring>

namespace scalemoe {
namespace {

Status CopyElements(const Tensor& from, const Tensor& to, int64_t count, const char* what) {
  if (from.dtype() != to.dtype() || from.numel() < count || to.numel() < count) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", from.DebugString(), " -> ",
                                                   to.DebugString(), " for ", count,
                                                   " elements"));
  }
  if (count > 0 && from.raw_data() != to.raw_data()) {
    std::memmove(to.raw_data(), from.raw_data(), count * DTypeSize(from.dtype()));
  }
  return absl::OkStatus();
}

}  // namespace

Status LocalCommunicator::HostAllReduce(const Tensor&, const AllReduceOptions&) {
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<Work>> LocalCommunicator::HostAllReduceAsync(const Tensor& tensor,
                                                                      const AllReduceOptions& o) {
  return std::unique_ptr<Work>(new CompletedWork(HostAllReduce(tensor, o)));
}

Status LocalCommunicator::HostReduceScatter(const Tensor& input, const Tensor& output,
                                            const ReduceScatterOptions&) {
  return CopyElements(input, output, output.numel(), "ReduceScatter");
}

StatusOr<std::unique_ptr<Work>> LocalCommunicator::HostReduceScatterAsync(
    const Tensor& input, const Tensor& output, const ReduceScatterOptions& o) {
  return std::unique_ptr<Work>(new CompletedWork(HostReduceScatter(input, output, o)));
}

Status LocalCommunicator::HostAllGather(const Tensor& input, const Tensor& output,
                                        const AllGatherOptions&) {
  return CopyElements(input, output, input.numel(), "AllGather");
}

Status LocalCommunicator::HostAllToAllV(const Tensor& input,
                                        const std::vector<int64_t>& send_counts,
                                        const Tensor& output,
                                        const std::vector<int64_t>& recv_counts,
                                        const AllToAllOptions&) {
  if (send_counts.size() != 1 || recv_counts.size() != 1 || send_counts[0] != recv_counts[0]) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAllV on ", name_, " (1 rank): counts must be one equal pair"));
  }
  return CopyElements(input, output, send_counts[0], "AllToAllV");
}

Status LocalCommunicator::HostBroadcast(const Tensor&, const BroadcastOptions& options) {
  if (options.root != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Broadcast on ", name_, ": root ", options.root, " of a 1-rank group"));
  }
  return absl::OkStatus();
}

Status LocalCommunicator::HostSend(const Tensor&, int peer, const SendRecvOptions&) {
  return absl::InvalidArgumentError(
      absl::StrCat("Send to rank ", peer, " on ", name_, ": a 1-rank group has no peer"));
}

Status LocalCommunicator::HostRecv(const Tensor&, int peer, const SendRecvOptions&) {
  return absl::InvalidArgumentError(
      absl::StrCat("Recv from rank ", peer, " on ", name_, ": a 1-rank group has no peer"));
}

ProcessGroups LocalProcessGroups() {
  StatusOr<RankGrid> grid = RankGrid::Create(1, GridSizes{});
  SM_CHECK_MSG(grid.ok(), "a world of one always tiles: ", grid.status().message());
  ProcessGroups groups{*grid, grid->Coords(0), nullptr, nullptr, nullptr, nullptr,
                       nullptr, nullptr, nullptr};
  groups.world = std::make_unique<LocalCommunicator>("world[0]");
  groups.tp = std::make_unique<LocalCommunicator>("tp[0]");
  groups.dp = std::make_unique<LocalCommunicator>("dp[0]");
  groups.pp = std::make_unique<LocalCommunicator>("pp[0]");
  groups.etp = std::make_unique<LocalCommunicator>("etp[0]");
  groups.ep = std::make_unique<LocalCommunicator>("ep[0]");
  groups.edp = std::make_unique<LocalCommunicator>("edp[0]");
  return groups;
}

}  // namespace scalemoe
