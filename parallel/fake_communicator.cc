// FakeWorld and its Communicator: shared-memory rendezvous per collective.
// All shared state lives in one WorldState guarded by one mutex; a rank
// deposits a copy of its contribution into the group's slot for its next
// sequence number, waits until every member has deposited (or one is dead,
// gone, or the timeout passes), then computes its own result from the copies.
#include "parallel/fake_communicator.h"

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/group_name.h"

namespace scalemoe {
namespace {

// One rank's deposit for one collective.
struct Part {
  const char* op = "";
  DType dtype = DType::kF32;
  int64_t numel = 0;
  int root = 0;
  std::vector<int64_t> counts;  // AllToAllV: send counts
  std::vector<uint8_t> bytes;
};

struct Slot {
  std::vector<std::optional<Part>> parts;
  int deposited = 0;
  int collected = 0;
};

struct Group {
  std::string name;
  std::vector<int> ranks;  // global ranks in group order
  std::map<int64_t, Slot> slots;  // by collective sequence number
};

using Clock = std::chrono::steady_clock;

struct WorldState {
  std::mutex mu;
  std::condition_variable cv;
  std::chrono::milliseconds timeout{0};
  std::vector<bool> dead, finished;
  std::vector<int64_t> calls;  // communication calls made, per global rank
  std::set<std::pair<int, int64_t>> failures;
  std::vector<std::unique_ptr<Group>> groups;
  // (group, source group rank, destination group rank, tag) -> messages.
  std::map<std::tuple<const Group*, int, int, int>, std::deque<std::vector<uint8_t>>> mailbox;
  std::vector<std::pair<Clock::time_point, Status>> errors;
};

std::vector<uint8_t> Bytes(const Tensor& t, int64_t offset, int64_t count) {
  const size_t es = DTypeSize(t.dtype());
  const auto* base = static_cast<const uint8_t*>(t.raw_data()) + offset * es;
  return std::vector<uint8_t>(base, base + count * es);
}

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

class FakeCommunicator : public Communicator {
 public:
  FakeCommunicator(std::shared_ptr<WorldState> world, Group* group, int rank)
      : world_(std::move(world)), group_(group), rank_(rank), global_(group->ranks[rank]) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->ranks.size()); }
  const std::string& name() const override { return group_->name; }

  Status AllReduce(const Tensor& tensor, const AllReduceOptions& options) override {
    SM_RETURN_IF_ERROR(CheckTensor("AllReduce", tensor, /*reduces=*/true));
    SM_ASSIGN_OR_RETURN(std::vector<Part> parts,
                        Exchange("AllReduce", MakePart("AllReduce", tensor, tensor.numel())));
    ReduceParts(parts, tensor.dtype(), 0, tensor.numel(), options.op, tensor.raw_data());
    return absl::OkStatus();
  }
  StatusOr<std::unique_ptr<Work>> AllReduceAsync(const Tensor& tensor,
                                                 const AllReduceOptions& options) override {
    return std::unique_ptr<Work>(new CompletedWork(AllReduce(tensor, options)));
  }

