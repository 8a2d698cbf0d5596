// NCCL backend: argument checks, the event-ordered issue of each collective
// on the communication stream, and the host collectives' delegation.
#include "parallel/nccl_communicator.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "parallel/nccl_api.h"

namespace scalemoe {
namespace {

ncclDataType_t NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kF64:
      return ncclFloat64;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
    case DType::kI64:
      return ncclInt64;
  }
  return ncclFloat32;
}

ncclRedOp_t NcclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

char* Bytes(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

// An asynchronous collective on the communication stream: Wait makes the
// caller's stream wait for it (the host does not), then reports a failure
// the runtime recorded. Destroyed unwaited, it still orders the stream, so
// the buffers it holds are never reused under a running collective.
class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<NcclRuntime> runtime, const ExecContext& ctx, cudaEvent_t done,
           std::vector<Tensor> buffers, std::string what)
      : runtime_(std::move(runtime)),
        ctx_(ctx),
        done_(done),
        buffers_(std::move(buffers)),
        what_(std::move(what)) {}
  ~NcclWork() override {
    if (done_ != nullptr) (void)Release();
  }
  Status Wait() override {
    Status status = Release();
    std::lock_guard<std::mutex> lock(runtime_->mu());
    status.Update(runtime_->error_locked());
    return WithContext(status, what_);
  }

 private:
  Status Release() {
    const Status status = NcclCudaStatus(
        cudaStreamWaitEvent(static_cast<cudaStream_t>(ctx_.stream()), done_, 0),
        "cudaStreamWaitEvent (compute waits for communication)", runtime_->ordinal());
    runtime_->ReturnEvent(done_);
    done_ = nullptr;
    buffers_.clear();
    return status;
  }

  std::shared_ptr<NcclRuntime> runtime_;
  ExecContext ctx_;
  cudaEvent_t done_;
  std::vector<Tensor> buffers_;
  std::string what_;
};

}  // namespace

StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    std::unique_ptr<Communicator>&& host, ncclComm_t comm, std::shared_ptr<NcclRuntime> runtime) {
  SM_ASSIGN_OR_RETURN(NcclRuntime::Tracked * tracked,
                      runtime->Track(comm, host->name(), host->rank()));
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(std::move(host), std::move(runtime), tracked));
}

NcclCommunicator::~NcclCommunicator() { runtime_->Untrack(tracked_); }

Status NcclCommunicator::Error(const char* op, const std::string& why) const {
  return absl::InvalidArgumentError(
      absl::StrCat(op, " on ", name(), " (group rank ", rank(), ", NCCL): ", why));
}

Status NcclCommunicator::CheckTensor(const char* op, const Tensor& t) const {
  if (!t.defined() || t.device() != Device::kCUDA || !t.is_contiguous()) {
    return Error(op, absl::StrCat("tensor ", t.defined() ? t.DebugString() : "(undefined)",
                                  " must be a defined, contiguous CUDA tensor"));
  }
  return absl::OkStatus();
}

Status NcclCommunicator::CheckChunks(const char* op, const Tensor& chunk,
                                     const Tensor& whole) const {
  if (whole.numel() != chunk.numel() * size() || whole.dtype() != chunk.dtype()) {
    return Error(op, absl::StrCat("the full buffer ", whole.DebugString(), " must hold ", size(),
                                  " chunks of ", chunk.DebugString(), " (same dtype)"));
  }
  return absl::OkStatus();
}

