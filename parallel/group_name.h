// GroupName: the one spelling of a process group in messages ("dp[0,2]"),
// shared by every Communicator backend so errors read the same everywhere.
#pragma once

#include <string>
#include <vector>

#include "parallel/process_groups.h"

namespace scalemoe {

// Every axis, in the order ProcessGroups lists its communicators.
inline constexpr Axis kAllAxes[] = {Axis::kWorld, Axis::kTp, Axis::kDp,  Axis::kPp,
                                    Axis::kEtp,   Axis::kEp, Axis::kEdp};

// "dp[0,2]"; groups of more than 16 ranks list the first 8, then "...,last".
std::string GroupName(Axis axis, const std::vector<int>& global_ranks);

}  // namespace scalemoe
