// Router auxiliary losses on the CPU (f32/f64): Switch/GShard load balancing
// and z-loss, each with its backward (accumulating into the score/logit grads),
// in a single-rank and a token-sharded form (the latter with the whole
// micro-batch's fractions and token count as the denominators: the single-rank
// form is the sharded one with this rank's own, so both share the arithmetic).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

// f_e: fraction of the N*K assignments routed to e (before capacity drops).
std::vector<double> AssignmentCountsOf(const Tensor& expert_ids, int64_t num_experts) {
  SM_CHECK_MSG(expert_ids.dtype() == DType::kI32 && expert_ids.ndim() == 2,
               "expert_ids must be i32 [N, K], got ", expert_ids.DebugString());
  std::vector<double> f(num_experts, 0.0);
  const int32_t* ids = expert_ids.data<int32_t>();
  const int64_t m = expert_ids.numel();
  for (int64_t i = 0; i < m; ++i) {
    SM_CHECK_MSG(ids[i] >= 0 && ids[i] < num_experts, "expert id ", ids[i], " not in [0, ",
                 num_experts, ")");
    f[ids[i]] += 1.0;
  }
  return f;
}

std::vector<double> AssignmentFractions(const Tensor& expert_ids, int64_t num_experts) {
  std::vector<double> f = AssignmentCountsOf(expert_ids, num_experts);
  const int64_t m = expert_ids.numel();
  for (double& v : f) v /= static_cast<double>(std::max<int64_t>(m, 1));
  return f;
}

// The whole micro-batch's f_e, given to the sharded forms as a [E] f64 tensor.
std::vector<double> FractionsOf(const Tensor& fractions, int64_t num_experts) {
  SM_CHECK_MSG(fractions.dtype() == DType::kF64 && fractions.numel() == num_experts &&
                   fractions.is_contiguous(),
               "fractions must be f64 [E = ", num_experts, "], got ", fractions.DebugString());
  const double* f = fractions.data<double>();
  return std::vector<double>(f, f + num_experts);
}

// coeff-free Σ_e f_e·Σ_t s[t, e]/denom·E over the n rows held here.
template <typename T>
double LoadBalancingTyped(int64_t n, int64_t e, const T* s, const std::vector<double>& f,
                          int64_t denom) {
  double loss = 0;
  for (int64_t j = 0; j < e; ++j) {
    double p = 0;
    for (int64_t t = 0; t < n; ++t) p += s[t * e + j];
    loss += f[j] * p / static_cast<double>(denom);
  }
  return loss * static_cast<double>(e);
}

// The n rows held here, each contributing lse²/denom.
template <typename T>
void ZLossTyped(int64_t n, int64_t e, const T* x, double coeff, double scale, int64_t denom,
                T* dx, double* loss) {
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
      const double g = scale * coeff * 2.0 * lse / static_cast<double>(denom);
      for (int64_t j = 0; j < e; ++j) {
        dx[t * e + j] += static_cast<T>(g * std::exp(xr[j] - mx) / sum);
      }
    }
  }
  if (loss) *loss = coeff * total / static_cast<double>(denom);
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

void LoadBalancingLossImpl(const char* op, const ExecContext& ctx, const Tensor& scores,
                           const std::vector<double>& f, int64_t denom, double coeff,
                           const Tensor& loss) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, op, ": CUDA path not in this build");
  SM_CHECK_MSG(scores.ndim() == 2 && scores.is_contiguous() &&
                   static_cast<int64_t>(f.size()) == scores.dim(1),
               op, " scores ", scores.DebugString());
  CheckLossOut(loss, scores);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const double v = coeff * (scores.dtype() == DType::kF64
                                ? LoadBalancingTyped(n, e, scores.data<double>(), f, denom)
                                : LoadBalancingTyped(n, e, scores.data<float>(), f, denom));
  SetScalar(loss, v);
}

void LoadBalancingBackwardImpl(const char* op, const ExecContext& ctx,
                               const std::vector<double>& f, int64_t denom, double coeff,
                               double scale, const Tensor& d_scores) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, op, ": CUDA path not in this build");
  SM_CHECK_MSG(d_scores.ndim() == 2 && d_scores.is_contiguous() &&
                   static_cast<int64_t>(f.size()) == d_scores.dim(1),
               op, " d_scores ", d_scores.DebugString());
  const int64_t n = d_scores.dim(0), e = d_scores.dim(1);
  for (int64_t j = 0; j < e; ++j) {
    const double g = scale * coeff * static_cast<double>(e) * f[j] / static_cast<double>(denom);
    for (int64_t t = 0; t < n; ++t) {
      if (d_scores.dtype() == DType::kF64) {
        d_scores.data<double>()[t * e + j] += g;
      } else {
        d_scores.data<float>()[t * e + j] += static_cast<float>(g);
      }
    }
  }
}