  Status ReduceScatter(const Tensor& input, const Tensor& output,
                       const ReduceScatterOptions& options) override {
    SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", input, true));
    SM_RETURN_IF_ERROR(CheckTensor("ReduceScatter", output, true));
    SM_RETURN_IF_ERROR(CheckChunks("ReduceScatter", output, input));
    SM_ASSIGN_OR_RETURN(std::vector<Part> parts,
                        Exchange("ReduceScatter", MakePart("ReduceScatter", input, input.numel())));
    const int64_t n = output.numel();
    ReduceParts(parts, input.dtype(), rank_ * n, n, options.op, output.raw_data());
    return absl::OkStatus();
  }
  StatusOr<std::unique_ptr<Work>> ReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) override {
    return std::unique_ptr<Work>(new CompletedWork(ReduceScatter(input, output, options)));
  }

  Status AllGather(const Tensor& input, const Tensor& output, const AllGatherOptions&) override {
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

  Status AllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                   const Tensor& output, const std::vector<int64_t>& recv_counts,
                   const AllToAllOptions&) override {
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

  Status Broadcast(const Tensor& tensor, const BroadcastOptions& options) override {
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

  Status Send(const Tensor& tensor, int peer, const SendRecvOptions& options) override;
  Status Recv(const Tensor& tensor, int peer, const SendRecvOptions& options) override;

  Status Barrier() override {
    Part mine;
    mine.op = "Barrier";
    return Exchange("Barrier", std::move(mine)).status();
  }

 private:
  Status Error(const char* op, absl::StatusCode code, const std::string& detail) const {
    return Status(code, absl::StrCat(op, " on ", group_->name, " (group rank ", rank_,
                                     ", global rank ", global_, "): ", detail));
  }
  // Records a communication failure for FakeWorld::Run. Caller holds mu.
  Status Record(Status status) {
    world_->errors.emplace_back(Clock::now(), status);
    return status;
  }

  Status CheckTensor(const char* op, const Tensor& t, bool reduces) const;
  Status CheckChunks(const char* op, const Tensor& chunk, const Tensor& whole) const;
  StatusOr<int64_t> CheckCounts(const char* what, const std::vector<int64_t>& counts,
                                const Tensor& t) const;
  Part MakePart(const char* op, const Tensor& t, int64_t count) const {
    Part p;
    p.op = op;
    p.dtype = t.dtype();
    p.numel = t.numel();
    p.bytes = Bytes(t, 0, count);
    return p;
  }
  // Counts this call and applies injected failures. Caller holds mu.
  Status BeginLocked(const char* op);
  // Why group rank q can never deposit (dead or returned), or "" if it may.
  std::string GoneLocked(int q) const;
  StatusOr<std::vector<Part>> Exchange(const char* op, Part mine);

  std::shared_ptr<WorldState> world_;
  Group* group_;
  int rank_, global_;
  int64_t sequence_ = 0;
};

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

Status FakeCommunicator::Send(const Tensor& tensor, int peer, const SendRecvOptions& options) {
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

Status FakeCommunicator::Recv(const Tensor& tensor, int peer, const SendRecvOptions& options) {
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

std::unique_ptr<Communicator>& Member(ProcessGroups& pg, Axis axis) {
  switch (axis) {
    case Axis::kWorld: return pg.world;
    case Axis::kTp: return pg.tp;
    case Axis::kDp: return pg.dp;
    case Axis::kPp: return pg.pp;
    case Axis::kEtp: return pg.etp;
    case Axis::kEp: return pg.ep;
    case Axis::kEdp: return pg.edp;
  }
  return pg.world;
}

}  // namespace

void FakeWorld::FailCollective(int rank, int64_t k) { failures_.emplace_back(rank, k); }

Status FakeWorld::Run(int world, const GridSizes& sizes,
                      const std::function<Status(ProcessGroups&)>& fn) {
  SM_ASSIGN_OR_RETURN(RankGrid grid, RankGrid::Create(world, sizes));
  auto state = std::make_shared<WorldState>();
  state->timeout = options_.timeout;
  state->dead.assign(world, false);
  state->finished.assign(world, false);
  state->calls.assign(world, 0);
  state->failures.insert(failures_.begin(), failures_.end());
  // (axis, global rank) -> (group, group rank)
  std::map<std::pair<Axis, int>, std::pair<Group*, int>> membership;
  for (Axis axis : kAllAxes) {
    for (const std::vector<int>& ranks : grid.Groups(axis)) {
      auto group = std::make_unique<Group>();
      group->name = GroupName(axis, ranks);
      group->ranks = ranks;
      for (size_t i = 0; i < ranks.size(); ++i) {
        membership[{axis, ranks[i]}] = {group.get(), static_cast<int>(i)};
      }
      state->groups.push_back(std::move(group));
    }
  }
  rank_statuses_.assign(world, absl::OkStatus());
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      ProcessGroups pg;
      pg.grid = grid;
      pg.coords = grid.Coords(r);
      for (Axis axis : kAllAxes) {
        auto [group, group_rank] = membership.at({axis, r});
        Member(pg, axis) = std::make_unique<FakeCommunicator>(state, group, group_rank);
      }
      Status status = fn(pg);
      std::lock_guard<std::mutex> lock(state->mu);
      state->finished[r] = true;
      rank_statuses_[r] = status;
      if (!status.ok()) {
        state->errors.emplace_back(
            Clock::now(), Status(status.code(), absl::StrCat("rank ", r, ": ", status.message())));
      }
      state->cv.notify_all();
    });
  }
  for (std::thread& t : threads) t.join();
  bool any_failed = false;
  for (const Status& s : rank_statuses_) any_failed |= !s.ok();
  if (!any_failed) return absl::OkStatus();
  // The earliest error is the root cause; the rest are peers noticing it.
  return std::min_element(state->errors.begin(), state->errors.end(),
                          [](const auto& a, const auto& b) { return a.first < b.first; })
      ->second;
}

}  // namespace scalemoe
