// RankGrid and ProcessGroups: every process group of a run, derived from one
// rank order (Megatron's "tp-cp-ep-dp-pp", TP fastest; cp is always 1 here).
//
// Dense layers see the world as TP x DP x PP:
//   global = tp + TP * (dp + DP * pp)
// Expert layers fold the same ranks into ETP x EP x EDP x PP:
//   global = etp + ETP * (ep + EP * (edp + EDP * pp))
// PP groups are identical in both views. World = TP*DP*PP = ETP*EP*EDP*PP.
// Dense parameters are reduced over DP, expert parameters over EDP.
//
// RankGrid is pure arithmetic (no communication) so it is testable for any
// world size in one process; ProcessGroups holds this rank's communicators,
// passed explicitly to whoever needs them (no globals).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/communicator.h"

namespace scalemoe {

enum class Axis : uint8_t { kWorld = 0, kTp, kDp, kPp, kEtp, kEp, kEdp };
const char* AxisName(Axis axis);  // "world", "tp", "dp", "pp", "etp", "ep", "edp"

struct GridSizes {
  int tp = 1, dp = 1, pp = 1;   // dense view
  int etp = 1, ep = 1, edp = 1; // expert view
};

// This rank's coordinates on every axis.
struct GridCoords {
  int global = 0;
  int tp = 0, dp = 0, pp = 0;
  int etp = 0, ep = 0, edp = 0;
};

class RankGrid {
 public:
  // Checks that both views tile `world` exactly; errors name the sizes and
  // the fix ("tp*dp*pp = 6 but the world has 4 ranks: ...").
  static StatusOr<RankGrid> Create(int world, const GridSizes& sizes);

  int world() const { return world_; }
  const GridSizes& sizes() const { return sizes_; }
  GridCoords Coords(int global_rank) const;
  int Size(Axis axis) const;
  // Global ranks of the `axis` group that contains `global_rank`, in group
  // rank order.
  std::vector<int> GroupOf(Axis axis, int global_rank) const;
  // Every group of `axis`, each in group rank order, groups ordered by their
  // smallest global rank.
  std::vector<std::vector<int>> Groups(Axis axis) const;
  // Multi-line description for `scalemoe inspect --world N`.
  std::string Describe() const;

 private:
  int world_ = 1;
  GridSizes sizes_;
};

// This rank's communicators, one per axis (world included). A size-1 axis
// still has a communicator (of one rank), so callers never branch on it.
struct ProcessGroups {
  RankGrid grid;
  GridCoords coords;
  std::unique_ptr<Communicator> world, tp, dp, pp, etp, ep, edp;

  Communicator& Get(Axis axis) const;
};

}  // namespace scalemoe
