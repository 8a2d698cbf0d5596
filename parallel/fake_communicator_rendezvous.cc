// FakeCommunicator's rendezvous (Exchange, behind every collective),
// point-to-point Send/Recv through the mailbox, fault injection and checks.
//
// All shared state lives in one WorldState guarded by one mutex; a rank
// deposits a copy of its contribution into the group's slot for its next
// sequence number, waits until every member has deposited (or one is dead,
// gone, or the timeout passes), then computes its own result from the copies.
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/fake_communicator_internal.h"

namespace scalemoe::fake_internal {

std::vector<uint8_t> Bytes(const Tensor& t, int64_t offset, int64_t count) {
  const size_t es = DTypeSize(t.dtype());
  const auto* base = static_cast<const uint8_t*>(t.raw_data()) + offset * es;
  return std::vector<uint8_t>(base, base + count * es);
}

Status FakeCommunicator::CheckTensor(const char* op, const Tensor& t, bool reduces) const {
  if (!t.defined() || t.device() != Device::kCPU || !t.is_contiguous()) {
    return Error(op, absl::StatusCode::kInvalidArgument,
                 absl::StrCat("tensor ", t.defined() ? t.DebugString() : "(undefined)",
                              " must be a defined, contiguous CPU tensor"));
  }
  if (reduces && t.dtype() == DType::kBF16) {
    return Error(op, absl::StatusCode::kUnimplemented,
                 "bf16 reductions are not supported: reduce an f32 copy");
  }
  return absl::OkStatus();
}

Status FakeCommunicator::CheckChunks(const char* op, const Tensor& chunk,
                                     const Tensor& whole) const {
  if (whole.numel() != chunk.numel() * size() || whole.dtype() != chunk.dtype()) {
    return Error(op, absl::StatusCode::kInvalidArgument,
                 absl::StrCat("the full buffer ", whole.DebugString(), " must hold ", size(),
                              " chunks of ", chunk.DebugString(), " (same dtype)"));
  }
  return absl::OkStatus();
}

StatusOr<int64_t> FakeCommunicator::CheckCounts(const char* what,
                                                const std::vector<int64_t>& counts,
                                                const Tensor& t) const {
  int64_t total = 0;
  for (int64_t c : counts) {
    if (c < 0) return Error("AllToAllV", absl::StatusCode::kInvalidArgument,
                            absl::StrCat(what, " has a negative count ", c));
    total += c;
  }
  if (static_cast<int>(counts.size()) != size() || total > t.numel()) {
    return Error("AllToAllV", absl::StatusCode::kInvalidArgument,
                 absl::StrCat(what, " has ", counts.size(), " entries summing to ", total,
                              "; needs one per group rank (", size(), ") and a sum <= ",
                              t.numel(), " (the buffer's elements)"));
  }
  return total;
}

Status FakeCommunicator::BeginLocked(const char* op) {
  const int64_t k = world_->calls[global_]++;
  if (world_->dead[global_]) {
    return Error(op, absl::StatusCode::kFailedPrecondition,
                 "this rank already failed a collective");
  }
  if (world_->failures.count({global_, k})) {
    world_->dead[global_] = true;
    world_->cv.notify_all();
    return Record(Error(op, absl::StatusCode::kInternal,
                        absl::StrCat("injected failure of communication call #", k)));
  }
  return absl::OkStatus();
}

std::string FakeCommunicator::GoneLocked(int q) const {
  const int g = group_->ranks[q];
  if (world_->dead[g]) return absl::StrCat("global rank ", g, " failed");
  if (world_->finished[g]) return absl::StrCat("global rank ", g, " returned without joining");
  return "";
}

StatusOr<std::vector<Part>> FakeCommunicator::Exchange(const char* op, Part mine) {
  std::unique_lock<std::mutex> lock(world_->mu);
  SM_RETURN_IF_ERROR(BeginLocked(op));
  const int64_t seq = sequence_++;
  Slot& slot = group_->slots[seq];
  if (slot.parts.empty()) slot.parts.resize(size());
  slot.parts[rank_] = std::move(mine);
  ++slot.deposited;
  world_->cv.notify_all();
  std::string gone;
  auto ready = [&] {
    for (int q = 0; q < size() && gone.empty(); ++q) {
      if (!slot.parts[q]) gone = GoneLocked(q);
    }
    return slot.deposited == size() || !gone.empty();
  };
  if (!world_->cv.wait_for(lock, world_->timeout, ready)) {
    std::vector<int> missing;
    for (int q = 0; q < size(); ++q) {
      if (!slot.parts[q]) missing.push_back(group_->ranks[q]);
    }
    return Record(Error(op, absl::StatusCode::kDeadlineExceeded,
                        absl::StrCat("timed out after ", world_->timeout.count(),
                                     " ms waiting for global ranks [", absl::StrJoin(missing, ","),
                                     "]: they are stuck elsewhere (mismatched call order?)")));
  }
  if (slot.deposited < size()) {
    return Record(Error(op, absl::StatusCode::kUnavailable,
                        absl::StrCat(gone, ": the collective cannot complete")));
  }
  const Part& me = *slot.parts[rank_];
  for (int q = 0; q < size(); ++q) {
    const Part& p = *slot.parts[q];
    if (std::strcmp(p.op, me.op) != 0 || p.dtype != me.dtype || p.numel != me.numel ||
        p.root != me.root) {
      return Record(Error(op, absl::StatusCode::kFailedPrecondition,
                          absl::StrCat("mismatched call: group rank ", q, " called ", p.op, " on ",
                                       DTypeName(p.dtype), "[", p.numel, "] root ", p.root,
                                       ", this rank ", me.op, " on ", DTypeName(me.dtype), "[",
                                       me.numel, "] root ", me.root)));
    }
  }
  std::vector<Part> parts;
  for (const auto& p : slot.parts) parts.push_back(*p);
  if (++slot.collected == size()) group_->slots.erase(seq);
  return parts;
}

Status FakeCommunicator::HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Send", tensor, false));
  if (peer < 0 || peer >= size() || peer == rank_) {
    return Error("Send", absl::StatusCode::kInvalidArgument,
                 absl::StrCat("peer ", peer, " must be another rank of this group of ", size()));
  }
  std::lock_guard<std::mutex> lock(world_->mu);
  SM_RETURN_IF_ERROR(BeginLocked("Send"));
  world_->mailbox[{group_, rank_, peer, options.tag}].push_back(Bytes(tensor, 0, tensor.numel()));
  world_->cv.notify_all();
  return absl::OkStatus();
}

