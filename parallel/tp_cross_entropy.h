// VocabParallelCrossEntropy: Megatron's vocab-parallel softmax cross-entropy.
// Each TP rank holds only its logits shard [N, V/tp] (the output of a
// column-parallel LM head over its VocabShard); the full [N, V] logits never
// exist. Per token: the row max is all-reduced (max), the shifted sum of
// exponentials and the target logit (picked by the rank that owns the target,
// zero elsewhere) are all-reduced (sum) in one [2, N] f64 collective, and
//   loss = mean_n (log Σ_v exp(l_nv − m_n) + m_n − l_n,target).
// Backward gives this rank's shard of d(mean loss)/d logits =
// (softmax − onehot) / N, the same values ops::CrossEntropy writes into the
// corresponding columns of the gathered logits' gradient. The statistics are
// accumulated in f64 whatever the logits' dtype (f32, f64 or bf16). Targets
// are int32 [N] global token ids, identical on every TP rank.
//
// Device-resident: every step is an op (core/ops.h, "vocab-parallel ops") on
// the context's device and the collectives are ordered on its stream; the
// loss is a [1] f64 device tensor. Targets outside the vocabulary are counted
// on the device (ops::CountOutOfRange) and reported by CheckTargets, which
// reads the count on the host; the data layer validates token ids when it
// maps shards, so the step itself does not wait for that check. The
// host-value Forward reads the loss and the check for callers that report
// the loss on the host anyway.
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

  // logits [N, V/tp] this rank's shard (f32, f64 or bf16); targets int32 [N]
  // in [0, V); loss [1] f64 on ctx's device (written: the mean loss,
  // identical on every TP rank). If d_logits [N, V/tp] is defined it is
  // overwritten with this rank's shard of the gradient. No host read.
  // InvalidArgument for bad shapes; a failed collective's status.
  Status Forward(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                 const Tensor& d_logits, const Tensor& loss);
  // The same, returning the loss on the host (two ctx.ToHost reads: the
  // loss and the target check), InvalidArgument when a target is outside
  // the vocabulary.
  StatusOr<double> Forward(const ExecContext& ctx, const Tensor& logits, const Tensor& targets,
                           const Tensor& d_logits);
  // InvalidArgument (naming the targets and the fix) when the last Forward's
  // targets held ids outside [0, V); one ctx.ToHost read.
  Status CheckTargets(const ExecContext& ctx) const;

  const VocabShard& shard() const { return shard_; }

 private:
  VocabParallelCrossEntropy(int64_t vocab, VocabShard shard, Communicator& tp)
      : vocab_(vocab), shard_(shard), tp_(&tp) {}

  int64_t vocab_;
  VocabShard shard_;
  Communicator* tp_;
  Tensor bad_targets_;  // [1] i64: targets of the last Forward outside [0, V)
};

}  // namespace scalemoe
