#include "optim/optimizer.h"

#include <utility>

#include "core/host_values.h"
#include "core/ops.h"
#include "norm/scale_options.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"

namespace scalemoe {
namespace {

constexpr char kAdamM[] = "optimizer.adam_m";
constexpr char kAdamV[] = "optimizer.adam_v";
constexpr char kMuonMomentum[] = "optimizer.muon_momentum";
constexpr char kNumUpdates[] = "optimizer.num_updates";

}  // namespace

StepStats ReadStepStats(const ExecContext& ctx, const StepResult& result) {
  StepStats out;
  out.lr = result.lr;
  out.muon_lr = result.muon_lr;
  out.grad_norm = ReadScalar(ctx, result.grad_norm);
  out.applied = ReadScalar(ctx, result.nonfinite) == 0.0;
  return out;
}

StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(const config::RunConfig& config,
                                                       ParamRegistry& registry,
                                                       const ExecContext& ctx) {
  if (!registry.materialized()) {
    return absl::FailedPreconditionError(
        "Optimizer::Create: the parameter registry is not materialised; call "
        "ParamRegistry::Materialize first");
  }
  const Tensor& values = registry.flat_values();
  if (values.device() != ctx.device() ||
      (values.dtype() != DType::kF32 && values.dtype() != DType::kF64)) {
    return absl::UnimplementedError(absl::StrCat(
        "Optimizer: parameters are ", values.DebugString(),
        "; the single-rank optimizer takes f32/f64 parameters on its context's device"));
  }
  SM_ASSIGN_OR_RETURN(ParamGroups groups,
                      ParamGroups::Create(registry, config.optimizer(),
                                          ScaleOptions(config.scale_vectors()).decay_policy()));
  return std::unique_ptr<Optimizer>(new Optimizer(config, registry, std::move(groups), ctx));
}

Optimizer::Optimizer(const config::RunConfig& config, ParamRegistry& registry, ParamGroups groups,
                     const ExecContext& ctx)
    : ctx_(ctx),
      registry_(registry),
      options_(config.optimizer()),
      schedule_(config.schedule()),
      total_steps_(config.train().train_steps()),
      groups_(std::move(groups)),
      adamw_(AdamWOptionsFrom(options_), groups_, 0, groups_.total_numel(),
             registry.flat_values().dtype(), ctx) {
  if (options_.type() == config::OptimizerConfig::MUON) {
    muon_.emplace(MuonOptionsFrom(options_), groups_, registry.flat_values().dtype(), ctx);
  }
  norm_ranges_.Add(registry.flat_grads(), TrainedRanges(groups_));
  norm_ranges_.Upload(ctx);
  num_updates_ = ctx.Zeros({1}, DType::kI64);
}

int64_t Optimizer::num_updates() const {
  return static_cast<int64_t>(ReadScalar(ctx_, num_updates_));
}

double Optimizer::LearningRateAt(int64_t step) const {
  return LearningRate(schedule_, options_.lr(), options_.min_lr(), step, total_steps_);
}

StepResult Optimizer::Step(const ExecContext& ctx, int64_t step) {
  SM_CHECK_MSG(ctx.device() == ctx_.device() && ctx.stream() == ctx_.stream(),
               "Optimizer::Step on another device or stream than its state's");
  StepResult result;
  result.lr = LearningRateAt(step);
  // Muon follows the same curve, scaled to its own peak.
  result.muon_lr = muon_ ? result.lr * options_.muon_lr() / options_.lr() : 0.0;
  const Tensor sum = ctx.Zeros({1}, DType::kF64);
  norm_ranges_.Accumulate(ctx, sum);
  const NormCheck check = CheckGradNorm(ctx, sum, options_.grad_clip(), num_updates_);
  const Tensor& values = registry_.flat_values();
  const Tensor& grads = registry_.flat_grads();
  adamw_.Step(ctx, values, grads, result.lr, check.control);
  if (muon_) muon_->Step(ctx, values, grads, result.muon_lr, check.control);
  result.grad_norm = check.grad_norm;
  result.nonfinite = check.control.nonfinite;
  return result;
}

NamedTensors Optimizer::StateTensors() const {
  NamedTensors out = {{kAdamM, adamw_.exp_avg()}, {kAdamV, adamw_.exp_avg_sq()}};
  if (muon_) out.emplace_back(kMuonMomentum, muon_->momentum());
  out.emplace_back(kNumUpdates, num_updates_);
  return out;
}

Status Optimizer::LoadStateTensors(const NamedTensors& state) {
  NamedTensors live = StateTensors();
  for (const auto& [name, tensor] : state) {
    bool known = false;
    for (const auto& entry : live) known = known || entry.first == name;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer state \"", name, "\" is not part of this optimizer (type ",
          config::OptimizerConfig::Type_Name(options_.type()),
          "); load a checkpoint written with the same optimizer.type"));
    }
  }
  for (auto& [name, target] : live) {
    const Tensor* source = nullptr;
    for (const auto& entry : state) {
      if (entry.first == name) source = &entry.second;
    }
    if (source == nullptr) {
      return absl::NotFoundError(absl::StrCat("optimizer state \"", name,
                                              "\" missing from the loaded state"));
    }
    if (source->numel() != target.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "optimizer state \"", name, "\": ", source->DebugString(), " vs expected ",
          target.DebugString(), "; the checkpoint's parameter layout differs from this model's"));
    }
  }
  // All checked: now copy, so a failed load changes nothing.
  for (auto& [name, target] : live) {
    for (const auto& entry : state) {
      if (entry.first == name) ops::Copy(ctx_, ctx_.ToDevice(entry.second), target);
    }
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
