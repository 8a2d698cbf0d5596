// FakeCommunicator's collectives: each deposits its contribution through
// Exchange (fake_communicator_rendezvous.cc) and computes its own result from
// all ranks' copies, in rank order.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/fake_communicator_internal.h"

namespace scalemoe::fake_internal {
namespace {

template <typename T>
void Reduce(const std::vector<const T*>& inputs, int64_t n, ReduceOp op, T* out) {
  for (int64_t i = 0; i < n; ++i) {
    T acc = inputs[0][i];
    for (size_t p = 1; p < inputs.size(); ++p) {
      const T v = inputs[p][i];
      acc = op == ReduceOp::kSum ? acc + v : op == ReduceOp::kMax ? std::max(acc, v)
                                                                   : std::min(acc, v);
    }
    out[i] = acc;
  }
}

// out[0:n] = reduction over parts of parts[p].bytes[offset : offset + n].
void ReduceParts(const std::vector<Part>& parts, DType dtype, int64_t offset, int64_t n,
                 ReduceOp op, void* out) {
  auto run = [&](auto* typed_out) {
    using T = std::remove_pointer_t<decltype(typed_out)>;
    std::vector<const T*> inputs;
    for (const Part& p : parts) inputs.push_back(reinterpret_cast<const T*>(p.bytes.data()) + offset);
    Reduce<T>(inputs, n, op, typed_out);
  };
  switch (dtype) {
    case DType::kF32: run(static_cast<float*>(out)); break;
    case DType::kF64: run(static_cast<double*>(out)); break;
    case DType::kI32: run(static_cast<int32_t*>(out)); break;
    case DType::kI64: run(static_cast<int64_t*>(out)); break;
    case DType::kBF16: SM_CHECK_MSG(false, "bf16 reductions are rejected before the exchange");
  }
}

}  // namespace

Status FakeCommunicator::HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("AllReduce", tensor, /*reduces=*/true));
  SM_ASSIGN_OR_RETURN(std::vector<Part> parts,
                      Exchange("AllReduce", MakePart("AllReduce", tensor, tensor.numel())));
  ReduceParts(parts, tensor.dtype(), 0, tensor.numel(), options.op, tensor.raw_data());
  return absl::OkStatus();
}

Status FakeCommunicator::HostReduceScatter(const Tensor& input, const Tensor& output,
                                           const ReduceScatterOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", input, true));
  SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", output, true));
  SM_RETURN_IF_ERROR(CheckChunks("ReduceScatter", output, input));
  SM_ASSIGN_OR_RETURN(std::vector<Part> parts,
                      Exchange("ReduceScatter", MakePart("ReduceScatter", input, input.numel())));
  const int64_t n = output.numel();
  ReduceParts(parts, input.dtype(), rank_ * n, n, options.op, output.raw_data());
  return absl::OkStatus();
}

Status FakeCommunicator::HostAllGather(const Tensor& input, const Tensor& output,
                                       const AllGatherOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", input, false));
  SM_RETURN_IF_ERROR(CheckTensor("AllGather", output, false));
  SM_RETURN_IF_ERROR(CheckChunks("AllGather", input, output));
  SM_ASSIGN_OR_RETURN(std::vector<Part> parts,
                      Exchange("AllGather", MakePart("AllGather", input, input.numel())));
  auto* out = static_cast<uint8_t*>(output.raw_data());
  for (const Part& p : parts) {
    std::memcpy(out, p.bytes.data(), p.bytes.size());
    out += p.bytes.size();
  }
  return absl::OkStatus();
}

Status FakeCommunicator::HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                                       const Tensor& output,
                                       const std::vector<int64_t>& recv_counts,
                                       const AllToAllOptions&) {
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", input, false));
  SM_RETURN_IF_ERROR(CheckTensor("AllToAllV", output, false));
  SM_ASSIGN_OR_RETURN(int64_t sent, CheckCounts("send_counts", send_counts, input));
  SM_RETURN_IF_ERROR(CheckCounts("recv_counts", recv_counts, output).status());
  Part mine = MakePart("AllToAllV", input, sent);
  mine.counts = send_counts;
  mine.numel = 0;  // buffer sizes differ per rank; the counts are checked below
  SM_ASSIGN_OR_RETURN(std::vector<Part> parts, Exchange("AllToAllV", std::move(mine)));
  const size_t es = DTypeSize(output.dtype());
  auto* out = static_cast<uint8_t*>(output.raw_data());
  for (int p = 0; p < size(); ++p) {
    const std::vector<int64_t>& c = parts[p].counts;
    int64_t offset = 0;
    for (int q = 0; q < rank_; ++q) offset += c[q];
    if (c[rank_] != recv_counts[p]) {
      return Error("AllToAllV", absl::StatusCode::kInvalidArgument,
                   absl::StrCat("group rank ", p, " sends ", c[rank_],
                                " elements here but recv_counts[", p, "] = ", recv_counts[p],
                                ": exchange the counts first so both sides agree"));
    }
    if (c[rank_] > 0) {  // an empty part may have no buffer at all
      std::memcpy(out, parts[p].bytes.data() + offset * es, c[rank_] * es);
      out += c[rank_] * es;
    }
  }
  return absl::OkStatus();
}

Status FakeCommunicator::HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Broadcast", tensor, false));
  if (options.root < 0 || options.root >= size()) {
    return Error("Broadcast", absl::StatusCode::kInvalidArgument,
                 absl::StrCat("root ", options.root, " is not a rank of this group of ", size()));
  }
  Part mine = MakePart("Broadcast", tensor, rank_ == options.root ? tensor.numel() : 0);
  mine.numel = tensor.numel();
  mine.root = options.root;
  SM_ASSIGN_OR_RETURN(std::vector<Part> parts, Exchange("Broadcast", std::move(mine)));
  const Part& root = parts[options.root];
  std::memcpy(tensor.raw_data(), root.bytes.data(), root.bytes.size());
  return absl::OkStatus();
}

Status FakeCommunicator::Barrier() {
  Part mine;
  mine.op = "Barrier";
  return Exchange("Barrier", std::move(mine)).status();
}

}  // namespace scalemoe::fake_internal