void ZLossImpl(const char* op, const ExecContext& ctx, const Tensor& logits, int64_t denom,
               double coeff, const Tensor& loss) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, op, ": CUDA path not in this build");
  SM_CHECK_MSG(logits.ndim() == 2 && logits.is_contiguous(), op, " logits ",
               logits.DebugString());
  CheckLossOut(loss, logits);
  double v = 0;
  if (logits.dtype() == DType::kF64) {
    ZLossTyped<double>(logits.dim(0), logits.dim(1), logits.data<double>(), coeff, 0, denom,
                       nullptr, &v);
  } else {
    ZLossTyped<float>(logits.dim(0), logits.dim(1), logits.data<float>(), coeff, 0, denom,
                      nullptr, &v);
  }
  SetScalar(loss, v);
}

void ZLossBackwardImpl(const char* op, const ExecContext& ctx, const Tensor& logits,
                       int64_t denom, double coeff, double scale, const Tensor& d_logits) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, op, ": CUDA path not in this build");
  SM_CHECK_MSG(d_logits.shape() == logits.shape() && d_logits.dtype() == logits.dtype() &&
                   logits.is_contiguous() && d_logits.is_contiguous(),
               op, " d_logits ", d_logits.DebugString());
  if (logits.dtype() == DType::kF64) {
    ZLossTyped(logits.dim(0), logits.dim(1), logits.data<double>(), coeff, scale, denom,
               d_logits.data<double>(), nullptr);
  } else {
    ZLossTyped(logits.dim(0), logits.dim(1), logits.data<float>(), coeff, scale, denom,
               d_logits.data<float>(), nullptr);
  }
}

void CheckTotal(const char* op, int64_t total_tokens, const Tensor& rows) {
  SM_CHECK_MSG(total_tokens >= rows.dim(0) && total_tokens > 0, op, ": total_tokens ",
               total_tokens, " must be >= this rank's ", rows.dim(0), " rows and > 0");
}

}  // namespace

void LoadBalancingLoss(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                       double coeff, const Tensor& loss) {
  SM_CHECK_MSG(expert_ids.ndim() == 2 && scores.ndim() == 2 &&
                   expert_ids.dim(0) == scores.dim(0),
               "LoadBalancingLoss scores ", scores.DebugString());
  LoadBalancingLossImpl("LoadBalancingLoss", ctx, scores,
                        AssignmentFractions(expert_ids, scores.dim(1)), scores.dim(0), coeff,
                        loss);
}

void LoadBalancingLossBackward(const ExecContext& ctx, const Tensor& expert_ids, double coeff,
                               double scale, const Tensor& d_scores) {
  SM_CHECK_MSG(d_scores.ndim() == 2 && d_scores.dim(0) == expert_ids.dim(0),
               "LoadBalancingLossBackward d_scores ", d_scores.DebugString());
  LoadBalancingBackwardImpl("LoadBalancingLossBackward", ctx,
                            AssignmentFractions(expert_ids, d_scores.dim(1)), d_scores.dim(0),
                            coeff, scale, d_scores);
}

void ZLoss(const ExecContext& ctx, const Tensor& logits, double coeff, const Tensor& loss) {
  ZLossImpl("ZLoss", ctx, logits, logits.dim(0), coeff, loss);
}

void ZLossBackward(const ExecContext& ctx, const Tensor& logits, double coeff, double scale,
                   const Tensor& d_logits) {
  ZLossBackwardImpl("ZLossBackward", ctx, logits, logits.dim(0), coeff, scale, d_logits);
}

void AssignmentCounts(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& counts) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "AssignmentCounts: CUDA path not in this build");
  SM_CHECK_MSG(counts.dtype() == DType::kF64 && counts.ndim() == 1 && counts.is_contiguous(),
               "AssignmentCounts: counts must be f64 [E], got ", counts.DebugString());
  const std::vector<double> c = AssignmentCountsOf(expert_ids, counts.numel());
  std::copy(c.begin(), c.end(), counts.data<double>());
}

void LoadBalancingLossShare(const ExecContext& ctx, const Tensor& scores,
                            const Tensor& fractions, int64_t total_tokens, double coeff,
                            const Tensor& loss) {
  CheckTotal("LoadBalancingLossShare", total_tokens, scores);
  LoadBalancingLossImpl("LoadBalancingLossShare", ctx, scores,
                        FractionsOf(fractions, scores.dim(1)), total_tokens, coeff, loss);
}

void LoadBalancingLossShareBackward(const ExecContext& ctx, const Tensor& fractions,
                                    int64_t total_tokens, double coeff, double scale,
                                    const Tensor& d_scores) {
  CheckTotal("LoadBalancingLossShareBackward", total_tokens, d_scores);
  LoadBalancingBackwardImpl("LoadBalancingLossShareBackward", ctx,
                            FractionsOf(fractions, d_scores.dim(1)), total_tokens, coeff, scale,
                            d_scores);
}

void ZLossShare(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens,
                double coeff, const Tensor& loss) {
  CheckTotal("ZLossShare", total_tokens, logits);
  ZLossImpl("ZLossShare", ctx, logits, total_tokens, coeff, loss);
}

void ZLossShareBackward(const ExecContext& ctx, const Tensor& logits, int64_t total_tokens,
                        double coeff, double scale, const Tensor& d_logits) {
  CheckTotal("ZLossShareBackward", total_tokens, logits);
  ZLossBackwardImpl("ZLossShareBackward", ctx, logits, total_tokens, coeff, scale, d_logits);
}

}  // namespace scalemoe::cpu
