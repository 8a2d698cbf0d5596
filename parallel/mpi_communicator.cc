// MPI backend: thin wrappers that validate the tensors, map dtypes and ops,
// and turn MPI return codes into Status.
#include "parallel/mpi_communicator.h"

#include <algorithm>
#include <climits>

#include "absl/strings/str_cat.h"
#include "parallel/group_name.h"

namespace scalemoe {
namespace {

MPI_Datatype MpiType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kBF16: return MPI_UINT16_T;  // moved as raw words, never reduced
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op MpiOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// An in-flight nonblocking collective; holds the tensors so their storage
// outlives the request.
class MpiWork : public Work {
 public:
  MpiWork(MPI_Request request, std::vector<Tensor> buffers, std::string what,
          const char* op, const std::string& group, int group_rank,
          CollectiveWatchdog* watchdog)
      : request_(request), buffers_(std::move(buffers)), what_(std::move(what)), op_(op),
        group_(group), group_rank_(group_rank), watchdog_(watchdog) {}
  ~MpiWork() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (request_ != MPI_REQUEST_NULL && !finalized) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  Status Wait() override {
    CollectiveWatchdog::Scope watch =
        CollectiveWatchdog::Watch(watchdog_, op_, group_, group_rank_);
    const int code = MPI_Wait(&request_, MPI_STATUS_IGNORE);
    if (code == MPI_SUCCESS) return absl::OkStatus();
    return absl::InternalError(absl::StrCat(what_, ": ", MpiErrorString(code)));
  }

 private:
  MPI_Request request_;
  std::vector<Tensor> buffers_;
  std::string what_;
  // For the watchdog: the call, its group's name (a copy: the Work may
  // outlive its communicator's name only in a broken program, but a copy
  // costs nothing next to the collective) and this rank in it.
  const char* op_;
  std::string group_;
  int group_rank_;
  CollectiveWatchdog* watchdog_;
};

}  // namespace

std::string MpiErrorString(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return absl::StrCat("code ", code);
  return std::string(text, length);
}

StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Adopt(MPI_Comm comm,
                                                                  std::string name,
                                                                  CollectiveWatchdog* watchdog) {
  int rank = 0, size = 0;
  if (int code = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN); code != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Comm_set_errhandler on ", name, ": ",
                                            MpiErrorString(code)));
  }
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, std::move(name), rank, size, watchdog));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

Status MpiCommunicator::Check(int code, const char* op) const {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(op, " on ", name_, " (group rank ", rank_,
                                          "): MPI error: ", MpiErrorString(code)));
}

Status MpiCommunicator::CheckTensor(const char* op, const Tensor& t, bool reduces) const {
  auto error = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, " on ", name_, " (group rank ", rank_, "): ", why));
  };
  if (!t.defined() || t.device() != Device::kCPU || !t.is_contiguous()) {
    return error(absl::StrCat("tensor ", t.defined() ? t.DebugString() : "(undefined)",
                              " must be a defined, contiguous CPU tensor (the MPI backend is "
                              "CPU-only)"));
  }
  if (reduces && t.dtype() == DType::kBF16) {
    return absl::UnimplementedError(absl::StrCat(
        op, " on ", name_, " (group rank ", rank_,
        "): bf16 reductions are not supported: reduce an f32 copy"));
  }
  if (t.numel() > INT_MAX) {
    return error(absl::StrCat(t.DebugString(), " has more than INT_MAX elements: "
                              "split it into smaller buffers"));
  }
  return absl::OkStatus();
}

Status MpiCommunicator::CheckChunks(const char* op, const Tensor& chunk,
                                    const Tensor& whole) const {
  if (whole.numel() != chunk.numel() * size_ || whole.dtype() != chunk.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, " on ", name_, " (group rank ", rank_, "): the full buffer ", whole.DebugString(),
        " must hold ", size_, " chunks of ", chunk.DebugString(), " (same dtype)"));
  }
  return absl::OkStatus();
}

Status MpiCommunicator::HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("AllReduce", tensor, true));
  CollectiveWatchdog::Scope watch = Watch("AllReduce");
  return Check(MPI_Allreduce(MPI_IN_PLACE, tensor.raw_data(), static_cast<int>(tensor.numel()),
                             MpiType(tensor.dtype()), MpiOp(options.op), comm_),
               "AllReduce");
}

StatusOr<std::unique_ptr<Work>> MpiCommunicator::HostAllReduceAsync(
    const Tensor& tensor, const AllReduceOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("AllReduceAsync", tensor, true));
  MPI_Request request = MPI_REQUEST_NULL;
  SM_RETURN_IF_ERROR(Check(
      MPI_Iallreduce(MPI_IN_PLACE, tensor.raw_data(), static_cast<int>(tensor.numel()),
                     MpiType(tensor.dtype()), MpiOp(options.op), comm_, &request),
      "AllReduceAsync"));
  return std::unique_ptr<Work>(new MpiWork(
      request, {tensor}, absl::StrCat("AllReduceAsync on ", name_, " (group rank ", rank_, ")"),
      "AllReduceAsync (Wait)", name_, rank_, watchdog_));
}