Status FakeCommunicator::HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) {
  SM_RETURN_IF_ERROR(CheckTensor("Recv", tensor, false));
  if (peer < 0 || peer >= size() || peer == rank_) {
    return Error("Recv", absl::StatusCode::kInvalidArgument,
                 absl::StrCat("peer ", peer, " must be another rank of this group of ", size()));
  }
  std::unique_lock<std::mutex> lock(world_->mu);
  SM_RETURN_IF_ERROR(BeginLocked("Recv"));
  auto& queue = world_->mailbox[{group_, peer, rank_, options.tag}];
  std::string gone;
  auto ready = [&] {
    if (queue.empty()) gone = GoneLocked(peer);
    return !queue.empty() || !gone.empty();
  };
  if (!world_->cv.wait_for(lock, world_->timeout, ready)) {
    return Record(Error("Recv", absl::StatusCode::kDeadlineExceeded,
                        absl::StrCat("timed out after ", world_->timeout.count(),
                                     " ms waiting for group rank ", peer, " (tag ", options.tag,
                                     ")")));
  }
  if (queue.empty()) return Record(Error("Recv", absl::StatusCode::kUnavailable, gone));
  std::vector<uint8_t> message = std::move(queue.front());
  queue.pop_front();
  if (message.size() != tensor.nbytes()) {
    return Record(Error("Recv", absl::StatusCode::kInvalidArgument,
                        absl::StrCat("message of ", message.size(), " bytes from group rank ",
                                     peer, " does not fit ", tensor.DebugString())));
  }
  std::memcpy(tensor.raw_data(), message.data(), message.size());
  return absl::OkStatus();
}

}  // namespace scalemoe::fake_internal
