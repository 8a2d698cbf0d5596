// TpRegion: Megatron's tensor-parallel "mappings" as the model's sublayers
// use them, for one TP group with sequence parallelism on or off.
//
// The residual stream holds `rows` of the micro-batch's N = B*T tokens on
// each TP rank: all N (replicated, SP off) or this rank's N/tp contiguous
// rows [r*N/tp, (r+1)*N/tp) (SP on). Around a tensor-parallel sublayer:
//   ToFull(rows)            the column-parallel input, all N rows:
//                           SP all-gather; else the tensor itself.
//   ReduceToRows(full, rows) a row-parallel output (or a column-parallel
//                           input's gradient) holding partial sums over the
//                           TP ranks: SP reduce-scatter; else all-reduce.
//                           Summed in f32 (bf16 partials are converted);
//                           rows may have another dtype than full.
// The two are each other's backward. The MoE layer instead splits tokens
// over TP (each rank routes N/tp of them, moe/moe_layer.h):
//   ToChunk(rows)           this rank's N/tp token rows: SP the rows
//                           themselves; else a view of its slice.
//   ChunkToRows(chunk, rows) back to the residual rows: SP a copy; else an
//                           all-gather.
// Again each other's backward. With one TP rank every call is the identity.
// Every call communicating is a collective over the TP group and returns
// the communicator's Status.
#pragma once

#include <cstdint>

#include "core/context.h"
#include "core/tensor.h"
#include "parallel/communicator.h"

namespace scalemoe {

class TpRegion {
 public:
  // tp may be null (one rank). tp must outlive the region.
  TpRegion(Communicator* tp, bool sequence_parallel);

  Communicator* comm() const { return tp_; }  // null with one rank
  int size() const { return size_; }
  int rank() const { return rank_; }
  bool sequence_parallel() const { return sp_; }
  // Whether the MoE layer's token chunk differs from the residual rows (TP
  // without sequence parallelism); otherwise ToChunk/ChunkToRows are identities.
  bool SplitsTokens() const { return tp_ != nullptr && !sp_; }
  // Residual-stream rows this rank holds for n tokens.
  int64_t Rows(int64_t n) const { return sp_ ? n / size_ : n; }

  StatusOr<Tensor> ToFull(const ExecContext& ctx, const Tensor& rows) const;
  Status ReduceToRows(const ExecContext& ctx, const Tensor& full, const Tensor& rows) const;
  // Where a sublayer writes the partial sums ReduceToRows(full, rows) takes
  // for `tokens` tokens, to be summed in `sum_dtype`: rows itself where
  // that sums in place (one rank; no SP and rows of that dtype), else a
  // new [tokens, C] buffer.
  Tensor PartialFor(const ExecContext& ctx, const Tensor& rows, int64_t tokens,
                    DType sum_dtype) const;
  Tensor ToChunk(const Tensor& rows) const;  // never communicates
  Status ChunkToRows(const ExecContext& ctx, const Tensor& chunk, const Tensor& rows) const;

 private:
  Communicator* tp_;
  int size_ = 1, rank_ = 0;
  bool sp_;
};

}  // namespace scalemoe
