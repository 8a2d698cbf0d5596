#include "optim/distributed_optimizer.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <utility>

#include "core/ops.h"
#include "norm/scale_options.h"
#include "optim/clip.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"

namespace scalemoe {
namespace {

// The last pipeline stage's copy of a tied embedding (model/model.h): the
// trainer gives it the first stage's gradient, so the norm counts only the
// first stage's copy.
bool IsTiedCopy(const Param& p) {
  return p.spec.role == ParamRole::kEmbedding && p.spec.layout.pipeline_stage > 0;
}

// Whether this rank's copy of `p` counts toward the world's sum of squares
// at all: a tensor replicated over its (E)TP group (every (E)TP rank holds
// the same values and, after the model's partial-gradient sum, the same
// gradient) only on (E)TP rank 0; a split one on every (E)TP rank (each holds
// a different slice); a tied embedding copy never.
bool CountsOverTp(const Param& p, const ProcessGroups& groups) {
  if (IsTiedCopy(p)) return false;
  if (p.spec.layout.tp_split_dim >= 0) return true;
  return (p.spec.layout.is_expert() ? groups.etp : groups.tp)->rank() == 0;
}

// Whether this rank counts a replicated (not ZeRO-sharded) `p` in the global
// norm: on (E)TP rank 0 unless split (above), and on rank 0 of its reduction
// group (dp, or edp for experts).
bool CountsInNorm(const Param& p, const ProcessGroups& groups) {
  return CountsOverTp(p, groups) &&
         (p.spec.layout.is_expert() ? groups.edp : groups.dp)->rank() == 0;
}

}  // namespace

// One ZeRO-1 shard space: the AdamW elements of one domain, packed in
// registry order, zero-padded to size() · shard, rank r owning packed
// [r·shard, (r+1)·shard).
struct DistributedOptimizer::Domain {
  struct Run {  // flat [flat_begin, flat_end) stored at packed_begin
    int64_t flat_begin, flat_end, packed_begin;
  };
  struct Piece {  // flat [flat_begin, flat_end) at shard_offset of this rank's shard
    int64_t flat_begin, flat_end, shard_offset;
  };
  Communicator* comm = nullptr;
  std::vector<Run> runs;
  int64_t numel = 0;
  int64_t shard = 0;
  std::vector<Piece> pieces;
  std::vector<AdamW> adamw;  // one per piece
  Tensor master;             // [shard] master weights
  Tensor grad;               // [shard] reduced gradient