Status NcclCommunicator::CheckPeer(const char* op, int peer) const {
  if (peer < 0 || peer >= size() || peer == rank()) {
    return Error(op,
                 absl::StrCat("peer ", peer, " must be another rank of this group of ", size()));
  }
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::Issue(const ExecContext& ctx, const char* op,
                                                        bool async, std::vector<Tensor> buffers,
                                                        const IssueFn& run) {
  const int ordinal = runtime_->ordinal();
  if (ctx.device_ordinal() != ordinal) {
    return Error(op, absl::StrCat("the context is on CUDA device ", ctx.device_ordinal(),
                                  " but this communicator on device ", ordinal,
                                  ": use the context the process groups were made with"));
  }
  const auto compute = static_cast<cudaStream_t>(ctx.stream());
  const cudaStream_t comm_stream = runtime_->stream();
  // The events are taken outside the lock (the pool takes it too).
  SM_ASSIGN_OR_RETURN(cudaEvent_t ready, runtime_->TakeEvent());
  cudaEvent_t done = nullptr;
  if (async) {
    StatusOr<cudaEvent_t> taken = runtime_->TakeEvent();
    if (!taken.ok()) {
      runtime_->ReturnEvent(ready);
      return taken.status();
    }
    done = *taken;
  }
  Status status;
  {
    std::lock_guard<std::mutex> lock(runtime_->mu());
    NcclRuntime::Tracked& t = *tracked_;
    status = runtime_->error_locked();
    runtime_->set_context_locked(ctx);
    // The communication stream starts once the compute stream's work so far
    // (which wrote the inputs) is done.
    if (status.ok()) {
      status = NcclCudaStatus(cudaEventRecord(ready, compute), "cudaEventRecord", ordinal);
    }
    if (status.ok()) {
      status = NcclCudaStatus(cudaStreamWaitEvent(comm_stream, ready, 0), "cudaStreamWaitEvent",
                              ordinal);
    }
    if (status.ok()) {
      if (ncclResult_t result = run(t.comm, comm_stream); result != ncclSuccess) {
        status =
            absl::InternalError(absl::StrCat(op, " on ", name(), " (group rank ", rank(),
                                             "): NCCL error: ", nccl::ErrorText(result, t.comm)));
      }
    }
    if (status.ok()) {
      status = NcclCudaStatus(cudaEventRecord(t.done, comm_stream), "cudaEventRecord", ordinal);
      t.last_op = op;
      t.queued = std::chrono::steady_clock::now();
    }
    if (status.ok()) {
      // Synchronous: later compute waits for the result; asynchronous: only
      // Work::Wait does.
      status = async
                   ? NcclCudaStatus(cudaEventRecord(done, comm_stream), "cudaEventRecord", ordinal)
                   : NcclCudaStatus(cudaStreamWaitEvent(compute, t.done, 0), "cudaStreamWaitEvent",
                                    ordinal);
    }
  }
  runtime_->ReturnEvent(ready);  // a wait captures the event's state when it is queued
  if (!status.ok()) {
    if (done != nullptr) runtime_->ReturnEvent(done);
    return WithContext(status, absl::StrCat(op, " on ", name()));
  }
  if (!async) return std::unique_ptr<Work>();
  return std::unique_ptr<Work>(
      new NcclWork(runtime_, ctx, done, std::move(buffers),
                   absl::StrCat(op, " on ", name(), " (group rank ", rank(), ")")));
}

Status NcclCommunicator::DeviceAllReduce(const ExecContext& ctx, const Tensor& tensor,
                                         const AllReduceOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("AllReduce", tensor));
  if (tensor.numel() == 0) return absl::OkStatus();
  return Issue(ctx, "AllReduce", false, {},
               [&](ncclComm_t comm, cudaStream_t stream) {
                 return nccl::AllReduce(tensor.raw_data(), tensor.raw_data(), tensor.numel(),
                                        NcclType(tensor.dtype()), NcclOp(options.op), comm, stream);
               })
      .status();
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::DeviceAllReduceAsync(
    const ExecContext& ctx, const Tensor& tensor, const AllReduceOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("AllReduceAsync", tensor));
  if (tensor.numel() == 0) return std::unique_ptr<Work>(new CompletedWork(absl::OkStatus()));
  return Issue(ctx, "AllReduceAsync", true, {tensor}, [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl::AllReduce(tensor.raw_data(), tensor.raw_data(), tensor.numel(),
                           NcclType(tensor.dtype()), NcclOp(options.op), comm, stream);
  });
}

