// Optimizer: the single-rank optimizer a trainer drives. Owns the parameter
// groups, the schedule, clipping, AdamW (every non-Muon element) and, for
// OptimizerConfig.type == MUON, Muon (2-D hidden matrices).
//
// Use per training step: gradients in the registry's flat grad buffer, then
// Step(ctx, step). State (all flat, parallel to the registry's
// flat_values(), so a ZeRO-1 optimizer can slice it; on the context given to
// Create) is exposed by name for checkpoints:
//   optimizer.adam_m          [total] AdamW first moment
//   optimizer.adam_v          [total] AdamW second moment
//   optimizer.muon_momentum   [total] Muon momentum (MUON only)
//   optimizer.num_updates     i64[1]  updates applied (bias correction)
// The registry must outlive the optimizer and stay materialised.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/muon.h"
#include "optim/param_groups.h"

namespace scalemoe {

// What one Step did. The norm and the non-finite flag stay tensors on the
// optimizer's context (a step reads nothing on the host); ReadStepStats
// brings them to the host where a decision or a log line needs them.
struct StepResult {
  double lr = 0.0;       // AdamW rate used (before role multipliers)
  double muon_lr = 0.0;  // Muon rate used (0 without Muon)
  Tensor grad_norm;      // f64 [1]: global norm before clipping; NaN/Inf if non-finite
  Tensor nonfinite;      // i32 [1]: 1 = non-finite norm: parameters and state untouched
};

// Host values of a StepResult, for logs and the non-finite policy.
struct StepStats {
  double lr = 0.0;
  double muon_lr = 0.0;
  double grad_norm = 0.0;
  bool applied = false;  // false: non-finite norm, nothing was changed
};

// Reads the result's two device values through ctx.ToHost (two host reads).
StepStats ReadStepStats(const ExecContext& ctx, const StepResult& result);

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  // Reads config.optimizer, config.schedule, config.scale_vectors.decay_policy
  // and config.train.train_steps (schedule length), which must have passed
  // ValidateOptimizerConfig (optim/optimizer_config.h). Errors: an
  // unmaterialised registry, or parameters that are not f32/f64 on the CPU.
  // State lives on `ctx`.
  static StatusOr<std::unique_ptr<Optimizer>> Create(const config::RunConfig& config,
                                                     ParamRegistry& registry,
                                                     const ExecContext& ctx = ExecContext());

  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Applies one update with the gradients clipped to optimizer.grad_clip (0:
  // off; the clip factor is applied inside the update, the grad buffer is
  // not rescaled). `step` is the 0-based training step (the schedule's input;
  // the bias correction counts applied updates instead). With a non-finite
  // gradient norm, parameters and state are left untouched and nonfinite is
  // 1: the trainer stops or skips per train.on_nonfinite. Queued on `ctx`
  // (the context of Create, or one on the same device and stream); reads
  // nothing on the host.
  StepResult Step(const ExecContext& ctx, int64_t step);

  // Scheduled AdamW rate (before role multipliers) for `step`.
  double LearningRateAt(int64_t step) const;

  const ParamGroups& groups() const { return groups_; }
  // Updates applied so far (a host read of the device counter).
  int64_t num_updates() const;

  // Named state (list above). The flat tensors alias the live state: copy
  // them before the next Step to keep a snapshot.
  NamedTensors StateTensors() const;
  // Restores state saved by StateTensors() from an optimizer of the same
  // config and registry layout: every name must be present, no extra name,
  // same element counts (dtype converts). Errors name the tensor.
  Status LoadStateTensors(const NamedTensors& state);

 private:
  Optimizer(const config::RunConfig& config, ParamRegistry& registry, ParamGroups groups,
            const ExecContext& ctx);

  ExecContext ctx_;
  ParamRegistry& registry_;
  config::OptimizerConfig options_;
  config::ScheduleConfig schedule_;
  int64_t total_steps_;
  ParamGroups groups_;
  AdamW adamw_;               // over [0, total)
  std::optional<Muon> muon_;  // MUON only
  GradNormRanges norm_ranges_;  // every trained parameter's flat grads
  Tensor num_updates_;        // i64 [1] on ctx_
};

}  // namespace scalemoe
