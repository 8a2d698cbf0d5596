// DistributedOptimizer: the optimizer of a data-/expert-parallel run. Input
// to Step: every rank's own, unsynchronised gradients in the registry's flat
// grad buffer (dense parameters replicated over dp, experts owned per EP rank
// and replicated over edp). Under tensor parallelism the registry holds this
// rank's (E)TP slice of each split parameter and the whole of each replicated
// one, and the model has already summed the partial gradients over (E)TP
// (ParamLayout.tp_partial_grad), so every rank holds its data-parallel
// replica's gradient of what it holds, as without TP: the dp/edp groups
// (same (E)TP rank) sync and shard identical layouts. Under pipeline parallelism each stage's
// registry holds only its own (disjoint) parameters; the dp/edp groups lie
// inside one stage, so the sync is per stage, and the world all-reduce of
// the norm adds every stage's parameters exactly once. Output: the same parameters on every
// replica, equal (up to summation order) to a single-rank Optimizer stepping
// on the mean gradient (GradSync explains the 1/DP for experts).
//
// parallel.zero_stage:
//   0  gradients all-reduced (GradSync), then AdamW/Muon on every rank with
//      replicated state.
//   1  ZeRO-1. AdamW elements: dense ones packed (registry order) into one
//      buffer sharded over dp, expert ones into one sharded over edp, each
//      zero-padded to a multiple of its group size. Per step: pack grads,
//      reduce-scatter, ×1/DP; AdamW on this rank's shard of the master
//      weights (a copy in the parameters' dtype, f32 or f64) with the
//      element's own lr/decay (ParamGroups segments: a shard may cut through
//      a scale vector); all-gather the shard back into the registry.
//      Muon matrices need whole matrices: their gradients are all-reduced
//      instead, and every rank updates them with replicated momentum (so
//      only AdamW state + master weights shrink as 1/DP).
// Both stages: the global grad norm counts every element once over the world
// (shard sums of squares; a tensor replicated over dp/edp only on group rank
// 0; one replicated over its (E)TP group only on (E)TP rank 0, a split one on
// every (E)TP rank; a tied embedding only on the first pipeline stage, not
// the last stage's copy),
// all-reduced over the world as a device tensor, then clipping to
// optimizer.grad_clip inside the update ops. A non-finite norm changes no
// parameter and no state (nonfinite = 1). The whole step stays on the
// optimizer's context: it reads nothing on the host (no ctx.ToHost).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "configs/scalemoe.pb.h"
#include "core/context.h"
#include "core/params.h"
#include "core/status.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/muon.h"
#include "optim/optimizer.h"
#include "optim/optimizer_state.h"
#include "optim/param_groups.h"
#include "parallel/grad_sync.h"
#include "parallel/process_groups.h"

namespace scalemoe {

// Bytes this rank holds for training state.
struct MemoryReport {
  int64_t param_bytes = 0;
  int64_t grad_bytes = 0;
  int64_t optimizer_state_bytes = 0;  // AdamW m, v, Muon momentum, master weights
};

class DistributedOptimizer {
 public:
  // Reads what Optimizer::Create reads plus parallel.zero_stage and
  // parallel.grad_bucket_elements, validated as Optimizer::Create's (so
  // zero_stage is 0 or 1, and optimizer.type=MUON comes only with tp = etp =
  // 1: Newton-Schulz needs whole matrices; `groups` must be laid out as
  // config.parallel says). `registry` (materialised) and `groups` must
  // outlive the optimizer. The buffers live, and the update runs, on `ctx`.
  static StatusOr<std::unique_ptr<DistributedOptimizer>> Create(
      const config::RunConfig& config, ParamRegistry& registry, const ProcessGroups& groups,
      const ExecContext& ctx = ExecContext());
  ~DistributedOptimizer();
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // Flat gradient range [begin, end) is final for this step (the model's
  // FinishBackward reports ranges as it unfolds them): starts the all-reduce
  // of every bucket it completes, so communication overlaps the rest of the
  // backward. Only what GradSync syncs (stage 0: everything; stage 1: Muon
  // matrices) starts early; Step waits for it and syncs the rest.
  Status GradientsReady(int64_t begin, int64_t end);

  // Synchronises the gradients, clips and applies one update (see above),
  // queued on the optimizer's context (`ctx` must share its device and
  // stream). Collective over the world: every rank calls it with the same
  // `step`, whatever the gradients hold. Errors are communication failures.
  // Under stage 1 the registry's grads of AdamW elements stay this rank's
  // local ones (the mean lives in the shard); clipping never rescales grads.
  StatusOr<StepResult> Step(const ExecContext& ctx, int64_t step);

  double LearningRateAt(int64_t step) const;
  const ParamGroups& groups() const { return groups_; }
  int zero_stage() const { return zero_stage_; }
  // Updates applied so far: a host read of the device counter (checkpoints),
  // and its restore.
  int64_t num_updates() const;
  void set_num_updates(int64_t n);

  // The state this rank holds, per parameter ("optimizer.adam_m/<name>",
  // adam_v, muon_momentum), aliasing the live buffers, as ranges of the
  // parameter's local (E)TP shard. Replicated state (all of it under stage 0,
  // Muon momentum under stage 1) appears on every rank of its group (dp or
  // edp) with start 0: a writer keeps group rank 0's (and, for a parameter
  // replicated over (E)TP, (E)TP rank 0's).
  std::vector<StateSlice> StateSlices() const;
  // Re-reads the ZeRO-1 master weights from the registry's values; call after
  // restoring parameters from a checkpoint. No-op under stage 0.
  void LoadMasterFromParams();

  MemoryReport Memory() const;

 private:
  struct Domain;  // one ZeRO-1 shard space (dense over dp, or expert over edp)

  DistributedOptimizer(const config::RunConfig& config, ParamRegistry& registry,
                       const ProcessGroups& groups, ParamGroups param_groups,
                       const ExecContext& ctx);
  Status SyncGradients();
  Status GatherParameters();

  ExecContext ctx_;
  ParamRegistry& registry_;
  const ProcessGroups& process_groups_;
  config::OptimizerConfig options_;
  config::ScheduleConfig schedule_;
  int64_t total_steps_;
  int zero_stage_;
  ParamGroups groups_;
  std::unique_ptr<GradSync> grad_sync_;           // stage 0: everything; stage 1: Muon matrices
  std::optional<AdamW> adamw_;                    // stage 0: over [0, total)
  std::vector<std::unique_ptr<Domain>> domains_;  // stage 1: dense, expert
  std::optional<Muon> muon_;
  GradNormRanges norm_ranges_;  // what this rank counts toward the global norm
  Tensor num_updates_;          // i64 [1] on ctx_
};

}  // namespace scalemoe
