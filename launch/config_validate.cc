// Config validation and the parallel layout (declared in launch/config.h).
// The one validation path: one ConfigProblems collector goes through every
// module's validator (model, MoE, scale vectors, optimizer) and then the
// rules launch owns (layout, training, data, checkpoints, logging, sizes and
// the per-rank memory estimate), so one run of `scalemoe check-config` shows
// all problems; each message names the field, its value and the fix.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <numeric>

#include "core/config_problems.h"
#include "launch/config.h"
#include "launch/memory_estimate.h"
#include "model/model_config.h"
#include "moe/moe_config.h"
#include "norm/scale_options.h"
#include "optim/optimizer_config.h"

namespace scalemoe {
namespace {

std::string WorldText(int world_size) {
  return absl::StrCat("invalid config (world size ", world_size, ")");
}

// a * b, or INT64_MAX when it overflows (absurd degrees must not wrap into
// a product that happens to tile the world).
int64_t SaturatingMul(int64_t a, int64_t b) {
  int64_t out;
  return __builtin_mul_overflow(a, b, &out) ? INT64_MAX : out;
}

// Fills `layout` from the config and the world; returns false (with the
// reasons in `p`) when the grids do not tile the world.
bool CheckLayout(const config::RunConfig& c, int world, ConfigProblems& p,
                 ParallelLayout* layout) {
  const config::ParallelConfig& par = c.parallel();
  p.Check(world >= 1, "world size ", world, " must be >= 1: launch at least one rank");
  p.Positive("parallel.tp", par.tp());
  p.Positive("parallel.pp", par.pp());
  p.Positive("parallel.ep", par.ep());
  p.Positive("parallel.etp", par.etp());
  p.Check(par.dp() >= 0, "parallel.dp=", par.dp(), " must be >= 0: set 0 to derive it");
  if (world < 1 || par.tp() < 1 || par.pp() < 1 || par.ep() < 1 || par.etp() < 1 || par.dp() < 0) {
    return false;
  }
  const int64_t tp_pp = SaturatingMul(par.tp(), par.pp());
  int64_t dp = par.dp();
  bool ok = true;
  if (dp == 0) {
    ok &= world % tp_pp == 0;
    p.Check(world % tp_pp == 0, "world size ", world,
            " is not divisible by parallel.tp*pp=", par.tp(), "*", par.pp(), "=", tp_pp,
            ": launch a multiple of ", tp_pp, " ranks or choose tp, pp whose product divides it");
    dp = world / tp_pp;
  } else {
    const int64_t ranks = SaturatingMul(tp_pp, dp);
    ok &= ranks == world;
    p.Check(ranks == world, "parallel.tp*dp*pp=", par.tp(), "*", dp, "*", par.pp(), "=", ranks,
            " != world size ", world, ": set parallel.dp=0 to derive it, or launch ", ranks,
            " ranks");
  }
  const int64_t expert_grid = SaturatingMul(SaturatingMul(par.etp(), par.ep()), par.pp());
  ok &= world % expert_grid == 0;
  p.Check(world % expert_grid == 0, "world size ", world,
          " is not divisible by parallel.etp*ep*pp=", par.etp(), "*", par.ep(), "*", par.pp(), "=",
          expert_grid, ": choose ep and etp so that etp*ep*pp divides the world size");
  if (!ok) return false;
  *layout = ParallelLayout{par.tp(), par.pp(),  static_cast<int>(dp),
                           par.ep(), par.etp(), static_cast<int>(world / expert_grid),
                           world};
  return true;
}

void CheckTraining(const config::RunConfig& c, const ParallelLayout* layout, ConfigProblems& p) {
  const config::TrainConfig& t = c.train();
  p.Positive("train.train_steps", t.train_steps());
  p.Positive("train.micro_batch_size", t.micro_batch_size());
  p.Check(t.global_batch_size() >= 0, "train.global_batch_size=", t.global_batch_size(),
          " must be >= 0: set 0 for micro_batch_size * dp");
  if (layout != nullptr && t.micro_batch_size() > 0 && t.global_batch_size() > 0) {
    const int64_t per_step = int64_t{t.micro_batch_size()} * layout->dp;
    p.Check(t.global_batch_size() % per_step == 0,
            "train.global_batch_size=", t.global_batch_size(),
            " is not a multiple of train.micro_batch_size*dp=", t.micro_batch_size(), "*",
            layout->dp, "=", per_step, ": choose a global batch that is a multiple of ", per_step);
  }
  p.Check(t.max_consecutive_skips() >= 1, "train.max_consecutive_skips=",
          t.max_consecutive_skips(),
          " must be >= 1: the number of non-finite steps in a row that stops a SKIP run");
  p.Check(t.loss_chunk_tokens() >= 0, "train.loss_chunk_tokens=", t.loss_chunk_tokens(),
          " must be >= 0: 0 takes the LM head and its loss over the whole micro-batch, N over "
          "at most N tokens at a time");
  p.Check(t.eval_interval() >= 0, "train.eval_interval=", t.eval_interval(),
          " must be >= 0: set 0 to disable evaluation");
  p.Check(t.eval_interval() == 0 || t.eval_batches() > 0, "train.eval_batches=", t.eval_batches(),
          " must be > 0 when train.eval_interval > 0: e.g. 4");
  p.Check(!c.data().dataset_dir().empty(),
          "data.dataset_dir is empty: set it to the directory written by `scalemoe prepare`");
  p.Check(c.checkpoint().interval() >= 0, "checkpoint.interval=", c.checkpoint().interval(),
          " must be >= 0: set 0 to save only at the end");
  p.Check(c.checkpoint().keep_last() >= 0, "checkpoint.keep_last=", c.checkpoint().keep_last(),
          " must be >= 0: set 0 to keep all");
  p.Positive("logging.log_interval", c.logging().log_interval());
  p.Positive("parallel.grad_bucket_elements", c.parallel().grad_bucket_elements());
  p.Check(c.parallel().communicator() != config::ParallelConfig::NCCL ||
              t.device() == config::TrainConfig::CUDA,
          "parallel.communicator=NCCL needs train.device: CUDA (NCCL moves device memory): set "
          "train.device: CUDA, or parallel.communicator: AUTO or MPI");
  if (t.cuda_graphs()) {
    p.Check(t.device() == config::TrainConfig::CUDA,
            "train.cuda_graphs=true needs train.device: CUDA: set train.device: CUDA, or "
            "train.cuda_graphs: false");
    p.Check(layout == nullptr || layout->world == 1, "train.cuda_graphs=true needs a world of one "
            "rank (the communicators move data through the host, which a graph cannot replay): "
            "launch one rank, or set train.cuda_graphs: false");
    p.Check(c.moe().capacity_factor() == 0, "train.cuda_graphs=true needs moe.capacity_factor: 0 "
            "(capacity drops read the expert counts on the host each micro-batch): set "
            "moe.capacity_factor: 0, or train.cuda_graphs: false");
  }
  p.Check(!c.name().empty() && c.name().find('/') == std::string::npos, "name='", c.name(),
          "' must be non-empty without '/': it names the run directory");
}

}  // namespace

int MinimalWorldSize(const config::RunConfig& c) {
  const config::ParallelConfig& par = c.parallel();
  const int64_t tp = std::max(par.tp(), 1), pp = std::max(par.pp(), 1);
  int64_t world;
  if (par.dp() > 0) {
    world = SaturatingMul(SaturatingMul(tp, par.dp()), pp);
  } else {
    const int64_t dense = SaturatingMul(tp, pp);
    const int64_t expert =
        SaturatingMul(SaturatingMul(std::max(par.etp(), 1), std::max(par.ep(), 1)), pp);
    world = SaturatingMul(dense / std::gcd(dense, expert), expert);
  }
  // Past INT_MAX no world exists: validation then names the degrees.
  return static_cast<int>(std::min<int64_t>(world, INT_MAX));
}

StatusOr<ParallelLayout> ResolveLayout(const config::RunConfig& c, int world_size) {
  ConfigProblems p;
  ParallelLayout layout;
  if (!CheckLayout(c, world_size, p, &layout)) return p.ToStatus(WorldText(world_size));
  return layout;
}

Status ValidateConfig(const config::RunConfig& c, int world_size) {
  ConfigProblems p;
  ParallelLayout layout;
  const bool layout_ok = CheckLayout(c, world_size, p, &layout);
  ValidateModelConfig(c, p);
  ValidateMoeConfig(c, p);
  ValidateScaleVectorConfig(c, p);
  ValidateOptimizerConfig(c, p);
  CheckTraining(c, layout_ok ? &layout : nullptr, p);
  // The sizes need every other rule to hold (positive, dividing as split).
  if (p.empty()) ValidateSizes(c, layout, p);
  return p.ToStatus(WorldText(world_size));
}

}  // namespace scalemoe
