// The CPU backend's ops: scalemoe::cpu::X for every ops::X (core/ops.h
// documents them), the reference implementations (templates over f32/f64).
// Only core/ops_dispatch.cc and the backend itself include this.
#pragma once

#include "core/ops.h"
#include "core/ops_list.h"

namespace scalemoe::cpu {
using ops::AttentionOptions;
using ops::GemmOptions;
using ops::GroupedGemmOptions;
using ops::MatrixGroup;
using ops::ScoreFunction;
using ops::Trans;
#define SM_DECLARE_OP(R, NAME, PARAMS, ARGS, CUDA) R NAME PARAMS;
SM_OPS(SM_DECLARE_OP)
#undef SM_DECLARE_OP
}  // namespace scalemoe::cpu
