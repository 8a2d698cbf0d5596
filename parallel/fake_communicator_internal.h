// Internals of FakeWorld (parallel/fake_communicator.h), shared by its source
// files: the world's shared state, one rank's deposit, and the
// FakeCommunicator that meets its peers there. Include only from fake_communicator*.cc.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "parallel/communicator.h"

namespace scalemoe::fake_internal {

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

// `count` elements of `t` from element `offset`, as bytes.
std::vector<uint8_t> Bytes(const Tensor& t, int64_t offset, int64_t count);

class FakeCommunicator : public Communicator {
 public:
  FakeCommunicator(std::shared_ptr<WorldState> world, Group* group, int rank)
      : world_(std::move(world)), group_(group), rank_(rank), global_(group->ranks[rank]) {}

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->ranks.size()); }
  const std::string& name() const override { return group_->name; }

  Status Barrier() override;

 protected:
  Status HostAllReduce(const Tensor& tensor, const AllReduceOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostAllReduceAsync(const Tensor& tensor,
                                                     const AllReduceOptions& options) override {
    return std::unique_ptr<Work>(new CompletedWork(HostAllReduce(tensor, options)));
  }

  Status HostReduceScatter(const Tensor& input, const Tensor& output,
                           const ReduceScatterOptions& options) override;
  StatusOr<std::unique_ptr<Work>> HostReduceScatterAsync(
      const Tensor& input, const Tensor& output, const ReduceScatterOptions& options) override {
    return std::unique_ptr<Work>(new CompletedWork(HostReduceScatter(input, output, options)));
  }

  Status HostAllGather(const Tensor& input, const Tensor& output, const AllGatherOptions&) override;
  Status HostAllToAllV(const Tensor& input, const std::vector<int64_t>& send_counts,
                       const Tensor& output, const std::vector<int64_t>& recv_counts,
                       const AllToAllOptions&) override;
  Status HostBroadcast(const Tensor& tensor, const BroadcastOptions& options) override;
  Status HostSend(const Tensor& tensor, int peer, const SendRecvOptions& options) override;
  Status HostRecv(const Tensor& tensor, int peer, const SendRecvOptions& options) override;

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

}  // namespace scalemoe::fake_internal
