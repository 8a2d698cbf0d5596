#include "parallel/communicator.h"

#include "absl/strings/str_cat.h"

namespace scalemoe {
namespace {

// Tensors of a collective must live where the context computes.
void CheckOn(const ExecContext& ctx, const char* op, const Tensor& t) {
  SM_CHECK_MSG(!t.defined() || t.device() == ctx.device(), op, ": ", t.DebugString(), " on a ",
               DeviceName(ctx.device()), " context");
}

}  // namespace

Status Communicator::Staged(
    const ExecContext& ctx, const char* op, const std::vector<Tensor>& reads,
    const std::vector<Tensor>& writes,
    const std::function<Status(const std::vector<Tensor>&, const std::vector<Tensor>&)>& run) {
  auto host_copy = [](const Tensor& t) {
    return Tensor::Empty(t.shape(), t.dtype(), Device::kCPU);
  };
  std::vector<Tensor> host_reads, host_writes;
  for (const Tensor& t : reads) {
    host_reads.push_back(host_copy(t));
    SM_RETURN_IF_ERROR(WithContext(ctx.CopyAcross(t, host_reads.back()),
                                   absl::StrCat(op, " on ", name(), ": staging down")));
  }
  for (const Tensor& t : writes) {
    // A tensor both read and written (in place) stages once.
    bool aliased = false;
    for (size_t i = 0; i < reads.size(); ++i) {
      if (reads[i].raw_data() == t.raw_data()) {
        host_writes.push_back(host_reads[i]);
        aliased = true;
        break;
      }
    }
    if (!aliased) host_writes.push_back(host_copy(t));
  }
  SM_RETURN_IF_ERROR(run(host_reads, host_writes));
  for (size_t i = 0; i < writes.size(); ++i) {
    SM_RETURN_IF_ERROR(WithContext(ctx.CopyAcross(host_writes[i], writes[i]),
                                   absl::StrCat(op, " on ", name(), ": staging up")));
  }
  return absl::OkStatus();
}

Status Communicator::AllReduce(const ExecContext& ctx, const Tensor& tensor,
                               const AllReduceOptions& options) {
  CheckOn(ctx, "AllReduce", tensor);
  if (ctx.device() == Device::kCPU) return HostAllReduce(tensor, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceAllReduce(ctx, tensor, options);
  }
  return Staged(ctx, "AllReduce", {tensor}, {tensor},
                [&](const auto& r, const auto&) { return HostAllReduce(r[0], options); });
}

StatusOr<std::unique_ptr<Work>> Communicator::AllReduceAsync(const ExecContext& ctx,
                                                             const Tensor& tensor,
                                                             const AllReduceOptions& options) {
  CheckOn(ctx, "AllReduceAsync", tensor);
  if (ctx.device() == Device::kCPU) return HostAllReduceAsync(tensor, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceAllReduceAsync(ctx, tensor, options);
  }
  return std::unique_ptr<Work>(std::make_unique<CompletedWork>(AllReduce(ctx, tensor, options)));
}

Status Communicator::ReduceScatter(const ExecContext& ctx, const Tensor& input,
                                   const Tensor& output, const ReduceScatterOptions& options) {
  CheckOn(ctx, "ReduceScatter", input);
  CheckOn(ctx, "ReduceScatter", output);
  if (ctx.device() == Device::kCPU) return HostReduceScatter(input, output, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceReduceScatter(ctx, input, output, options);
  }
  return Staged(ctx, "ReduceScatter", {input}, {output}, [&](const auto& r, const auto& w) {
    return HostReduceScatter(r[0], w[0], options);
  });
}

StatusOr<std::unique_ptr<Work>> Communicator::ReduceScatterAsync(
    const ExecContext& ctx, const Tensor& input, const Tensor& output,
    const ReduceScatterOptions& options) {
  CheckOn(ctx, "ReduceScatterAsync", input);
  CheckOn(ctx, "ReduceScatterAsync", output);
  if (ctx.device() == Device::kCPU) return HostReduceScatterAsync(input, output, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceReduceScatterAsync(ctx, input, output, options);
  }
  return std::unique_ptr<Work>(
      std::make_unique<CompletedWork>(ReduceScatter(ctx, input, output, options)));
}

Status Communicator::AllGather(const ExecContext& ctx, const Tensor& input, const Tensor& output,
                               const AllGatherOptions& options) {
  CheckOn(ctx, "AllGather", input);
  CheckOn(ctx, "AllGather", output);
  if (ctx.device() == Device::kCPU) return HostAllGather(input, output, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceAllGather(ctx, input, output, options);
  }
  return Staged(ctx, "AllGather", {input}, {output},
                [&](const auto& r, const auto& w) { return HostAllGather(r[0], w[0], options); });
}

Status Communicator::AllToAllV(const ExecContext& ctx, const Tensor& input,
                               const std::vector<int64_t>& send_counts, const Tensor& output,
                               const std::vector<int64_t>& recv_counts,
                               const AllToAllOptions& options) {
  CheckOn(ctx, "AllToAllV", input);
  CheckOn(ctx, "AllToAllV", output);
  if (ctx.device() == Device::kCPU) {
    return HostAllToAllV(input, send_counts, output, recv_counts, options);
  }
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceAllToAllV(ctx, input, send_counts, output, recv_counts, options);
  }
  return Staged(ctx, "AllToAllV", {input}, {output}, [&](const auto& r, const auto& w) {
    return HostAllToAllV(r[0], send_counts, w[0], recv_counts, options);
  });
}

Status Communicator::Broadcast(const ExecContext& ctx, const Tensor& tensor,
                               const BroadcastOptions& options) {
  CheckOn(ctx, "Broadcast", tensor);
  if (ctx.device() == Device::kCPU) return HostBroadcast(tensor, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceBroadcast(ctx, tensor, options);
  }
  return Staged(ctx, "Broadcast", {tensor}, {tensor},
                [&](const auto& r, const auto&) { return HostBroadcast(r[0], options); });
}

Status Communicator::Send(const ExecContext& ctx, const Tensor& tensor, int peer,
                          const SendRecvOptions& options) {
  CheckOn(ctx, "Send", tensor);
  if (ctx.device() == Device::kCPU) return HostSend(tensor, peer, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceSend(ctx, tensor, peer, options);
  }
  return Staged(ctx, "Send", {tensor}, {},
                [&](const auto& r, const auto&) { return HostSend(r[0], peer, options); });
}

Status Communicator::Recv(const ExecContext& ctx, const Tensor& tensor, int peer,
                          const SendRecvOptions& options) {
  CheckOn(ctx, "Recv", tensor);
  if (ctx.device() == Device::kCPU) return HostRecv(tensor, peer, options);
  if (DeviceCollectives* device = device_collectives()) {
    return device->DeviceRecv(ctx, tensor, peer, options);
  }
  return Staged(ctx, "Recv", {}, {tensor},
                [&](const auto&, const auto& w) { return HostRecv(w[0], peer, options); });
}

}  // namespace scalemoe
