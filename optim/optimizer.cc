#include "optim/optimizer.h"

#include <cmath>

#include "norm/scale_options.h"
#include "optim/clip.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"

namespace scalemoe {
namespace {

constexpr char kAdamM[] = "optimizer.adam_m";
constexpr char kAdamV[] = "optimizer.adam_v";
constexpr char kMuonMomentum[] = "optimizer.muon_momentum";
constexpr char kNumUpdates[] = "optimizer.num_updates";

}  // namespace

StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(const config::RunConfig& config,
                                                       ParamRegistry& registry) {
  if (!registry.materialized()) {
    return absl::FailedPreconditionError(
        "Optimizer::Create: the parameter registry is not materialised; call "
        "ParamRegistry::Materialize first");
  }
  const Tensor& values = registry.flat_values();
  if (values.device() != Device::kCPU ||
      (values.dtype() != DType::kF32 && values.dtype() != DType::kF64)) {
    return absl::UnimplementedError(absl::StrCat(
        "Optimizer: parameters are ", values.DebugString(),
        "; the single-rank optimizer takes f32/f64 CPU parameters (bf16/CUDA training uses "
        "the distributed optimizer with fp32 master weights)"));
  }
  SM_ASSIGN_OR_RETURN(ParamGroups groups,
                      ParamGroups::Create(registry, config.optimizer(),
                                          ScaleOptions(config.scale_vectors()).decay_policy()));
  return std::unique_ptr<Optimizer>(new Optimizer(config, registry, std::move(groups)));
}

Optimizer::Optimizer(const config::RunConfig& config, ParamRegistry& registry, ParamGroups groups)
    : registry_(registry),
      options_(config.optimizer()),
      schedule_(config.schedule()),
      total_steps_(config.train().train_steps()),
      groups_(std::move(groups)),
      adamw_(AdamWOptionsFrom(options_), groups_, 0, groups_.total_numel(),
             registry.flat_values().dtype()) {
  if (options_.type() == config::OptimizerConfig::MUON) {
    muon_.emplace(MuonOptionsFrom(options_), groups_, registry.flat_values().dtype());
  }
}

double Optimizer::LearningRateAt(int64_t step) const {
  return LearningRate(schedule_, options_.lr(), options_.min_lr(), step, total_steps_);
}

StepStats Optimizer::Step(const ExecContext& ctx, int64_t step) {
  StepStats stats;
  stats.lr = LearningRateAt(step);
  // Muon follows the same curve, scaled to its own peak.
  stats.muon_lr = muon_ ? stats.lr * options_.muon_lr() / options_.lr() : 0.0;
  stats.grad_norm = ClipGradients(registry_, options_.grad_clip());
  if (!std::isfinite(stats.grad_norm)) return stats;
  ++num_updates_;
  adamw_.Step(ctx, registry_.flat_values(), registry_.flat_grads(), stats.lr, num_updates_);
  if (muon_) muon_->Step(ctx, stats.muon_lr);
  stats.applied = true;
  return stats;
}

NamedTensors Optimizer::StateTensors() const {
  NamedTensors out = {{kAdamM, adamw_.exp_avg()}, {kAdamV, adamw_.exp_avg_sq()}};
  if (muon_) out.emplace_back(kMuonMomentum, muon_->momentum());
  out.emplace_back(kNumUpdates, Tensor::FromVector({1}, {static_cast<double>(num_updates_)},
                                                   DType::kI64));
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
      if (entry.first != name) continue;
      if (name == kNumUpdates) {
        num_updates_ = static_cast<int64_t>(entry.second.At(0));
      } else {
        target.CopyFrom(entry.second);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace scalemoe
