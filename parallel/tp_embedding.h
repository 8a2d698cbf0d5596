// VocabParallelEmbedding: Megatron's vocab-parallel token embedding. The
// global table W [V, C] is split on dim 0 over TP: rank r holds the rows of
// its VocabShard [r*V/tp, (r+1)*V/tp). Forward looks up the tokens this rank
// owns (others give a zero row) and sums over TP: an all-reduce to the
// replicated [N, C], or under sequence parallelism a reduce-scatter to this
// rank's tokens [N/tp, C]. Backward (d_out replicated [N, C], or [N/tp, C]
// all-gathered first) accumulates the owned rows' gradient: W.grad +=.
// Tokens are int32 [N], identical on every TP rank, values in [0, V).
// A world of one computes exactly ops::EmbeddingLookup / EmbeddingBackward.
//
// Device-resident: the local rows are an op (ops::VocabShardRows) and the id
// check is one too (ops::CountOutOfRange, into a device flag); an id outside
// the vocabulary gives a zero row, never a read outside the table, and is
// reported by CheckTokens, which reads the flag on the host. The data layer
// validates token ids when it maps shards, so the step does not wait for it.
#pragma once

#include <memory>

#include "core/context.h"
#include "core/forward_cache.h"
#include "core/params.h"
#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"
#include "parallel/tp_comm.h"

namespace scalemoe {

class VocabParallelEmbedding {
 public:
  // Registers `spec` (global [V, C]) split on dim 0. InvalidArgument (naming
  // the vocabulary and the fix) when V does not divide by tp.size().
  static StatusOr<std::unique_ptr<VocabParallelEmbedding>> Create(ParamRegistry& registry,
                                                                  ParamSpec spec, Communicator& tp,
                                                                  SequenceParallel sp);

  // tokens int32 [N]; out [N, C] (SP: [N/tp, C]) written. No host read.
  Status Forward(const ExecContext& ctx, const Tensor& tokens, const Tensor& out);
  // InvalidArgument (naming the layer, its tokens and the fix) when the last
  // Forward's tokens held ids outside [0, V); one ctx.ToHost read.
  Status CheckTokens(const ExecContext& ctx) const;
  // d_out [N, C] (SP: [N/tp, C]); accumulates the weight gradient.
  Status Backward(const ExecContext& ctx, const Tensor& d_out);
  // Moves the last Forward's shard rows into or out of `stash`
  // (core/forward_cache.h); the token check's count stays.
  void VisitForwardCache(ForwardCacheStash& stash) { stash.Visit(local_rows_); }

  Param* weight() const { return weight_; }
  const VocabShard& shard() const { return shard_; }

 private:
  VocabParallelEmbedding(Param* weight, VocabShard shard, Communicator& tp, SequenceParallel sp)
      : weight_(weight), shard_(shard), tp_(&tp), sp_(sp) {}

  Param* weight_;
  VocabShard shard_;
  Communicator* tp_;
  SequenceParallel sp_;
  Tensor local_rows_;  // int32 [N]: row in this shard, -1 where another rank owns the token
  Tensor bad_tokens_;  // [1] i64: tokens of the last Forward outside [0, V)
};

}  // namespace scalemoe