Status NcclCommunicator::DeviceReduceScatter(const ExecContext& ctx, const Tensor& input,
                                             const Tensor& output,
                                             const ReduceScatterOptions& options) {
  return IssueReduceScatter(ctx, "ReduceScatter", false, input, output, options).status();
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::DeviceReduceScatterAsync(
    const ExecContext& ctx, const Tensor& input, const Tensor& output,
    const ReduceScatterOptions& options) {
  return IssueReduceScatter(ctx, "ReduceScatterAsync", true, input, output, options);
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::IssueReduceScatter(
    const ExecContext& ctx, const char* op, bool async, const Tensor& input, const Tensor& output,
    const ReduceScatterOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor(op, input));
  SM_RETURN_IF_ERROR(CheckTensor(op, output));
  SM_RETURN_IF_ERROR(CheckChunks(op, output, input));
  if (input.numel() == 0) {
    if (!async) return std::unique_ptr<Work>();
    return std::unique_ptr<Work>(new CompletedWork(absl::OkStatus()));
  }
  return Issue(ctx, op, async, {input, output}, [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl::ReduceScatter(input.raw_data(), output.raw_data(), output.numel(),
                               NcclType(input.dtype()), NcclOp(options.op), comm, stream);
  });
}

Status NcclCommunicator::DeviceAllGather(const ExecContext& ctx, const Tensor& input,
                                         const Tensor& output, const AllGatherOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", input));
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", output));
  SM_RETURN_IF_ERROR(CheckChunks("AllGather", input, output));
  if (output.numel() == 0) return absl::OkStatus();
  return Issue(ctx, "AllGather", false, {},
               [&](ncclComm_t comm, cudaStream_t stream) {
                 return nccl::AllGather(input.raw_data(), output.raw_data(), input.numel(),
                                        NcclType(input.dtype()), comm, stream);
               })
      .status();
}

Status NcclCommunicator::DeviceAllToAllV(const ExecContext& ctx, const Tensor& input,
                                         const std::vector<int64_t>& send_counts,
                                         const Tensor& output,
                                         const std::vector<int64_t>& recv_counts,
                                         const AllToAllOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", input));
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", output));
  if (input.dtype() != output.dtype()) {
    return Error("AllToAllV", absl::StrCat("input ", input.DebugString(), " and output ",
                                           output.DebugString(), " must have the same dtype"));
  }
  // Element offsets of each peer's part, each count checked.
  auto offsets = [&](const char* what, const std::vector<int64_t>& counts, const Tensor& t,
                     std::vector<int64_t>* out) -> Status {
    int64_t total = 0;
    bool negative = false;
    for (int64_t v : counts) {
      negative |= v < 0;
      out->push_back(total);
      total += v;
    }
    if (static_cast<int>(counts.size()) != size() || negative || total > t.numel()) {
      return Error("AllToAllV",
                   absl::StrCat(what, " has ", counts.size(), " entries summing to ", total,
                                "; needs one non-negative count per group rank (", size(),
                                ") and a sum <= ", t.numel(), " (the buffer's elements)"));
    }
    return absl::OkStatus();
  };
  std::vector<int64_t> send_at, recv_at;
  SM_RETURN_IF_ERROR(offsets("send_counts", send_counts, input, &send_at));
  SM_RETURN_IF_ERROR(offsets("recv_counts", recv_counts, output, &recv_at));
  const int me = rank();
  if (send_counts[me] != recv_counts[me]) {
    return Error("AllToAllV",
                 absl::StrCat("this rank sends itself ", send_counts[me], " elements but receives ",
                              recv_counts[me], " from itself: the counts must agree"));
  }
  const size_t element = DTypeSize(input.dtype());
  const ncclDataType_t type = NcclType(input.dtype());
  return Issue(
             ctx, "AllToAllV", false, {},
             [&](ncclComm_t comm, cudaStream_t stream) -> ncclResult_t {
               // The part this rank keeps is a copy, not a send to itself.
               if (send_counts[me] > 0 &&
                   cudaMemcpyAsync(Bytes(output) + recv_at[me] * element,
                                   Bytes(input) + send_at[me] * element, send_counts[me] * element,
                                   cudaMemcpyDeviceToDevice, stream) != cudaSuccess) {
                 return ncclUnhandledCudaError;
               }
               if (ncclResult_t r = nccl::GroupStart(); r != ncclSuccess) return r;
               ncclResult_t first = ncclSuccess;
               for (int p = 0; p < size() && first == ncclSuccess; ++p) {
                 if (p == me) continue;
                 if (send_counts[p] > 0) {
                   first = nccl::Send(Bytes(input) + send_at[p] * element, send_counts[p], type, p,
                                      comm, stream);
                 }
                 if (first == ncclSuccess && recv_counts[p] > 0) {
                   first = nccl::Recv(Bytes(output) + recv_at[p] * element, recv_counts[p], type, p,
                                      comm, stream);
                 }
               }
               // The group is always closed, also after a failed call in it.
               const ncclResult_t end = nccl::GroupEnd();
               return first != ncclSuccess ? first : end;
             })
      .status();
}

Status NcclCommunicator::DeviceBroadcast(const ExecContext& ctx, const Tensor& tensor,
                                         const BroadcastOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Broadcast", tensor));
  if (options.root < 0 || options.root >= size()) {
    return Error("Broadcast",
                 absl::StrCat("root ", options.root, " is not a rank of this group of ", size()));
  }
  if (tensor.numel() == 0) return absl::OkStatus();
  return Issue(ctx, "Broadcast", false, {},
               [&](ncclComm_t comm, cudaStream_t stream) {
                 return nccl::Broadcast(tensor.raw_data(), tensor.raw_data(), tensor.numel(),
                                        NcclType(tensor.dtype()), options.root, comm, stream);
               })
      .status();
}

// Tags have no NCCL counterpart: messages between two ranks of a group
// arrive in the order they were sent, which is what the callers' tags
// (pipeline micro-batch ids) encode already.
Status NcclCommunicator::DeviceSend(const ExecContext& ctx, const Tensor& tensor, int peer,
                                    const SendRecvOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("Send", tensor));
  SM_RETURN_IF_ERROR(CheckPeer("Send", peer));
  if (tensor.numel() == 0) return absl::OkStatus();  // the peer's Recv skips it too
  return Issue(ctx, "Send", false, {},
               [&](ncclComm_t comm, cudaStream_t stream) {
                 return nccl::Send(tensor.raw_data(), tensor.numel(), NcclType(tensor.dtype()),
                                   peer, comm, stream);
               })
      .status();
}

