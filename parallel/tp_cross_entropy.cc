#include "parallel/tp_cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace scalemoe {
namespace {

// max[n] = max_v logits[n, v] over this shard.
template <typename T>
void RowMax(int64_t n, int64_t v, const T* logits, double* max) {
  for (int64_t i = 0; i < n; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < v; ++j) m = std::max(m, static_cast<double>(logits[i * v + j]));
    max[i] = m;
  }
}

// stats[n] = Σ_v exp(l − max), stats[N + n] = the target logit if owned, else 0.
template <typename T>
void ShardStats(int64_t n, int64_t v, const T* logits, const int32_t* targets,
                const VocabShard& shard, const double* max, double* stats) {
  for (int64_t i = 0; i < n; ++i) {
    const T* row = logits + i * v;
    double sum = 0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(static_cast<double>(row[j]) - max[i]);
    stats[i] = sum;
    stats[n + i] = shard.Owns(targets[i]) ? static_cast<double>(row[targets[i] - shard.start]) : 0;
  }
}

// d[n, v] = (exp(l − max) / Σexp − [v is the target]) / N.
template <typename T>
void ShardGrad(int64_t n, int64_t v, const T* logits, const int32_t* targets,
               const VocabShard& shard, const double* max, const double* stats, T* d) {
  const double inv_n = 1.0 / static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < v; ++j) {
      const double p = std::exp(static_cast<double>(logits[i * v + j]) - max[i]) / stats[i];
      const double onehot = targets[i] == shard.start + j ? 1.0 : 0.0;
      d[i * v + j] = static_cast<T>((p - onehot) * inv_n);
    }
  }
}

template <typename T>
StatusOr<double> Run(const ExecContext& ctx, Communicator& tp, const VocabShard& shard,
                     const Tensor& logits, const Tensor& targets, const Tensor& d_logits) {
  const int64_t n = logits.dim(0), v = logits.dim(1);
  const T* l = logits.data<T>();
  const int32_t* t = targets.data<int32_t>();
  Tensor max = Tensor::Empty({n}, DType::kF64);
  RowMax(n, v, l, max.data<double>());
  SM_RETURN_IF_ERROR(tp.AllReduce(ctx, max, {.op = ReduceOp::kMax}));
  Tensor stats = Tensor::Empty({2 * n}, DType::kF64);
  ShardStats(n, v, l, t, shard, max.data<double>(), stats.data<double>());
  SM_RETURN_IF_ERROR(tp.AllReduce(ctx, stats));
  const double* m = max.data<double>();
  const double* s = stats.data<double>();
  double loss = 0;
  for (int64_t i = 0; i < n; ++i) loss += std::log(s[i]) + m[i] - s[n + i];
  if (d_logits.defined()) ShardGrad(n, v, l, t, shard, m, s, d_logits.data<T>());
  return loss / static_cast<double>(n);
}

}  // namespace

StatusOr<VocabParallelCrossEntropy> VocabParallelCrossEntropy::Create(int64_t vocab,
                                                                      Communicator& tp) {
  SM_ASSIGN_OR_RETURN(VocabShard shard, ShardVocab(vocab, tp.rank(), tp.size()));
  return VocabParallelCrossEntropy(vocab, shard, tp);
}

StatusOr<double> VocabParallelCrossEntropy::Forward(const ExecContext& ctx, const Tensor& logits,
                                                    const Tensor& targets, const Tensor& d_logits) {
  const char* kLayer = "VocabParallelCrossEntropy";
  if (ctx.device() != Device::kCPU) {
    return absl::UnimplementedError(absl::StrCat(kLayer, ": CPU tensors only in this build"));
  }
  if (!logits.defined() || logits.ndim() != 2 ||
      (logits.dtype() != DType::kF32 && logits.dtype() != DType::kF64)) {
    return absl::InvalidArgumentError(absl::StrCat(kLayer, ": logits must be f32/f64 [N, ",
                                                   shard_.size, "] (this rank's vocab shard)"));
  }
  const int64_t n = logits.dim(0);
  SM_RETURN_IF_ERROR(CheckMatrix(
      logits, n, shard_.size, logits.dtype(),
      absl::StrCat(kLayer, " logits (vocab ", vocab_, " over ", tp_->size(), " ranks)")));
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(kLayer, ": no tokens"));
  if (!targets.defined() || targets.ndim() != 1 || targets.dim(0) != n ||
      targets.dtype() != DType::kI32 || !targets.is_contiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kLayer, ": targets must be a contiguous int32 [", n, "]"));
  }
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (t[i] < 0 || t[i] >= vocab_) {
      return absl::InvalidArgumentError(absl::StrCat(kLayer, ": target ", t[i], " at row ", i,
                                                     " is outside the vocabulary [0, ", vocab_,
                                                     "): the data and model.vocab_size disagree"));
    }
  }
  if (d_logits.defined()) {
    SM_RETURN_IF_ERROR(
        CheckMatrix(d_logits, n, shard_.size, logits.dtype(), std::string(kLayer) + " d_logits"));
  }
  if (logits.dtype() == DType::kF64)
    return Run<double>(ctx, *tp_, shard_, logits, targets, d_logits);
  return Run<float>(ctx, *tp_, shard_, logits, targets, d_logits);
}

}  // namespace scalemoe
