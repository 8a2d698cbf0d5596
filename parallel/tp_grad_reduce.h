// The tensor-parallel half of the gradient reduction: after the backward, a
// parameter replicated over its (E)TP group but marked
// ParamLayout::tp_partial_grad holds only this rank's share of the gradient
// (core/params.h says which ones). SumPartialGradsOverTp adds the shares
// over the group, so that every (E)TP rank ends with its data-parallel
// replica's whole gradient, as a single rank would compute it on the same
// tokens; only then may the DP/EDP reduction (GradSync, ZeRO) run.
// Megatron does the same for sequence-parallel norm weights
// (finalize_model_grads' all-reduce of layernorm grads).
#pragma once

#include <cstddef>

#include "core/params.h"
#include "core/status.h"
#include "parallel/communicator.h"

namespace scalemoe {

// Collective over `tp` and `etp`: every rank of both calls it with the same
// range. Parameters [first, end) of `registry` with tp_partial_grad are packed
// (dense ones summed over `tp`, tp_group == kExpert ones over `etp`) into one
// all-reduce per group of size > 1. A group of one is skipped.
Status SumPartialGradsOverTp(const ExecContext& ctx, const ParamRegistry& registry, size_t first,
                             size_t end, Communicator& tp, Communicator& etp);

}  // namespace scalemoe
