#include "optim/distributed_optimizer.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "core/host_values.h"
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

// Rows (src_begin, dst_begin, count) for ops::CopySegments, on ctx.
Tensor CopyTable(const ExecContext& ctx, const std::vector<int64_t>& rows) {
  return TableToDevice(ctx, {static_cast<int64_t>(rows.size() / 3), 3}, rows);
}

}  // namespace

// One ZeRO-1 shard space: the AdamW elements of one domain, packed in
// registry order, zero-padded to size() · shard, rank r owning packed
// [r·shard, (r+1)·shard). The packed runs are back to back, so this rank's
// pieces fill [0, owned) of its shard and the rest is padding.
struct DistributedOptimizer::Domain {
  struct Run {  // flat [flat_begin, flat_end) stored at packed_begin
    int64_t flat_begin, flat_end, packed_begin;
  };
  Communicator* comm = nullptr;
  std::vector<Run> runs;
  int64_t numel = 0;
  int64_t shard = 0;
  int64_t owned = 0;           // this rank's elements: [0, owned) of the shard
  std::vector<AdamW::Piece> pieces;  // flat pieces at their shard offsets
  std::optional<AdamW> adamw;  // over [0, owned) of the shard; none when owned == 0
  Tensor master;               // [shard] master weights
  Tensor grad;                 // [shard] reduced gradient
  Tensor pack;                 // CopySegments rows: flat grads -> packed
  Tensor unpack;               // CopySegments rows: gathered packed -> flat values
  Tensor load_master;          // CopySegments rows: flat values -> master

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
  if (values.device() != ctx.device() ||
      (values.dtype() != DType::kF32 && values.dtype() != DType::kF64)) {
    return absl::UnimplementedError(absl::StrCat("DistributedOptimizer: parameters are ",
                                                 values.DebugString(),
                                                 "; it takes f32/f64 parameters on its "
                                                 "context's device"));
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
  num_updates_ = ctx_.Zeros({1}, DType::kI64);
  if (options_.type() == config::OptimizerConfig::MUON)
    muon_.emplace(MuonOptionsFrom(options_), groups_, dtype, ctx_);
  // The norm: what this rank counts of the replicated gradients (everything
  // trained under stage 0, the Muon matrices under stage 1).
  std::vector<GradNormRanges::Range> replicated;
  for (const ParamGroupEntry& e : groups_.entries()) {
    const UpdateRule rule = groups_.group(e.group).rule;
    const bool held = zero_stage_ == 0 ? rule != UpdateRule::kNone : rule == UpdateRule::kMuon;
    if (held && CountsInNorm(*e.param, groups)) {
      replicated.emplace_back(e.param->flat_offset, e.param->flat_offset + e.param->local_numel());
    }
  }
  if (zero_stage_ == 0) {
    grad_sync_ = std::make_unique<GradSync>(ctx_, registry, groups, bucket);
    adamw_.emplace(AdamWOptionsFrom(options_), groups_, 0, groups_.total_numel(), dtype, ctx_);
    norm_ranges_.Add(registry.flat_grads(), replicated);
    norm_ranges_.Upload(ctx_);
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
    d->owned = std::clamp<int64_t>(d->numel - mine_begin, 0, d->shard);
    std::vector<int64_t> pack, unpack, load_master;
    for (const Domain::Run& r : d->runs) {
      const int64_t n = r.flat_end - r.flat_begin;
      pack.insert(pack.end(), {r.flat_begin, r.packed_begin, n});
      unpack.insert(unpack.end(), {r.packed_begin, r.flat_begin, n});
      const int64_t b = std::max(r.packed_begin, mine_begin);
      const int64_t e = std::min(r.packed_begin + n, mine_end);
      if (b >= e) continue;
      const int64_t flat_b = r.flat_begin + (b - r.packed_begin);
      d->pieces.push_back({flat_b, flat_b + (e - b), b - mine_begin});
      load_master.insert(load_master.end(), {flat_b, b - mine_begin, e - b});
    }
    d->pack = CopyTable(ctx_, pack);
    d->unpack = CopyTable(ctx_, unpack);
    d->load_master = CopyTable(ctx_, load_master);
    if (d->owned > 0) {
      d->adamw.emplace(AdamWOptionsFrom(options_), groups_, d->pieces, d->owned, dtype, ctx_);
    }
    d->master = ctx_.Zeros({d->shard}, dtype);
    d->grad = ctx_.Zeros({d->shard}, dtype);
    // This rank's shard of the reduced gradients, parameter by parameter,
    // skipping what another (E)TP rank counts (replicated over the group) and
    // tied embedding copies; padding is never counted.
    std::vector<GradNormRanges::Range> shard_ranges;
    for (const AdamW::Piece& piece : d->pieces) {
      for (const ParamGroupEntry& e : groups_.entries()) {
        const Param& p = *e.param;
        const int64_t b = std::max(piece.flat_begin, p.flat_offset);
        const int64_t end = std::min(piece.flat_end, p.flat_offset + p.local_numel());
        if (b >= end || !CountsOverTp(p, groups)) continue;
        const int64_t offset = piece.offset + (b - piece.flat_begin);
        shard_ranges.emplace_back(offset, offset + (end - b));
      }
    }
    norm_ranges_.Add(d->grad, shard_ranges);
    domains_.push_back(std::move(d));
  }
  norm_ranges_.Add(registry.flat_grads(), replicated);
  norm_ranges_.Upload(ctx_);
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

int64_t DistributedOptimizer::num_updates() const {
  return static_cast<int64_t>(ReadScalar(ctx_, num_updates_));
}

void DistributedOptimizer::set_num_updates(int64_t n) {
  ops::Copy(ctx_, TableToDevice(ctx_, {1}, std::vector<int64_t>{n}), num_updates_);
}

void DistributedOptimizer::LoadMasterFromParams() {
  for (auto& d : domains_) {
    ops::CopySegments(ctx_, registry_.flat_values(), d->master, d->load_master);
  }
}

Status DistributedOptimizer::SyncGradients() {
  const ExecContext& ctx = ctx_;
  const double inv_dp = 1.0 / process_groups_.dp->size();
  for (auto& d : domains_) {
    Tensor packed = ctx.Empty({d->padded()}, d->grad.dtype());
    if (d->padded() > d->numel) ops::Zero(ctx, packed.Narrow(0, d->numel, d->padded() - d->numel));
    ops::CopySegments(ctx, registry_.flat_grads(), packed, d->pack);
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

Status DistributedOptimizer::GatherParameters() {
  for (auto& d : domains_) {
    Tensor packed = ctx_.Empty({d->padded()}, d->master.dtype());
    SM_RETURN_IF_ERROR(d->comm->AllGather(ctx_, d->master, packed));
    ops::CopySegments(ctx_, packed, registry_.flat_values(), d->unpack);
  }
  return absl::OkStatus();
}

StatusOr<StepResult> DistributedOptimizer::Step(const ExecContext& ctx, int64_t step) {
  SM_CHECK_MSG(ctx.device() == ctx_.device() && ctx.stream() == ctx_.stream(),
               "DistributedOptimizer::Step on another device or stream than its buffers'");
  StepResult result;
  result.lr = LearningRateAt(step);
  result.muon_lr = muon_ ? result.lr * options_.muon_lr() / options_.lr() : 0.0;
  SM_RETURN_IF_ERROR(SyncGradients());
  // The global norm: this rank's share, summed over the world on the device.
  const Tensor sum = ctx_.Zeros({1}, DType::kF64);
  norm_ranges_.Accumulate(ctx_, sum);
  SM_RETURN_IF_ERROR(process_groups_.world->AllReduce(ctx_, sum));
  const NormCheck check = CheckGradNorm(ctx_, sum, options_.grad_clip(), num_updates_);
  // A non-finite norm makes every update below a no-op on the device; the
  // gather then writes back the unchanged master weights.
  if (adamw_) {
    adamw_->Step(ctx_, registry_.flat_values(), registry_.flat_grads(), result.lr, check.control);
  }
  for (auto& d : domains_) {
    if (!d->adamw) continue;
    d->adamw->Step(ctx_, d->master.Narrow(0, 0, d->owned), d->grad.Narrow(0, 0, d->owned),
                   result.lr, check.control);
  }
  if (muon_) {
    muon_->Step(ctx_, registry_.flat_values(), registry_.flat_grads(), result.muon_lr,
                check.control);
  }
  SM_RETURN_IF_ERROR(GatherParameters());
  result.grad_norm = check.grad_norm;
  result.nonfinite = check.control.nonfinite;
  return result;
}

std::vector<StateSlice> DistributedOptimizer::StateSlices() const {
  std::vector<StateSlice> out;
  // Appends the slices of every parameter overlapping flat [begin, end), whose
  // state m (and v) holds flat index begin at element 0.
  auto add = [&](const char* buffer, const Tensor& state, int64_t begin, int64_t end,
                 bool replicated) {
    for (const ParamGroupEntry& e : groups_.entries()) {
      const Param& p = *e.param;
      const int64_t b = std::max(begin, p.flat_offset);
      const int64_t stop = std::min(end, p.flat_offset + p.local_numel());
      if (b >= stop) continue;
      out.push_back({absl::StrCat("optimizer.", buffer, "/", p.spec.name),
                     state.Narrow(0, b - begin, stop - b), &p, b - p.flat_offset, replicated});
    }
  };
  auto add_rule = [&](const char* buffer, const Tensor& state, UpdateRule rule) {
    for (const FlatSegment& s : groups_.segments()) {
      if (groups_.group(s.group).rule == rule)
        add(buffer, state.Narrow(0, s.begin, s.end - s.begin), s.begin, s.end,
            /*replicated=*/true);
    }
  };
  if (adamw_) {
    add_rule("adam_m", adamw_->exp_avg(), UpdateRule::kAdamW);
    add_rule("adam_v", adamw_->exp_avg_sq(), UpdateRule::kAdamW);
  }
  for (const auto& d : domains_) {
    if (!d->adamw) continue;
    for (const AdamW::Piece& p : d->adamw->pieces()) {
      const int64_t n = p.flat_end - p.flat_begin;
      add("adam_m", d->adamw->exp_avg().Narrow(0, p.offset, n), p.flat_begin, p.flat_end,
          /*replicated=*/false);
      add("adam_v", d->adamw->exp_avg_sq().Narrow(0, p.offset, n), p.flat_begin, p.flat_end,
          /*replicated=*/false);
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
    if (d->adamw) state += d->adamw->exp_avg().nbytes() + d->adamw->exp_avg_sq().nbytes();
  }
  r.optimizer_state_bytes = state;
  return r;
}

}  // namespace scalemoe
