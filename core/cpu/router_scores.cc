// RouterScores (softmax / sigmoid) and its backward on the CPU (f32/f64).
#include <cmath>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void CheckRows(const char* what, const Tensor& a, const Tensor& b) {
  SM_CHECK_MSG(a.ndim() == 2 && a.shape() == b.shape() && a.dtype() == b.dtype() &&
                   a.is_contiguous() && b.is_contiguous() && a.device() == Device::kCPU,
               what, " ", a.DebugString(), " vs ", b.DebugString());
}

template <typename T>
void ScoresTyped(ScoreFunction fn, int64_t n, int64_t e, const T* x, T* s) {
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * e;
    T* sr = s + t * e;
    if (fn == ScoreFunction::kSigmoid) {
      for (int64_t j = 0; j < e; ++j) sr[j] = T(1) / (T(1) + std::exp(-xr[j]));
      continue;
    }
    T mx = xr[0];
    for (int64_t j = 1; j < e; ++j) mx = std::max(mx, xr[j]);
    T sum = 0;
    for (int64_t j = 0; j < e; ++j) {
      sr[j] = std::exp(xr[j] - mx);
      sum += sr[j];
    }
    for (int64_t j = 0; j < e; ++j) sr[j] /= sum;
  }
}

template <typename T>
void ScoresBackwardTyped(ScoreFunction fn, int64_t n, int64_t e, const T* s, const T* ds,
                         T* dx) {
  for (int64_t t = 0; t < n; ++t) {
    const T* sr = s + t * e;
    const T* dr = ds + t * e;
    T* xr = dx + t * e;
    if (fn == ScoreFunction::kSigmoid) {
      for (int64_t j = 0; j < e; ++j) xr[j] = dr[j] * sr[j] * (T(1) - sr[j]);
      continue;
    }
    T dot = 0;  // softmax: dx = s ⊙ (ds − <s, ds>)
    for (int64_t j = 0; j < e; ++j) dot += sr[j] * dr[j];
    for (int64_t j = 0; j < e; ++j) xr[j] = sr[j] * (dr[j] - dot);
  }
}

}  // namespace

void RouterScores(const ExecContext& ctx, ScoreFunction fn, const Tensor& logits,
                  const Tensor& scores) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "RouterScores: CUDA path not in this build");
  CheckRows("RouterScores", logits, scores);
  const int64_t n = logits.dim(0), e = logits.dim(1);
  if (logits.dtype() == DType::kF64) {
    ScoresTyped(fn, n, e, logits.data<double>(), scores.data<double>());
  } else {
    ScoresTyped(fn, n, e, logits.data<float>(), scores.data<float>());
  }
}

void RouterScoresBackward(const ExecContext& ctx, ScoreFunction fn, const Tensor& scores,
                          const Tensor& d_scores, const Tensor& d_logits) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "RouterScoresBackward: CUDA path not in this build");
  CheckRows("RouterScoresBackward", scores, d_scores);
  CheckRows("RouterScoresBackward", scores, d_logits);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  if (scores.dtype() == DType::kF64) {
    ScoresBackwardTyped(fn, n, e, scores.data<double>(), d_scores.data<double>(),
                        d_logits.data<double>());
  } else {
    ScoresBackwardTyped(fn, n, e, scores.data<float>(), d_scores.data<float>(),
                        d_logits.data<float>());
  }
}

}  // namespace scalemoe::cpu
