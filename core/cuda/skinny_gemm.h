// f32 products with a side of at most 64 on kernels of our own
// (core/cuda/skinny_gemm.cu), for ops::Gemm on the GPU (core/cuda/gemm.cc).
#pragma once

#include "core/context.h"
#include "core/ops.h"

namespace scalemoe::cuda {

// Whether the skinny kernels take c = alpha·op(a)·op(b) + beta·c: 2-D,
// f32, b not transposed, and either aᵀ·b with M <= 64 and K >= 512 or a·b
// with K <= 64 (shapes as ops::Gemm has checked them).
bool SkinnyGemmTakes(const Tensor& a, const Tensor& b, const Tensor& c, const ops::GemmOptions& o);

// SCALEMOE_SKINNY_GEMM=1: opt-in until the kernels have been timed on a GPU.
bool SkinnyGemmEnabled();

// Runs the product on the skinny kernels when enabled and they take it;
// false (nothing run) otherwise.
bool SkinnyGemm(const ExecContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c,
                const ops::GemmOptions& o);

}  // namespace scalemoe::cuda
