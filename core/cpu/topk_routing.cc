// TopKRouting (+ backward), TopKWeightsAt and CapacityDrop on the CPU (f32/f64).
// Deterministic: ties go to the lower expert index (selection) and to the
// earlier token (capacity).
#include <algorithm>
#include <numeric>
#include <vector>

#include "core/cpu/cpu_ops.h"

namespace scalemoe::cpu {
namespace {

void CheckIds(const Tensor& ids, int64_t n, int k) {
  SM_CHECK_MSG(ids.dtype() == DType::kI32 && ids.ndim() == 2 && ids.dim(0) == n &&
                   ids.dim(1) == k && ids.is_contiguous(),
               "expert_ids must be i32 [", n, ", ", k, "], got ", ids.DebugString());
}

// One row's weights: the scores at ids, over their sum (in slot order) if
// normalize. TopKRouting and TopKWeightsAt share it, so they agree bit for bit.
template <typename T>
void WeightsRow(int k, bool normalize, const T* sr, const int32_t* ids, T* w) {
  T sum = 0;
  for (int j = 0; j < k; ++j) {
    w[j] = sr[ids[j]];
    sum += sr[ids[j]];
  }
  if (normalize) {
    for (int j = 0; j < k; ++j) w[j] /= sum;
  }
}

template <typename T>
void TopKTyped(int64_t n, int64_t e, int k, bool normalize, const T* s, const T* bias,
               int32_t* ids, T* w) {
  std::vector<int32_t> order(e);
  for (int64_t t = 0; t < n; ++t) {
    const T* sr = s + t * e;
    auto key = [&](int32_t j) { return bias ? sr[j] + bias[j] : sr[j]; };
    std::iota(order.begin(), order.end(), 0);
    // Larger key first; equal keys keep the lower index first.
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      const T ka = key(a), kb = key(b);
      return ka > kb || (ka == kb && a < b);
    });
    std::copy(order.begin(), order.begin() + k, ids + t * k);
    WeightsRow(k, normalize, sr, ids + t * k, w + t * k);
  }
}

template <typename T>
void WeightsAtTyped(int64_t n, int64_t e, int k, bool normalize, const T* s, const int32_t* ids,
                    T* w) {
  for (int64_t i = 0; i < n * k; ++i) {
    SM_CHECK_MSG(ids[i] >= 0 && ids[i] < e, "TopKWeightsAt: expert id ", ids[i], " of token ",
                 i / k, " outside [0, ", e, ")");
  }
  for (int64_t t = 0; t < n; ++t) WeightsRow(k, normalize, s + t * e, ids + t * k, w + t * k);
}

template <typename T>
void TopKBackwardTyped(int64_t n, int64_t e, int k, bool normalize, const T* s,
                       const int32_t* ids, const T* dw, T* ds) {
  for (int64_t t = 0; t < n; ++t) {
    const T* sr = s + t * e;
    T* dr = ds + t * e;
    if (!normalize) {
      for (int j = 0; j < k; ++j) dr[ids[t * k + j]] += dw[t * k + j];
      continue;
    }
    // w_j = s_j / S: ds_j = (dw_j − Σ_i dw_i w_i) / S.
    T sum = 0, dot = 0;
    for (int j = 0; j < k; ++j) sum += sr[ids[t * k + j]];
    for (int j = 0; j < k; ++j) dot += dw[t * k + j] * sr[ids[t * k + j]] / sum;
    for (int j = 0; j < k; ++j) dr[ids[t * k + j]] += (dw[t * k + j] - dot) / sum;
  }
}

template <typename T>
void CapacityTyped(int64_t n, int k, int num_experts, int64_t capacity, const int32_t* ids,
                   const T* priority, int32_t* kept) {
  std::vector<std::vector<int64_t>> per_expert(num_experts);  // flat slots, token order
  for (int64_t i = 0; i < n * k; ++i) {
    kept[i] = 1;
    per_expert[ids[i]].push_back(i);
  }
  if (capacity <= 0) return;
  for (auto& slots : per_expert) {
    if (static_cast<int64_t>(slots.size()) <= capacity) continue;
    std::stable_sort(slots.begin(), slots.end(),
                     [&](int64_t a, int64_t b) { return priority[a] > priority[b]; });
    for (size_t i = capacity; i < slots.size(); ++i) kept[slots[i]] = 0;
  }
}

}  // namespace

