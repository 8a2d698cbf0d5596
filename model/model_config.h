// Validation of the model part of a RunConfig: sizes, attention heads, and
// how the dense layers split over the layout (tensor parallel by heads, ffn
// and vocabulary; pipeline stages by layers). Called once, up front, by
// launch/config_validate.cc (core/config_problems.h); the layer
// constructors only SM_CHECK what this already reports.
#pragma once

#include "configs/scalemoe.pb.h"
#include "core/config_problems.h"

namespace scalemoe {

// Appends every broken model.* rule (and its parallel.tp/pp/virtual_stages
// rules) to `problems`.
void ValidateModelConfig(const config::RunConfig& cfg, ConfigProblems& problems);

}  // namespace scalemoe
