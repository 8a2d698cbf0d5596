// Tensor-parallel plumbing shared by the TP layers (model/tp_region.h,
// tp_embedding.h, tp_cross_entropy.h): the sequence-parallel token regions
// (Megatron's gather_from_sequence_parallel_region and
// reduce_scatter_to_sequence_parallel_region), the vocabulary shard of a TP
// rank, and the checks that a registry's ShardCoords agree with the TP
// communicator a layer is given.
//
// Tokens are the rows of a row-major [N, C] tensor, so "along tokens" is the
// communicator's flat chunking: TP rank r holds rows [r*N/tp, (r+1)*N/tp).
// Every function is a collective over `tp` when it communicates: all TP ranks
// call it in the same order. Errors are Status values naming the tensor and
// the fix; no function aborts on bad shapes.
#pragma once

#include <cstdint>
#include <string>

#include "core/params.h"
#include "core/status.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace scalemoe {

// Whether activations entering/leaving a TP region are split along tokens
// (Megatron's sequence parallelism) or replicated on every TP rank.
enum class SequenceParallel : uint8_t { kOff = 0, kOn = 1 };

// local [N/tp, C] on every rank -> full [N, C] (rank order), identical on all.
Status GatherTokens(const ExecContext& ctx, Communicator& tp, const Tensor& local,
                    const Tensor& full);
// full [N, C] partial sums -> local [N/tp, C] = this rank's rows of Σ_ranks full.
Status ReduceScatterTokens(const ExecContext& ctx, Communicator& tp, const Tensor& full,
                           const Tensor& local);

// The vocabulary rows [start, start + size) held by TP rank `rank` of `tp_size`.
struct VocabShard {
  int64_t start = 0;
  int64_t size = 0;
  bool Owns(int64_t token) const { return token >= start && token < start + size; }
};
// InvalidArgument naming `vocab` and `tp_size` (and the fix: pad the vocabulary
// to a multiple of tp) when the vocabulary does not split evenly.
StatusOr<VocabShard> ShardVocab(int64_t vocab, int rank, int tp_size);

// OK when `registry`'s coords for `group` (TP or ETP) equal tp.rank()/size(),
// so that the registry slices exactly the shard this layer computes with.
Status CheckShardCoords(const ParamRegistry& registry, TpGroup group, const Communicator& tp,
                        const std::string& layer);
// OK when spec.shape[dim] divides by tp_size; else InvalidArgument naming the
// parameter, the dim and the fix.
Status CheckSplittable(const ParamSpec& spec, int dim, int tp_size);

// OK when `t` is a contiguous 2-D tensor [rows, cols] of `dtype` on the CPU
// or matching device; `what` names it in the error.
Status CheckMatrix(const Tensor& t, int64_t rows, int64_t cols, DType dtype,
                   const std::string& what);

}  // namespace scalemoe
