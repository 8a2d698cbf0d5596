// K-major copies of row-stacked bf16 operands for the weight gradient's
// wgmma path (core/cuda/grouped_gemm.cu, SCALEMOE_GROUPED_WGRAD=wgmma).
//
// GroupedGemmWeightGrad reduces over each group's rows, so its operands
// (d_y [M, N], x [M, K]) are MN-major; wgmma's validated layout wants them
// K-major. dst [F, ld] holds src [M, F] transposed, group by group: group
// g's rows offsets[g] + j land in column starts[g] + j, and the columns up
// to the next multiple of kGroupColumnAlign are zero (so that whole k tiles
// of 64 can be read and the padding adds exactly 0 to every product).
// Everything stays on the device: starts are computed there from the
// offsets; the host only bounds the width.
#pragma once

#include <cstdint>

#include "core/context.h"
#include "core/tensor.h"

namespace scalemoe::cuda {

// Groups start at multiples of this column (the wgmma kernel's k tile).
constexpr int kGroupColumnAlign = 64;

// An upper bound on starts[groups] for `rows` rows in `groups` groups
// (each group pads fewer than kGroupColumnAlign columns), a multiple of
// kGroupColumnAlign: the width ld of the transposed copies.
int64_t PaddedGroupColumns(int64_t rows, int64_t groups);

// starts [groups + 1] (int64, on the device): starts[0] = 0, starts[g + 1]
// = starts[g] + count_g rounded up to kGroupColumnAlign, clamped to ld (only
// offsets outside [0, rows] could reach it; the clamp keeps every access
// inside the copies). offsets: int64 [groups + 1] on the device.
Tensor PaddedGroupStarts(const ExecContext& ctx, const Tensor& offsets, int groups, int64_t ld);

// dst [F, ld] (bf16) = src [M, F] (bf16, F a multiple of 8, 16-byte aligned)
// transposed by group as above; columns at or past starts[groups] are not
// written.
void TransposeGroupRows(const ExecContext& ctx, const Tensor& src, const Tensor& offsets,
                        const Tensor& starts, int groups, const Tensor& dst);

}  // namespace scalemoe::cuda
