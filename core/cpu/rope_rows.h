// Rope's rotation from a table (core/cpu/rope.cc), for the ops that rotate
// their own outputs (core/cpu/scaled_rms_normalize.cc's ScaledRmsNormalizeRope).
#pragma once

#include "core/tensor.h"

namespace scalemoe::cpu {

// out = x rotated by +angle (sign 1, Rope) or −angle (sign −1,
// RopeBackward), x and out [B, T, H, D] of one dtype, each contiguous or
// token-strided (core/head_rows.h; out may alias x), table [2, T' >= T,
// D/2] in Acc of x's dtype (RopeTable's): the bits of Rope and
// RopeBackward.
void RotateWithTable(const Tensor& x, const Tensor& table, double sign, const Tensor& out);

}  // namespace scalemoe::cpu
