#include "optim/optimizer_config.h"

#include <cmath>

#include "optim/param_groups.h"

namespace scalemoe {
namespace {

void CheckOptimizer(const config::RunConfig& c, ConfigProblems& p) {
  const config::OptimizerConfig& o = c.optimizer();
  p.Check(o.lr() > 0 && std::isfinite(o.lr()), "optimizer.lr=", o.lr(), " must be > 0: e.g. 3e-3");
  p.Check(o.min_lr() >= 0 && (o.lr() <= 0 || o.min_lr() <= o.lr()), "optimizer.min_lr=", o.min_lr(),
          " must be in [0, optimizer.lr=", o.lr(), "]: lower min_lr");
  p.NonNegative("optimizer.weight_decay", o.weight_decay());
  p.InUnitInterval("optimizer.beta1", o.beta1());
  p.InUnitInterval("optimizer.beta2", o.beta2());
  p.Check(o.eps() > 0, "optimizer.eps=", o.eps(), " must be > 0: e.g. 1e-8");
  p.NonNegative("optimizer.grad_clip", o.grad_clip());
  if (o.type() == config::OptimizerConfig::MUON) {
    const config::ParallelConfig& par = c.parallel();
    p.Check(par.tp() <= 1 && par.etp() <= 1, "optimizer.type=MUON with parallel.tp=", par.tp(),
            " etp=", par.etp(),
            " is not supported: Muon's Newton-Schulz step needs whole matrices but tensor "
            "parallelism splits them; use optimizer.type=ADAMW or set parallel.tp=1 and "
            "parallel.etp=1");
    p.Check(o.muon_lr() > 0, "optimizer.muon_lr=", o.muon_lr(), " must be > 0: e.g. 0.02");
    p.InUnitInterval("optimizer.muon_momentum", o.muon_momentum());
    p.Positive("optimizer.muon_ns_steps", o.muon_ns_steps());
  }
  ValidateRoleMultipliers(o, p);
  p.Check(c.parallel().zero_stage() == 0 || c.parallel().zero_stage() == 1,
          "parallel.zero_stage=", c.parallel().zero_stage(),
          " is not supported: use 0 (replicated) or 1 (sharded optimizer)");
}

// What LearningRate (optim/schedule.h) relies on; train.train_steps > 0 is
// the trainer's rule (launch).
void CheckSchedule(const config::RunConfig& c, ConfigProblems& p) {
  const config::ScheduleConfig& s = c.schedule();
  const int steps = c.train().train_steps();
  p.Check(s.warmup_steps() >= 0 && s.warmup_steps() <= steps,
          "schedule.warmup_steps=", s.warmup_steps(),
          " must be in [0, train.train_steps=", steps, "]: shorten the warm-up");
  p.Check(s.wsd_decay_fraction() >= 0 && s.wsd_decay_fraction() <= 1,
          "schedule.wsd_decay_fraction=", s.wsd_decay_fraction(), " must be in [0, 1]: e.g. 0.2");
}

}  // namespace

void ValidateOptimizerConfig(const config::RunConfig& config, ConfigProblems& problems) {
  CheckOptimizer(config, problems);
  CheckSchedule(config, problems);
}

AdamWOptions AdamWOptionsFrom(const config::OptimizerConfig& o) {
  return {.beta1 = o.beta1(), .beta2 = o.beta2(), .eps = o.eps(), .weight_decay = o.weight_decay()};
}

MuonOptions MuonOptionsFrom(const config::OptimizerConfig& o) {
  return {.momentum = o.muon_momentum(),
          .nesterov = o.muon_nesterov(),
          .ns_steps = o.muon_ns_steps(),
          .weight_decay = o.weight_decay()};
}

}  // namespace scalemoe