Status MpiCommunicator::HostReduceScatter(const Tensor& input, const Tensor& output,
                                          const ReduceScatterOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", input, true));
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", output, true));
  SM_RETURN_IF_ERROR(CheckChunks("ReduceScatter", output, input));
  CollectiveWatchdog::Scope watch = Watch("ReduceScatter");
  return Check(MPI_Reduce_scatter_block(input.raw_data(), output.raw_data(),
                                        static_cast<int>(output.numel()), MpiType(input.dtype()),
                                        MpiOp(options.op), comm_),
               "ReduceScatter");
}

StatusOr<std::unique_ptr<Work>> MpiCommunicator::HostReduceScatterAsync(
    const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatterAsync", input, true));
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatterAsync", output, true));
  SM_RETURN_IF_ERROR(CheckChunks("ReduceScatterAsync", output, input));
  MPI_Request request = MPI_REQUEST_NULL;
  SM_RETURN_IF_ERROR(Check(MPI_Ireduce_scatter_block(input.raw_data(), output.raw_data(),
                                                     static_cast<int>(output.numel()),
                                                     MpiType(input.dtype()), MpiOp(options.op),
                                                     comm_, &request),
                           "ReduceScatterAsync"));
  return std::unique_ptr<Work>(
      new MpiWork(request, {input, output},
                  absl::StrCat("ReduceScatterAsync on ", name_, " (group rank ", rank_, ")"),
                  "ReduceScatterAsync (Wait)", name_, rank_, watchdog_));
}

Status MpiCommunicator::HostAllGather(const Tensor& input, const Tensor& output,
                                      const AllGatherOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", input, false));
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", output, false));
  SM_RETURN_IF_ERROR(CheckChunks("AllGather", input, output));
  const int n = static_cast<int>(input.numel());
  CollectiveWatchdog::Scope watch = Watch("AllGather");
  return Check(MPI_Allgather(input.raw_data(), n, MpiType(input.dtype()), output.raw_data(), n,
                             MpiType(output.dtype()), comm_),
               "AllGather");
}

Status MpiCommunicator::HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                                      const Tensor& output, const std::vector<int64_t>& recv_counts,
                                      const AllToAllOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", input, false));
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", output, false));
  if (input.dtype() != output.dtype()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AllToAllV on ", name_, ": input ", input.DebugString(), " and output ",
        output.DebugString(), " must have the same dtype"));
  }
  // Element counts and displacements as MPI's ints, each checked.
  auto to_int = [&](const char* what, const std::vector<int64_t>& counts, const Tensor& t,
                    std::vector<int>* c, std::vector<int>* displs) -> Status {
    int64_t total = 0;
    bool negative = false;
    for (int64_t v : counts) {
      negative |= v < 0;
      c->push_back(static_cast<int>(v));
      displs->push_back(static_cast<int>(total));
      total += v;
    }
    if (static_cast<int>(counts.size()) != size_ || negative || total > t.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "AllToAllV on ", name_, " (group rank ", rank_, "): ", what, " has ", counts.size(),
          " entries summing to ", total, "; needs one non-negative count per group rank (",
          size_, ") and a sum <= ", t.numel(), " (the buffer's elements)"));
    }
    return absl::OkStatus();  // total <= numel <= INT_MAX, so no int overflowed
  };
  std::vector<int> sc, sd, rc, rd;
  SM_RETURN_IF_ERROR(to_int("send_counts", send_counts, input, &sc, &sd));
  SM_RETURN_IF_ERROR(to_int("recv_counts", recv_counts, output, &rc, &rd));
  const MPI_Datatype type = MpiType(input.dtype());
  CollectiveWatchdog::Scope watch = Watch("AllToAllV");
  return Check(MPI_Alltoallv(input.raw_data(), sc.data(), sd.data(), type, output.raw_data(),
                             rc.data(), rd.data(), type, comm_),
               "AllToAllV");
}

Status MpiCommunicator::HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Broadcast", tensor, false));
  if (options.root < 0 || options.root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast on ", name_, ": root ",
                                                   options.root, " is not a rank of this group of ",
                                                   size_));
  }
  CollectiveWatchdog::Scope watch = Watch("Broadcast");
  return Check(MPI_Bcast(tensor.raw_data(), static_cast<int>(tensor.numel()),
                         MpiType(tensor.dtype()), options.root, comm_),
               "Broadcast");
}

Status MpiCommunicator::HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Send", tensor, false));
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Send on ", name_, ": peer ", peer, " must be another rank of this group of ", size_));
  }
  CollectiveWatchdog::Scope watch = Watch("Send");
  return Check(MPI_Send(tensor.raw_data(), static_cast<int>(tensor.numel()),
                        MpiType(tensor.dtype()), peer, options.tag, comm_),
               "Send");
}

Status MpiCommunicator::HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Recv", tensor, false));
  if (peer < 0 || peer >= size_ || peer == rank_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Recv on ", name_, ": peer ", peer, " must be another rank of this group of ", size_));
  }
  CollectiveWatchdog::Scope watch = Watch("Recv");
  return Check(MPI_Recv(tensor.raw_data(), static_cast<int>(tensor.numel()),
                        MpiType(tensor.dtype()), peer, options.tag, comm_, MPI_STATUS_IGNORE),
               "Recv");
}

Status MpiCommunicator::Barrier() {
  CollectiveWatchdog::Scope watch = Watch("Barrier");
  return Check(MPI_Barrier(comm_), "Barrier");
}

}  // namespace scalemoe
