#include "norm/scale_vector.h"

#include <cmath>

namespace scalemoe {
namespace {

ParamSpec VectorSpec(std::string name, Shape shape, ParamRole role, ParamLayout layout) {
  ParamSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.role = role;
  s.init = InitSpec::Ones();
  s.layout = layout;
  return s;
}

// The whole vector's Σ x_j y_j: this rank's slice, summed over `group` when
// the vector is split over it.
template <typename T>
StatusOr<double> Dot(const T* x, const T* y, int64_t d, Communicator* group) {
  double dot = 0;
  for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(x[j]) * y[j];
  if (group == nullptr) return dot;
  SM_RETURN_IF_ERROR(group->AllReduceHost(Tensor::FromBlob(&dot, {1}, DType::kF64, Device::kCPU)));
  return dot;
}

template <typename T>
Status ComputeTyped(const Param* plain, const Param* alpha, const Param* beta, Reparam reparam,
                    int64_t d, int64_t global_d, Communicator* group, T* gamma) {
  if (reparam == config::ScaleVectorConfig::PLAIN) {
    const T* g = plain->value.data<T>();
    for (int64_t j = 0; j < d; ++j) gamma[j] = g[j];
    return absl::OkStatus();
  }
  const T* a = alpha->value.data<T>();
  T scale = beta->value.data<T>()[0];
  if (reparam == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
    SM_ASSIGN_OR_RETURN(const double sq, Dot(a, a, d, group));
    scale = static_cast<T>(scale * std::sqrt(static_cast<double>(global_d) / sq));
  }
  for (int64_t j = 0; j < d; ++j) gamma[j] = scale * a[j];
  return absl::OkStatus();
}

// Split over TP, dβ gets this slice's share only (β is tp_partial_grad).
template <typename T>
Status BackwardTyped(const Param* plain, const Param* alpha, const Param* beta, Reparam reparam,
                     int64_t d, int64_t global_d, Communicator* group, const T* dg) {
  if (reparam == config::ScaleVectorConfig::PLAIN) {
    T* g = plain->grad.data<T>();
    for (int64_t j = 0; j < d; ++j) g[j] += dg[j];
    return absl::OkStatus();
  }
  const T* a = alpha->value.data<T>();
  const T b = beta->value.data<T>()[0];
  T* da = alpha->grad.data<T>();
  T* db = beta->grad.data<T>();
  double dot = 0;  // <α, dγ> over this slice
  for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(a[j]) * dg[j];
  if (reparam == config::ScaleVectorConfig::MAGNITUDE_DIRECTION) {
    // γ = β·α: dα = β·dγ, dβ = <α, dγ>.
    for (int64_t j = 0; j < d; ++j) da[j] += b * dg[j];
    db[0] += static_cast<T>(dot);
    return absl::OkStatus();
  }
  // γ = β·s·α with s = √d/‖α‖: dβ = s<α,dγ>,
  // dα = β·s·(dγ − α<α,dγ>/‖α‖²), both inner products over the whole vector.
  SM_ASSIGN_OR_RETURN(const double sq, Dot(a, a, d, group));
  double whole_dot = dot;
  if (group != nullptr) {
    SM_RETURN_IF_ERROR(
        group->AllReduceHost(Tensor::FromBlob(&whole_dot, {1}, DType::kF64, Device::kCPU)));
  }
  const double s = std::sqrt(static_cast<double>(global_d) / sq);
  db[0] += static_cast<T>(s * dot);
  for (int64_t j = 0; j < d; ++j) {
    da[j] += static_cast<T>(b * s * (dg[j] - a[j] * whole_dot / sq));
  }
  return absl::OkStatus();
}

}  // namespace

ScaleVector::ScaleVector(ParamRegistry& registry, std::string name, int64_t dim, ParamRole role,
                         Reparam reparam, ParamLayout layout, Communicator* split_group)
    : name_(std::move(name)), dim_(dim), role_(role), reparam_(reparam) {
  SM_CHECK_MSG(IsScaleVector(role), name_, ": a scale vector needs a norm-scale role");
  if (reparam == config::ScaleVectorConfig::PLAIN) {
    plain_ = registry.Create(VectorSpec(name_, {dim}, role, layout));
  } else {
    // β is a scalar: never split over TP, whatever the vector's layout; of a
    // split vector each rank computes only its slice's share of dβ.
    ParamLayout scalar_layout = layout;
    scalar_layout.tp_split_dim = -1;
    if (layout.tp_split_dim >= 0) scalar_layout.tp_partial_grad = true;
    beta_ = registry.Create(VectorSpec(name_ + ".beta", {1}, role, scalar_layout));
    alpha_ = registry.Create(VectorSpec(name_ + ".alpha", {dim}, role, layout));
  }
  local_dim_ = (plain_ != nullptr ? plain_ : alpha_)->local_numel();
  if (local_dim_ != dim_ && reparam == config::ScaleVectorConfig::MAGNITUDE_DIRECTION_NORMALIZED) {
    SM_CHECK_MSG(split_group != nullptr && split_group->size() * local_dim_ == dim_, name_,
                 ": a normalized magnitude-direction vector split over tensor parallel ranks "
                 "needs the communicator of the group it is split over");
    split_group_ = split_group;
  }
}

Status ScaleVector::Compute(const ExecContext& ctx, const Tensor& gamma) const {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "ScaleVector: CPU path only in this build");
  SM_CHECK_MSG(gamma.numel() == local_dim_ && gamma.is_contiguous(), name_, ": gamma ",
               gamma.DebugString());
  const Status s =
      gamma.dtype() == DType::kF64
          ? ComputeTyped(plain_, alpha_, beta_, reparam_, local_dim_, dim_, split_group_,
                         gamma.data<double>())
          : ComputeTyped(plain_, alpha_, beta_, reparam_, local_dim_, dim_, split_group_,
                         gamma.data<float>());
  return WithContext(s, name_);
}

Status ScaleVector::Backward(const ExecContext& ctx, const Tensor& d_gamma) const {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "ScaleVector: CPU path only in this build");
  SM_CHECK_MSG(d_gamma.numel() == local_dim_ && d_gamma.is_contiguous(), name_, ": d_gamma ",
               d_gamma.DebugString());
  const Status s =
      d_gamma.dtype() == DType::kF64
          ? BackwardTyped(plain_, alpha_, beta_, reparam_, local_dim_, dim_, split_group_,
                          d_gamma.data<double>())
          : BackwardTyped(plain_, alpha_, beta_, reparam_, local_dim_, dim_, split_group_,
                          d_gamma.data<float>());
  return WithContext(s, name_);
}

}  // namespace scalemoe
