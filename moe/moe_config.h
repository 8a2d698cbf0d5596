// Validation of the MoE part of a RunConfig, for launch/ to call once up
// front (MoeLayer's constructor only SM_CHECKs what this already reports).
#pragma once

#include "configs/scalemoe.pb.h"
#include "core/status.h"

namespace scalemoe {

// InvalidArgument naming the field and the fix, or OK. Call only when the
// model has MoE layers (moe.num_experts > 0).
Status ValidateMoeConfig(const config::RunConfig& cfg);

}  // namespace scalemoe
