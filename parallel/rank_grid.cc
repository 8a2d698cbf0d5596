// RankGrid arithmetic (see process_groups.h for the two rank orders) and
// ProcessGroups::Get.
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "parallel/group_name.h"
#include "parallel/process_groups.h"

namespace scalemoe {
namespace {

// Global rank of `c` in the view that `axis` belongs to (dense for tp/dp,
// expert for etp/ep/edp; pp and world are the same in both).
int GlobalOf(const GridSizes& s, const GridCoords& c, Axis axis) {
  switch (axis) {
    case Axis::kEtp:
    case Axis::kEp:
    case Axis::kEdp:
      return c.etp + s.etp * (c.ep + s.ep * (c.edp + s.edp * c.pp));
    default:
      return c.tp + s.tp * (c.dp + s.dp * c.pp);
  }
}

// The coordinate of `axis` inside `c` (world: the global rank itself).
int* CoordOf(GridCoords& c, Axis axis) {
  switch (axis) {
    case Axis::kWorld: return &c.global;
    case Axis::kTp: return &c.tp;
    case Axis::kDp: return &c.dp;
    case Axis::kPp: return &c.pp;
    case Axis::kEtp: return &c.etp;
    case Axis::kEp: return &c.ep;
    case Axis::kEdp: return &c.edp;
  }
  return &c.global;
}

}  // namespace

const char* AxisName(Axis axis) {
  switch (axis) {
    case Axis::kWorld: return "world";
    case Axis::kTp: return "tp";
    case Axis::kDp: return "dp";
    case Axis::kPp: return "pp";
    case Axis::kEtp: return "etp";
    case Axis::kEp: return "ep";
    case Axis::kEdp: return "edp";
  }
  return "unknown";
}

std::string GroupName(Axis axis, const std::vector<int>& global_ranks) {
  constexpr size_t kMaxListed = 16, kHead = 8;
  std::string list;
  if (global_ranks.size() <= kMaxListed) {
    list = absl::StrJoin(global_ranks, ",");
  } else {
    list = absl::StrCat(
        absl::StrJoin(global_ranks.begin(), global_ranks.begin() + kHead, ","), ",...,",
        global_ranks.back());
  }
  return absl::StrCat(AxisName(axis), "[", list, "]");
}

StatusOr<RankGrid> RankGrid::Create(int world, const GridSizes& sizes) {
  if (world < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("world size ", world, " is not positive: run at least one rank"));
  }
  const struct {
    const char* name;
    int value;
  } named[] = {{"tp", sizes.tp},   {"dp", sizes.dp}, {"pp", sizes.pp},
               {"etp", sizes.etp}, {"ep", sizes.ep}, {"edp", sizes.edp}};
  for (const auto& n : named) {
    if (n.value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parallel size ", n.name, "=", n.value, " is not positive: every size must be >= 1"));
    }
  }
  const int64_t dense = int64_t{sizes.tp} * sizes.dp * sizes.pp;
  if (dense != world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp*dp*pp = ", sizes.tp, "*", sizes.dp, "*", sizes.pp, " = ", dense,
        " but the world has ", world, " ranks: choose tp, dp, pp whose product is ", world));
  }
  const int64_t expert = int64_t{sizes.etp} * sizes.ep * sizes.edp * sizes.pp;
  if (expert != world) {
    return absl::InvalidArgumentError(absl::StrCat(
        "etp*ep*edp*pp = ", sizes.etp, "*", sizes.ep, "*", sizes.edp, "*", sizes.pp, " = ",
        expert, " but the world has ", world, " ranks: choose etp, ep, edp with etp*ep*edp = ",
        world / sizes.pp, " (= tp*dp)"));
  }
  RankGrid grid;
  grid.world_ = world;
  grid.sizes_ = sizes;
  return grid;
}

GridCoords RankGrid::Coords(int global_rank) const {
  SM_CHECK_MSG(global_rank >= 0 && global_rank < world_, "rank ", global_rank,
               " outside world of ", world_);
  const GridSizes& s = sizes_;
  GridCoords c;
  c.global = global_rank;
  c.tp = global_rank % s.tp;
  c.dp = (global_rank / s.tp) % s.dp;
  c.pp = global_rank / (s.tp * s.dp);
  c.etp = global_rank % s.etp;
  c.ep = (global_rank / s.etp) % s.ep;
  c.edp = (global_rank / (s.etp * s.ep)) % s.edp;
  return c;
}

int RankGrid::Size(Axis axis) const {
  switch (axis) {
    case Axis::kWorld: return world_;
    case Axis::kTp: return sizes_.tp;
    case Axis::kDp: return sizes_.dp;
    case Axis::kPp: return sizes_.pp;
    case Axis::kEtp: return sizes_.etp;
    case Axis::kEp: return sizes_.ep;
    case Axis::kEdp: return sizes_.edp;
  }
  return 1;
}

std::vector<int> RankGrid::GroupOf(Axis axis, int global_rank) const {
  std::vector<int> ranks;
  ranks.reserve(Size(axis));
  if (axis == Axis::kWorld) {
    for (int r = 0; r < world_; ++r) ranks.push_back(r);
    return ranks;
  }
  GridCoords c = Coords(global_rank);
  for (int i = 0; i < Size(axis); ++i) {
    *CoordOf(c, axis) = i;
    ranks.push_back(GlobalOf(sizes_, c, axis));
  }
  return ranks;
}

std::vector<std::vector<int>> RankGrid::Groups(Axis axis) const {
  // Every coordinate's stride is positive, so a group's smallest global rank
  // is its group rank 0: scanning ranks in order lists groups in order.
  if (axis == Axis::kWorld) return {GroupOf(axis, 0)};
  std::vector<std::vector<int>> groups;
  for (int r = 0; r < world_; ++r) {
    GridCoords c = Coords(r);
    if (*CoordOf(c, axis) == 0) groups.push_back(GroupOf(axis, r));
  }
  return groups;
}

std::string RankGrid::Describe() const {
  const GridSizes& s = sizes_;
  std::string out = absl::StrCat("rank grid: world ", world_, " = tp ", s.tp, " x dp ", s.dp,
                                 " x pp ", s.pp, " (dense) = etp ", s.etp, " x ep ", s.ep,
                                 " x edp ", s.edp, " x pp ", s.pp, " (expert)\n");
  for (Axis axis : kAllAxes) {
    if (axis == Axis::kWorld) continue;
    std::vector<std::string> groups;
    for (const auto& g : Groups(axis)) groups.push_back(absl::StrCat("[", absl::StrJoin(g, ","), "]"));
    absl::StrAppend(&out, "  ", AxisName(axis), " (size ", Size(axis), "): ",
                    absl::StrJoin(groups, " "), "\n");
  }
  return out;
}

Communicator& ProcessGroups::Get(Axis axis) const {
  Communicator* comm = nullptr;
  switch (axis) {
    case Axis::kWorld: comm = world.get(); break;
    case Axis::kTp: comm = tp.get(); break;
    case Axis::kDp: comm = dp.get(); break;
    case Axis::kPp: comm = pp.get(); break;
    case Axis::kEtp: comm = etp.get(); break;
    case Axis::kEp: comm = ep.get(); break;
    case Axis::kEdp: comm = edp.get(); break;
  }
  SM_CHECK_MSG(comm != nullptr, "ProcessGroups has no ", AxisName(axis), " communicator");
  return *comm;
}

}  // namespace scalemoe
