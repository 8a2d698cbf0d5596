// The optimizer hyper-parameters of a RunConfig: checked and turned into
// AdamW/Muon options in one place for both optimizers (Optimizer and
// DistributedOptimizer).
#pragma once

#include "configs/scalemoe.pb.h"
#include "core/config_problems.h"
#include "optim/adamw.h"
#include "optim/muon.h"

namespace scalemoe {

// Appends every broken rule of optimizer.* (lr > 0, min_lr in [0, lr], betas
// in [0, 1), Muon only without (E)TP, role multipliers), schedule.* (against
// train.train_steps) and parallel.zero_stage to `problems`. Called once, up
// front, by launch/config_validate.cc; Optimizer::Create and
// DistributedOptimizer::Create rely on it and do not check these again.
void ValidateOptimizerConfig(const config::RunConfig& config, ConfigProblems& problems);

AdamWOptions AdamWOptionsFrom(const config::OptimizerConfig& o);
MuonOptions MuonOptionsFrom(const config::OptimizerConfig& o);

}  // namespace scalemoe
