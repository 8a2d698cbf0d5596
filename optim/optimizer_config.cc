#include "optim/optimizer_config.h"

#include "optim/schedule.h"

namespace scalemoe {
namespace {

Status Check(bool ok, const char* field, double value, const char* rule) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("optimizer.", field, "=", value, ": ", rule));
}

Status ValidateOptimizerFields(const config::OptimizerConfig& o) {
  SM_RETURN_IF_ERROR(Check(o.lr() > 0, "lr", o.lr(), "must be > 0"));
  SM_RETURN_IF_ERROR(Check(o.min_lr() >= 0 && o.min_lr() <= o.lr(), "min_lr", o.min_lr(),
                           "must be in [0, optimizer.lr]"));
  SM_RETURN_IF_ERROR(Check(o.weight_decay() >= 0, "weight_decay", o.weight_decay(), "must be >= 0"));
  SM_RETURN_IF_ERROR(Check(o.beta1() >= 0 && o.beta1() < 1, "beta1", o.beta1(), "must be in [0, 1)"));
  SM_RETURN_IF_ERROR(Check(o.beta2() >= 0 && o.beta2() < 1, "beta2", o.beta2(), "must be in [0, 1)"));
  SM_RETURN_IF_ERROR(Check(o.eps() > 0, "eps", o.eps(), "must be > 0"));
  SM_RETURN_IF_ERROR(Check(o.grad_clip() >= 0, "grad_clip", o.grad_clip(), "must be >= 0 (0 = off)"));
  if (o.type() == config::OptimizerConfig::MUON) {
    SM_RETURN_IF_ERROR(Check(o.muon_lr() > 0, "muon_lr", o.muon_lr(), "must be > 0"));
    SM_RETURN_IF_ERROR(Check(o.muon_momentum() >= 0 && o.muon_momentum() < 1, "muon_momentum",
                             o.muon_momentum(), "must be in [0, 1)"));
    SM_RETURN_IF_ERROR(Check(o.muon_ns_steps() >= 1, "muon_ns_steps", o.muon_ns_steps(),
                             "must be >= 1"));
  }
  return absl::OkStatus();
}

}  // namespace

Status ValidateOptimizerConfig(const config::RunConfig& config) {
  SM_RETURN_IF_ERROR(ValidateOptimizerFields(config.optimizer()));
  return ValidateSchedule(config.schedule(), config.train().train_steps());
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
