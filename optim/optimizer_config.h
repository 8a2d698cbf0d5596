// The optimizer hyper-parameters of a RunConfig: checked and turned into
// AdamW/Muon options in one place for both optimizers (Optimizer and
// DistributedOptimizer).
#pragma once

#include "configs/scalemoe.pb.h"
#include "core/status.h"
#include "optim/adamw.h"
#include "optim/muon.h"

namespace scalemoe {

// Ranges of optimizer.* (lr > 0, min_lr in [0, lr], betas in [0, 1), ...)
// and the schedule's against train.train_steps. Errors read
// "optimizer.<field>=<value>: <rule>".
Status ValidateOptimizerConfig(const config::RunConfig& config);

AdamWOptions AdamWOptionsFrom(const config::OptimizerConfig& o);
MuonOptions MuonOptionsFrom(const config::OptimizerConfig& o);

}  // namespace scalemoe
