// Validation of the MoE part of a RunConfig (moe.* and how the experts split
// over parallel.ep/etp and the MoE layers' tokens over parallel.tp). Called
// once, up front, by launch/config_validate.cc (core/config_problems.h);
// MoeLayer's and GroupedExperts' constructors only SM_CHECK what this
// already reports.
#pragma once

#include "configs/scalemoe.pb.h"
#include "core/config_problems.h"

namespace scalemoe {

// Appends every broken moe.* rule to `problems`. A dense model
// (moe.num_experts = 0) only needs parallel.ep = etp = 1.
void ValidateMoeConfig(const config::RunConfig& cfg, ConfigProblems& problems);

}  // namespace scalemoe
