// Router auxiliary losses on the CPU (f32/f64): Switch/GShard load balancing
// and z-loss, each with its backward (accumulating into the score/logit grads).
#include <cmath>
#include <vector>

#include "core/ops.h"

namespace scalemoe::ops {
namespace {

// f_e: fraction of the N*K assignments routed to e (before capacity drops).
std::vector<double> AssignmentFractions(const Tensor& expert_ids, int64_t num_experts) {
  SM_CHECK_MSG(expert_ids.dtype() == DType::kI32 && expert_ids.ndim() == 2,
               "expert_ids must be i32 [N, K], got ", expert_ids.DebugString());
  std::vector<double> f(num_experts, 0.0);
  const int32_t* ids = expert_ids.data<int32_t>();
  const int64_t m = expert_ids.numel();
  for (int64_t i = 0; i < m; ++i) f[ids[i]] += 1.0;
  for (double& v : f) v /= static_cast<double>(std::max<int64_t>(m, 1));
  return f;
}

template <typename T>
double LoadBalancingTyped(int64_t n, int64_t e, const T* s, const std::vector<double>& f) {
  double loss = 0;
  for (int64_t j = 0; j < e; ++j) {
    double p = 0;
    for (int64_t t = 0; t < n; ++t) p += s[t * e + j];
    loss += f[j] * p / static_cast<double>(n);
  }
  return loss * static_cast<double>(e);
}

template <typename T>
void ZLossTyped(int64_t n, int64_t e, const T* x, double coeff, double scale, T* dx,
                double* loss) {
  double total = 0;
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * e;
    double mx = xr[0];
    for (int64_t j = 1; j < e; ++j) mx = std::max(mx, static_cast<double>(xr[j]));
    double sum = 0;
    for (int64_t j = 0; j < e; ++j) sum += std::exp(xr[j] - mx);
    const double lse = mx + std::log(sum);
    total += lse * lse;
    if (dx) {  // d lse² = 2 lse softmax
      const double g = scale * coeff * 2.0 * lse / static_cast<double>(n);
      for (int64_t j = 0; j < e; ++j) {
        dx[t * e + j] += static_cast<T>(g * std::exp(xr[j] - mx) / sum);
      }
    }
  }
  if (loss) *loss = coeff * total / static_cast<double>(n);
}

void CheckLossOut(const Tensor& loss, const Tensor& like) {
  SM_CHECK_MSG(loss.numel() == 1 && loss.dtype() == like.dtype(), "loss tensor ",
               loss.DebugString(), " for ", like.DebugString());
}

void SetScalar(const Tensor& loss, double v) {
  if (loss.dtype() == DType::kF64) {
    loss.data<double>()[0] = v;
  } else {
    loss.data<float>()[0] = static_cast<float>(v);
  }
}

}  // namespace

void LoadBalancingLoss(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                       double coeff, const Tensor& loss) {
  SM_CHECK_MSG(ctx.device == Device::kCPU, "LoadBalancingLoss: CUDA path not in this build");
  SM_CHECK_MSG(scores.ndim() == 2 && scores.is_contiguous() &&
                   expert_ids.dim(0) == scores.dim(0),
               "LoadBalancingLoss scores ", scores.DebugString());
  CheckLossOut(loss, scores);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const std::vector<double> f = AssignmentFractions(expert_ids, e);
  const double v = coeff * (scores.dtype() == DType::kF64
                                ? LoadBalancingTyped(n, e, scores.data<double>(), f)
                                : LoadBalancingTyped(n, e, scores.data<float>(), f));
  SetScalar(loss, v);
}

void LoadBalancingLossBackward(const ExecContext& ctx, const Tensor& expert_ids, double coeff,
                               double scale, const Tensor& d_scores) {
  SM_CHECK_MSG(ctx.device == Device::kCPU,
               "LoadBalancingLossBackward: CUDA path not in this build");
  SM_CHECK_MSG(d_scores.ndim() == 2 && d_scores.dim(0) == expert_ids.dim(0),
               "LoadBalancingLossBackward d_scores ", d_scores.DebugString());
  const int64_t n = d_scores.dim(0), e = d_scores.dim(1);
  const std::vector<double> f = AssignmentFractions(expert_ids, e);
  for (int64_t j = 0; j < e; ++j) {
    const double g = scale * coeff * static_cast<double>(e) * f[j] / static_cast<double>(n);
    for (int64_t t = 0; t < n; ++t) {
      if (d_scores.dtype() == DType::kF64) {
        d_scores.data<double>()[t * e + j] += g;
      } else {
        d_scores.data<float>()[t * e + j] += static_cast<float>(g);
      }
    }
  }
}

void ZLoss(const ExecContext& ctx, const Tensor& logits, double coeff, const Tensor& loss) {
  SM_CHECK_MSG(ctx.device == Device::kCPU, "ZLoss: CUDA path not in this build");
  SM_CHECK_MSG(logits.ndim() == 2 && logits.is_contiguous(), "ZLoss logits ",
               logits.DebugString());
  CheckLossOut(loss, logits);
  double v = 0;
  if (logits.dtype() == DType::kF64) {
    ZLossTyped<double>(logits.dim(0), logits.dim(1), logits.data<double>(), coeff, 0, nullptr,
                       &v);
  } else {
    ZLossTyped<float>(logits.dim(0), logits.dim(1), logits.data<float>(), coeff, 0, nullptr,
                      &v);
  }
  SetScalar(loss, v);
}

void ZLossBackward(const ExecContext& ctx, const Tensor& logits, double coeff, double scale,
                   const Tensor& d_logits) {
  SM_CHECK_MSG(ctx.device == Device::kCPU, "ZLossBackward: CUDA path not in this build");
  SM_CHECK_MSG(d_logits.shape() == logits.shape() && d_logits.dtype() == logits.dtype(),
               "ZLossBackward d_logits ", d_logits.DebugString());
  if (logits.dtype() == DType::kF64) {
    ZLossTyped(logits.dim(0), logits.dim(1), logits.data<double>(), coeff, scale,
               d_logits.data<double>(), nullptr);
  } else {
    ZLossTyped(logits.dim(0), logits.dim(1), logits.data<float>(), coeff, scale,
               d_logits.data<float>(), nullptr);
  }
}

}  // namespace scalemoe::ops