Status NcclCommunicator::DeviceRecv(const ExecContext& ctx, const Tensor& tensor, int peer,
                                    const SendRecvOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("Recv", tensor));
  SM_RETURN_IF_ERROR(CheckPeer("Recv", peer));
  if (tensor.numel() == 0) return absl::OkStatus();
  return Issue(ctx, "Recv", false, {},
               [&](ncclComm_t comm, cudaStream_t stream) {
                 return nccl::Recv(tensor.raw_data(), tensor.numel(), NcclType(tensor.dtype()),
                                   peer, comm, stream);
               })
      .status();
}

// ---- Host memory: the host communicator, through its public calls (a CPU
// context selects its host backend).

Status NcclCommunicator::HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) {
  return host_->AllReduceHost(tensor, options);
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::HostAllReduceAsync(
    const Tensor& tensor, const AllReduceOptions& options) {
  return host_->AllReduceAsync(host_ctx_, tensor, options);
}

Status NcclCommunicator::HostReduceScatter(const Tensor& input, const Tensor& output,
                                           const ReduceScatterOptions& options) {
  return host_->ReduceScatter(host_ctx_, input, output, options);
}

StatusOr<std::unique_ptr<Work>> NcclCommunicator::HostReduceScatterAsync(
    const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) {
  return host_->ReduceScatterAsync(host_ctx_, input, output, options);
}

Status NcclCommunicator::HostAllGather(const Tensor& input, const Tensor& output,
                                       const AllGatherOptions& options) {
  return host_->AllGather(host_ctx_, input, output, options);
}

Status NcclCommunicator::HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                                       const Tensor& output,
                                       const std::vector<int64_t>& recv_counts,
                                       const AllToAllOptions& options) {
  return host_->AllToAllV(host_ctx_, input, send_counts, output, recv_counts, options);
}

Status NcclCommunicator::HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) {
  return host_->BroadcastHost(tensor, options);
}

Status NcclCommunicator::HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  return host_->Send(host_ctx_, tensor, peer, options);
}

Status NcclCommunicator::HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  return host_->Recv(host_ctx_, tensor, peer, options);
}

}  // namespace scalemoe