  int64_t padded() const { return shard * comm->size(); }
};

StatusOr<std::unique_ptr<DistributedOptimizer>> DistributedOptimizer::Create(
    const config::RunConfig& config, ParamRegistry& registry, const ProcessGroups& groups,
    const ExecContext& ctx) {
  // ValidateOptimizerConfig refused these; a direct caller gets a clear abort.
  const GridSizes& sizes = groups.grid.sizes();
  SM_CHECK_MSG(config.optimizer().type() != config::OptimizerConfig::MUON ||
                   (sizes.tp == 1 && sizes.etp == 1),
               "optimizer.type=MUON with tp=", sizes.tp, " etp=", sizes.etp,
               ": Newton-Schulz needs whole matrices (ValidateOptimizerConfig refuses this)");
  SM_CHECK_MSG(config.parallel().zero_stage() == 0 || config.parallel().zero_stage() == 1,
               "parallel.zero_stage=", config.parallel().zero_stage(),
               " (ValidateOptimizerConfig refuses it)");
  if (!registry.materialized()) {
    return absl::FailedPreconditionError(
        "DistributedOptimizer::Create: the parameter registry is not "
        "materialised; call "
        "ParamRegistry::Materialize first");
  }
  const Tensor& values = registry.flat_values();
  if (values.device() != Device::kCPU ||
      (values.dtype() != DType::kF32 && values.dtype() != DType::kF64)) {
    return absl::UnimplementedError(absl::StrCat("DistributedOptimizer: parameters are ",
                                                 values.DebugString(),
                                                 "; this build takes f32/f64 CPU parameters"));
  }
  SM_ASSIGN_OR_RETURN(
      ParamGroups param_groups,
      ParamGroups::Create(registry, config.optimizer(),
                          ScaleOptions(config.scale_vectors()).decay_policy()));
  return std::unique_ptr<DistributedOptimizer>(
      new DistributedOptimizer(config, registry, groups, std::move(param_groups), ctx));
}

DistributedOptimizer::DistributedOptimizer(const config::RunConfig& config, ParamRegistry& registry,
                                           const ProcessGroups& groups, ParamGroups param_groups,
                                           const ExecContext& ctx)
    : ctx_(ctx),
      registry_(registry),
      process_groups_(groups),
      options_(config.optimizer()),
      schedule_(config.schedule()),
      total_steps_(config.train().train_steps()),
      zero_stage_(config.parallel().zero_stage()),
      groups_(std::move(param_groups)) {
  const DType dtype = registry.flat_values().dtype();
  const int64_t bucket = config.parallel().grad_bucket_elements();
  if (options_.type() == config::OptimizerConfig::MUON)
    muon_.emplace(MuonOptionsFrom(options_), groups_, dtype);
  if (zero_stage_ == 0) {
    grad_sync_ = std::make_unique<GradSync>(ctx_, registry, groups, bucket);
    adamw_.emplace(AdamWOptionsFrom(options_), groups_, 0, groups_.total_numel(), dtype);
    return;
  }
  std::unordered_set<const Param*> muon_params;
  for (int is_expert = 0; is_expert < 2; ++is_expert) {
    auto d = std::make_unique<Domain>();
    d->comm = is_expert ? groups.edp.get() : groups.dp.get();
    for (const ParamGroupEntry& e : groups_.entries()) {
      const Param& p = *e.param;
      const UpdateRule rule = groups_.group(e.group).rule;
      if (rule == UpdateRule::kMuon) muon_params.insert(&p);
      if (rule != UpdateRule::kAdamW || p.local_numel() == 0 ||
          p.spec.layout.is_expert() != (is_expert == 1)) {
        continue;
      }
      const int64_t end = p.flat_offset + p.local_numel();
      if (!d->runs.empty() && d->runs.back().flat_end == p.flat_offset) {
        d->runs.back().flat_end = end;
      } else {
        d->runs.push_back({p.flat_offset, end, d->numel});
      }
      d->numel += p.local_numel();
    }
    if (d->numel == 0) continue;
    const int64_t size = d->comm->size();
    d->shard = (d->numel + size - 1) / size;
    const int64_t mine_begin = d->comm->rank() * d->shard, mine_end = mine_begin + d->shard;
    for (const Domain::Run& r : d->runs) {
      const int64_t packed_end = r.packed_begin + (r.flat_end - r.flat_begin);
      const int64_t b = std::max(r.packed_begin, mine_begin), e = std::min(packed_end, mine_end);
      if (b >= e) continue;
      const int64_t flat_b = r.flat_begin + (b - r.packed_begin);
      d->pieces.push_back({flat_b, flat_b + (e - b), b - mine_begin});
      d->adamw.emplace_back(AdamWOptionsFrom(options_), groups_, flat_b, flat_b + (e - b), dtype);
    }
    d->master = Tensor::Zeros({d->shard}, dtype);
    d->grad = Tensor::Zeros({d->shard}, dtype);
    domains_.push_back(std::move(d));
  }
  LoadMasterFromParams();
  if (!muon_params.empty()) {
    grad_sync_ = std::make_unique<GradSync>(
        ctx_, registry, groups, bucket,
        [muon_params](const Param& p) { return muon_params.count(&p) > 0; });
  }
}

DistributedOptimizer::~DistributedOptimizer() = default;

double DistributedOptimizer::LearningRateAt(int64_t step) const {
  return LearningRate(schedule_, options_.lr(), options_.min_lr(), step, total_steps_);
}

void DistributedOptimizer::LoadMasterFromParams() {
  for (auto& d : domains_) {
    for (const Domain::Piece& p : d->pieces) {
      d->master.Narrow(0, p.shard_offset, p.flat_end - p.flat_begin)
          .CopyFrom(registry_.flat_values().Narrow(0, p.flat_begin, p.flat_end - p.flat_begin));
    }
  }
}

Status DistributedOptimizer::SyncGradients() {
  const ExecContext& ctx = ctx_;
  const double inv_dp = 1.0 / process_groups_.dp->size();
  for (auto& d : domains_) {
    Tensor packed = Tensor::Zeros({d->padded()}, d->grad.dtype());
    for (const Domain::Run& r : d->runs) {
      const int64_t n = r.flat_end - r.flat_begin;
      packed.Narrow(0, r.packed_begin, n)
          .CopyFrom(registry_.flat_grads().Narrow(0, r.flat_begin, n));
    }
    SM_RETURN_IF_ERROR(d->comm->ReduceScatter(ctx, packed, d->grad));
    ops::Scale(ctx, inv_dp, d->grad);
  }
  // Buckets GradientsReady already started are only waited for here.
  if (grad_sync_) SM_RETURN_IF_ERROR(grad_sync_->WaitAll());
  return absl::OkStatus();
}

Status DistributedOptimizer::GradientsReady(int64_t begin, int64_t end) {
  return grad_sync_ ? grad_sync_->LaunchRange(begin, end) : absl::OkStatus();
}

StatusOr<double> DistributedOptimizer::GlobalGradNorm() {
  double local = 0.0;
  // Stage 1: the reduced gradients of this rank's shards, parameter by
  // parameter, skipping what another (E)TP rank counts (replicated over the
  // group) and tied embedding copies; padding is never counted.
  for (const auto& d : domains_) {
    for (const Domain::Piece& piece : d->pieces) {
      for (const ParamGroupEntry& e : groups_.entries()) {
        const Param& p = *e.param;
        const int64_t b = std::max(piece.flat_begin, p.flat_offset);
        const int64_t end = std::min(piece.flat_end, p.flat_offset + p.local_numel());
        if (b >= end || !CountsOverTp(p, process_groups_)) continue;
        const int64_t offset = piece.shard_offset + (b - piece.flat_begin);
        local += SumOfSquares(d->grad.Narrow(0, offset, end - b));
      }
    }
  }
  for (const ParamGroupEntry& e : groups_.entries()) {
    const UpdateRule rule = groups_.group(e.group).rule;
    // Stage 1 holds AdamW gradients in the shards; the rest is replicated.
    const bool replicated =
        zero_stage_ == 0 ? rule != UpdateRule::kNone : rule == UpdateRule::kMuon;
    if (replicated && CountsInNorm(*e.param, process_groups_)) local += SumOfSquares(e.param->grad);
  }
  Tensor sum = Tensor::FromVector({1}, {local}, DType::kF64);
  SM_RETURN_IF_ERROR(process_groups_.world->AllReduce(ctx_, sum));
  return std::sqrt(sum.At(0));
}

void DistributedOptimizer::ScaleGradients(double factor) {
  const ExecContext& ctx = ctx_;
  for (auto& d : domains_) ops::Scale(ctx, factor, d->grad);
  for (const ParamGroupEntry& e : groups_.entries()) {
    const UpdateRule rule = groups_.group(e.group).rule;
    if (zero_stage_ == 0 ? rule != UpdateRule::kNone : rule == UpdateRule::kMuon) {
      ops::Scale(ctx, factor, e.param->grad);
    }
  }
}

Status DistributedOptimizer::GatherParameters() {
  for (auto& d : domains_) {
    Tensor packed = Tensor::Empty({d->padded()}, d->master.dtype());
    SM_RETURN_IF_ERROR(d->comm->AllGather(ctx_, d->master, packed));
    for (const Domain::Run& r : d->runs) {
      const int64_t n = r.flat_end - r.flat_begin;
      registry_.flat_values()
          .Narrow(0, r.flat_begin, n)
          .CopyFrom(packed.Narrow(0, r.packed_begin, n));
    }
  }
  return absl::OkStatus();
}

StatusOr<StepStats> DistributedOptimizer::Step(const ExecContext& ctx, int64_t step) {
  StepStats stats;
  stats.lr = LearningRateAt(step);
  stats.muon_lr = muon_ ? stats.lr * options_.muon_lr() / options_.lr() : 0.0;
  SM_RETURN_IF_ERROR(SyncGradients());
  SM_ASSIGN_OR_RETURN(stats.grad_norm, GlobalGradNorm());
  if (!std::isfinite(stats.grad_norm)) return stats;
  const double max_norm = options_.grad_clip();
  if (max_norm > 0.0 && stats.grad_norm > max_norm) ScaleGradients(max_norm / stats.grad_norm);
  ++num_updates_;
  if (adamw_) {
    adamw_->Step(ctx, registry_.flat_values(), registry_.flat_grads(), stats.lr, num_updates_);
  }
  for (auto& d : domains_) {
    for (size_t i = 0; i < d->pieces.size(); ++i) {
      const Domain::Piece& p = d->pieces[i];
      const int64_t n = p.flat_end - p.flat_begin;
      d->adamw[i].Step(ctx, d->master.Narrow(0, p.shard_offset, n),
                       d->grad.Narrow(0, p.shard_offset, n), stats.lr, num_updates_);
    }
  }
  if (muon_) muon_->Step(ctx, stats.muon_lr);
  SM_RETURN_IF_ERROR(GatherParameters());
  stats.applied = true;
  return stats;
}

std::vector<StateSlice> DistributedOptimizer::StateSlices() const {
  std::vector<StateSlice> out;
  // Appends the slices of every parameter overlapping flat [begin, end), whose
  // state m (and v) holds flat index begin at element 0.
  auto add = [&](const char* buffer, const Tensor& state, int64_t begin, int64_t end) {
    for (const ParamGroupEntry& e : groups_.entries()) {
      const Param& p = *e.param;
      const int64_t b = std::max(begin, p.flat_offset);
      const int64_t stop = std::min(end, p.flat_offset + p.local_numel());
      if (b >= stop) continue;
      out.push_back({absl::StrCat("optimizer.", buffer, "/", p.spec.name),
                     state.Narrow(0, b - begin, stop - b), &p, b - p.flat_offset});
    }
  };
  auto add_rule = [&](const char* buffer, const Tensor& state, UpdateRule rule) {
    for (const FlatSegment& s : groups_.segments()) {
      if (groups_.group(s.group).rule == rule)
        add(buffer, state.Narrow(0, s.begin, s.end - s.begin), s.begin, s.end);
    }
  };
  if (adamw_) {
    add_rule("adam_m", adamw_->exp_avg(), UpdateRule::kAdamW);
    add_rule("adam_v", adamw_->exp_avg_sq(), UpdateRule::kAdamW);
  }
  for (const auto& d : domains_) {
    for (const AdamW& a : d->adamw) {
      add("adam_m", a.exp_avg(), a.begin(), a.end());
      add("adam_v", a.exp_avg_sq(), a.begin(), a.end());
    }
  }
  if (muon_) add_rule("muon_momentum", muon_->momentum(), UpdateRule::kMuon);
  return out;
}

MemoryReport DistributedOptimizer::Memory() const {
  MemoryReport r;
  r.param_bytes = static_cast<int64_t>(registry_.flat_values().nbytes());
  r.grad_bytes = static_cast<int64_t>(registry_.flat_grads().nbytes());
  int64_t state = 0;
  if (adamw_) state += adamw_->exp_avg().nbytes() + adamw_->exp_avg_sq().nbytes();
  if (muon_) state += muon_->momentum().nbytes();
  for (const auto& d : domains_) {
    state += d->master.nbytes();
    r.grad_bytes += static_cast<int64_t>(d->grad.nbytes());
    for (const AdamW& a : d->adamw) state += a.exp_avg().nbytes() + a.exp_avg_sq().nbytes();
  }
  r.optimizer_state_bytes = state;
  return r;
}

}  // namespace scalemoe
