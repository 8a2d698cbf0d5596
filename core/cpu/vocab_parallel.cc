// Vocab-parallel cross-entropy and embedding ops on the CPU (f32, f64 or
// bf16 logits; statistics in f64): the shard's row max, its softmax
// statistics and target logit, the loss from the all-reduced statistics,
// the shard's gradient; the embedding's local rows and the id check.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/cpu/cpu_ops.h"
#include "core/cpu/moe_cpu_util.h"

namespace scalemoe::cpu {
namespace {

using moe_util::CheckCpu;
using moe_util::ForFloat;
using moe_util::Load;
using moe_util::Store;

constexpr DType kI32 = DType::kI32;
constexpr DType kI64 = DType::kI64;
constexpr DType kF64 = DType::kF64;

void CheckLogits(const char* op, const Tensor& logits) {
  CheckCpu(op, "logits", logits);
  SM_CHECK_MSG(logits.ndim() == 2, op, ": logits must be [N, V_local], got ",
               logits.DebugString());
}

// row_max [N] and (when defined) stats [2, N], both f64; targets [N] i32.
void CheckRowStats(const char* op, int64_t n, const Tensor& row_max, const Tensor& stats,
                   const Tensor& targets) {
  CheckCpu(op, "row_max", row_max, &kF64);
  SM_CHECK_MSG(row_max.numel() == n, op, ": row_max ", row_max.DebugString(), " for ", n,
               " rows");
  if (stats.defined()) {
    CheckCpu(op, "stats", stats, &kF64);
    SM_CHECK_MSG(stats.numel() == 2 * n, op, ": stats ", stats.DebugString(), " must be [2, ",
                 n, "]");
  }
  if (targets.defined()) {
    CheckCpu(op, "targets", targets, &kI32);
    SM_CHECK_MSG(targets.numel() == n, op, ": targets ", targets.DebugString(), " for ", n,
                 " rows");
  }
}

}  // namespace

void VocabRowMax(const ExecContext& ctx, const Tensor& logits, const Tensor& row_max) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "VocabRowMax: CUDA path not in this build");
  CheckLogits("VocabRowMax", logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckRowStats("VocabRowMax", n, row_max, Tensor(), Tensor());
  double* mx = row_max.data<double>();
  ForFloat(logits, [&](auto zero) {
    using T = decltype(zero);
    const T* l = logits.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < v; ++j) m = std::max(m, static_cast<double>(Load(l[i * v + j])));
      mx[i] = m;
    }
  });
}

void VocabSoftmaxStats(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                       int64_t vocab_start, const Tensor& row_max, const Tensor& stats) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "VocabSoftmaxStats: CUDA path not in this build");
  CheckLogits("VocabSoftmaxStats", logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckRowStats("VocabSoftmaxStats", n, row_max, stats, targets);
  const int32_t* t = targets.data<int32_t>();
  const double* mx = row_max.data<double>();
  double* st = stats.data<double>();
  ForFloat(logits, [&](auto zero) {
    using T = decltype(zero);
    const T* l = logits.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      const T* row = l + i * v;
      double sum = 0;
      for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(Load(row[j])) - mx[i]);
      st[i] = sum;
      const int64_t local = static_cast<int64_t>(t[i]) - vocab_start;
      st[n + i] = local >= 0 && local < v ? static_cast<double>(Load(row[local])) : 0.0;
    }
  });
}

void VocabCrossEntropyLoss(const ExecContext& ctx, const Tensor& row_max, const Tensor& stats,
                           const Tensor& loss) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU,
               "VocabCrossEntropyLoss: CUDA path not in this build");
  const int64_t n = row_max.numel();
  CheckRowStats("VocabCrossEntropyLoss", n, row_max, stats, Tensor());
  CheckCpu("VocabCrossEntropyLoss", "loss", loss, &kF64);
  SM_CHECK_MSG(loss.numel() == 1 && n > 0, "VocabCrossEntropyLoss: loss ", loss.DebugString(),
               " for ", n, " rows");
  const double* mx = row_max.data<double>();
  const double* s = stats.data<double>();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += std::log(s[i]) + mx[i] - s[n + i];
  loss.data<double>()[0] = total / static_cast<double>(n);
}

void VocabCrossEntropyBackward(const ExecContext& ctx, const Tensor& logits,
                               const Tensor& targets, int64_t vocab_start,
                               const Tensor& row_max, const Tensor& stats,
                               const Tensor& d_logits) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU,
               "VocabCrossEntropyBackward: CUDA path not in this build");
  CheckLogits("VocabCrossEntropyBackward", logits);
  const int64_t n = logits.dim(0), v = logits.dim(1);
  CheckRowStats("VocabCrossEntropyBackward", n, row_max, stats, targets);
  CheckCpu("VocabCrossEntropyBackward", "d_logits", d_logits);
  SM_CHECK_MSG(d_logits.shape() == logits.shape() && d_logits.dtype() == logits.dtype(),
               "VocabCrossEntropyBackward: d_logits ", d_logits.DebugString(), " for logits ",
               logits.DebugString());
  const int32_t* t = targets.data<int32_t>();
  const double* mx = row_max.data<double>();
  const double* s = stats.data<double>();
  const double inv_n = 1.0 / static_cast<double>(n);
  ForFloat(logits, [&](auto zero) {
    using T = decltype(zero);
    const T* l = logits.data<T>();
    T* d = d_logits.data<T>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < v; ++j) {
        const double p = std::exp(static_cast<double>(Load(l[i * v + j])) - mx[i]) / s[i];
        const double onehot = t[i] == vocab_start + j ? 1.0 : 0.0;
        d[i * v + j] = Store<T>((p - onehot) * inv_n);
      }
    }
  });
}

void VocabShardRows(const ExecContext& ctx, const Tensor& tokens, int64_t vocab_start,
                    int64_t shard_size, const Tensor& rows) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "VocabShardRows: CUDA path not in this build");
  CheckCpu("VocabShardRows", "tokens", tokens, &kI32);
  CheckCpu("VocabShardRows", "rows", rows, &kI32);
  SM_CHECK_MSG(rows.numel() == tokens.numel() && shard_size >= 0, "VocabShardRows: rows ",
               rows.DebugString(), " for tokens ", tokens.DebugString());
  const int32_t* t = tokens.data<int32_t>();
  int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0, n = tokens.numel(); i < n; ++i) {
    const int64_t local = static_cast<int64_t>(t[i]) - vocab_start;
    r[i] = local >= 0 && local < shard_size ? static_cast<int32_t>(local) : -1;
  }
}

void CountOutOfRange(const ExecContext& ctx, const Tensor& ids, int64_t begin, int64_t end,
                     const Tensor& count) {
  SM_CHECK_MSG(ctx.device() == Device::kCPU, "CountOutOfRange: CUDA path not in this build");
  CheckCpu("CountOutOfRange", "ids", ids, &kI32);
  CheckCpu("CountOutOfRange", "count", count, &kI64);
  SM_CHECK_MSG(count.numel() == 1, "CountOutOfRange: count ", count.DebugString(),
               " must be [1]");
  const int32_t* v = ids.data<int32_t>();
  int64_t bad = 0;
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) bad += v[i] < begin || v[i] >= end ? 1 : 0;
  count.data<int64_t>()[0] = bad;
}

}  // namespace scalemoe::cpu
