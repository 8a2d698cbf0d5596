// VocabParallelCrossEntropy: Megatron's vocab-parallel softmax cross-entropy.
// Each TP rank holds only its logits shard [N, V/tp] (the output of a
// column-parallel LM head over its VocabShard); the full [N, V] logits never
// exist. Per token: the row max is all-reduced (max), the shifted sum of
// exponentials and the target logit (picked by the rank that owns the target,
// zero elsewhere) are all-reduced (sum) in one [2N] f64 collective, and
//   loss = mean_n (log Σ_v exp(l_nv − m_n) + m_n − l_n,target).
// Backward gives this rank's shard of d(mean loss)/d logits =
// (softmax − onehot) / N, the same values ops::CrossEntropy writes into the
// corresponding columns of the gathered logits' gradient. The statistics are
// accumulated in f64 whatever the logits' dtype. Targets are int32 [N]
// global token ids, identical on every TP rank. CPU tensors.
#pragma once

#include "core/context.h"
#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/tp_comm.h"

namespace scalemoe {

class VocabParallelCrossEntropy {
 public:
  // InvalidArgument (naming the vocabulary and the fix) when `vocab` does not
  // divide by tp.size(). `tp` must outlive the object.
  static StatusOr<VocabParallelCrossEntropy> Create(int64_t vocab, Communicator& tp);

  // logits [N, V/tp] this rank's shard; targets int32 [N] in [0, V). If
  // d_logits [N, V/tp] is defined it is overwritten with this rank's shard of
  // the gradient. Returns the mean loss, identical on every TP rank.
  StatusOr<double> Forward(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                           const Tensor& d_logits);

  const VocabShard& shard() const { return shard_; }

 private:
  VocabParallelCrossEntropy(int64_t vocab, VocabShard shard, Communicator& tp)
      : vocab_(vocab), shard_(shard), tp_(&tp) {}

  int64_t vocab_;
  VocabShard shard_;
  Communicator* tp_;
};

}  // namespace scalemoe
