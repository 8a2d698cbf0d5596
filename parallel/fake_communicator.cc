// FakeWorld: builds one group per RankGrid axis, runs each rank's function on
// its own thread with FakeCommunicators, and reports the earliest error. Parts:
// fake_communicator_{internal.h,rendezvous.cc,collectives.cc}.
#include "parallel/fake_communicator.h"

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/fake_communicator_internal.h"
#include "parallel/group_name.h"

namespace scalemoe {
namespace {

using fake_internal::Clock;
using fake_internal::FakeCommunicator;
using fake_internal::Group;
using fake_internal::WorldState;

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