void TopKRouting(const ExecContext& ctx, const Tensor& scores, const Tensor& bias, int k,
                 bool normalize, const Tensor& expert_ids, const Tensor& weights) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "TopKRouting: CUDA path not in this build");
  SM_CHECK_MSG(scores.ndim() == 2 && scores.is_contiguous() && k >= 1 && k <= scores.dim(1),
               "TopKRouting scores ", scores.DebugString(), " k=", k);
  const int64_t n = scores.dim(0), e = scores.dim(1);
  CheckIds(expert_ids, n, k);
  SM_CHECK_MSG(weights.dtype() == scores.dtype() && weights.numel() == n * k,
               "TopKRouting weights ", weights.DebugString());
  if (bias.defined()) {
    SM_CHECK_MSG(bias.dtype() == scores.dtype() && bias.numel() == e, "TopKRouting bias ",
                 bias.DebugString());
  }
  if (scores.dtype() == DType::kF64) {
    TopKTyped(n, e, k, normalize, scores.data<double>(),
              bias.defined() ? bias.data<double>() : nullptr, expert_ids.data<int32_t>(),
              weights.data<double>());
  } else {
    TopKTyped(n, e, k, normalize, scores.data<float>(),
              bias.defined() ? bias.data<float>() : nullptr, expert_ids.data<int32_t>(),
              weights.data<float>());
  }
}

void TopKWeightsAt(const ExecContext& ctx, const Tensor& scores, const Tensor& expert_ids,
                   bool normalize, const Tensor& weights) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "TopKWeightsAt: CUDA path not in this build");
  SM_CHECK_MSG(scores.ndim() == 2 && scores.is_contiguous() && expert_ids.ndim() == 2,
               "TopKWeightsAt scores ", scores.DebugString(), " expert_ids ",
               expert_ids.DebugString());
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const int k = static_cast<int>(expert_ids.dim(1));
  CheckIds(expert_ids, n, k);
  SM_CHECK_MSG(
      weights.dtype() == scores.dtype() && weights.numel() == n * k && weights.is_contiguous(),
      "TopKWeightsAt weights ", weights.DebugString());
  if (scores.dtype() == DType::kF64) {
    WeightsAtTyped(n, e, k, normalize, scores.data<double>(), expert_ids.data<int32_t>(),
                   weights.data<double>());
  } else {
    WeightsAtTyped(n, e, k, normalize, scores.data<float>(), expert_ids.data<int32_t>(),
                   weights.data<float>());
  }
}

void TopKRoutingBackward(const ExecContext& ctx, const Tensor& scores,
                         const Tensor& expert_ids, bool normalize, const Tensor& d_weights,
                         const Tensor& d_scores) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "TopKRoutingBackward: CUDA path not in this build");
  const int64_t n = scores.dim(0), e = scores.dim(1);
  const int k = static_cast<int>(expert_ids.dim(1));
  CheckIds(expert_ids, n, k);
  SM_CHECK_MSG(d_scores.shape() == scores.shape() && d_weights.numel() == n * k &&
                   d_weights.dtype() == scores.dtype() && d_scores.dtype() == scores.dtype(),
               "TopKRoutingBackward shapes");
  if (scores.dtype() == DType::kF64) {
    TopKBackwardTyped(n, e, k, normalize, scores.data<double>(), expert_ids.data<int32_t>(),
                      d_weights.data<double>(), d_scores.data<double>());
  } else {
    TopKBackwardTyped(n, e, k, normalize, scores.data<float>(), expert_ids.data<int32_t>(),
                      d_weights.data<float>(), d_scores.data<float>());
  }
}

void CapacityDrop(const ExecContext& ctx, const Tensor& expert_ids, const Tensor& priority,
                  int num_experts, int64_t capacity, const Tensor& kept) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "CapacityDrop: CUDA path not in this build");
  const int64_t n = expert_ids.dim(0);
  const int k = static_cast<int>(expert_ids.dim(1));
  CheckIds(expert_ids, n, k);
  CheckIds(kept, n, k);
  SM_CHECK_MSG(priority.numel() == n * k, "CapacityDrop priority ", priority.DebugString());
  if (priority.dtype() == DType::kF64) {
    CapacityTyped(n, k, num_experts, capacity, expert_ids.data<int32_t>(),
                  priority.data<double>(), kept.data<int32_t>());
  } else {
    CapacityTyped(n, k, num_experts, capacity, expert_ids.data<int32_t>(),
                  priority.data<float>(), kept.data<int32_t>());
  }
}

}  // namespace scalemoe::cpu
