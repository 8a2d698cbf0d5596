// The CUDA backend's ops: scalemoe::cuda::X for the ops that core/ops_list.h
// marks CUDA (core/ops.h documents them). Declared for every op so that a
// new kernel only flips its mark; only the marked ones are defined.
// Only core/ops_dispatch.cc and the backend itself include this.
#pragma once

#include "core/ops.h"
#include "core/ops_list.h"

namespace scalemoe::cuda {
using ops::AttentionOptions;
using ops::GemmOptions;
using ops::GroupedGemmOptions;
using ops::MatrixGroup;
using ops::ScoreFunction;
using ops::Trans;
#define SM_DECLARE_OP(R, NAME, PARAMS, ARGS, CUDA) R NAME PARAMS;
SM_OPS(SM_DECLARE_OP)
#undef SM_DECLARE_OP
}  // namespace scalemoe::cuda
